"""Depth evaluation of a model on in-memory frames with ground truth (the library behind
``python -m tripled_tf.evaluate`` and the before/after figures of a training run)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tripled_tf import metrics


def predict_depths(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Runs ``model.predict_depth`` in inference mode over frames.

    Args:
      model: a depth model with ``predict_depth(images) -> (disp, depth)``.
      images: [N, H, W, 3] float32 in [0, 1].
    Returns:
      [N, H, W] float32 depth (relative scale for monocular models).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected [N, H, W, 3], got shape {list(images.shape)}")
    predict = tf.function(lambda x: model.predict_depth(x, training=False)[1], reduce_retracing=True)
    out = [predict(tf.constant(images[i:i + batch_size]))[..., 0].numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0)


def evaluate_depth(model, images: np.ndarray, gt_depths: np.ndarray, crop: Optional[str] = None,
                   median_scaling: bool = True, min_depth: float = 1e-3, max_depth: float = 80.0,
                   batch_size: int = 8) -> Dict[str, float]:
    """Mean depth errors over frames, Monodepth2's protocol (per-image median scaling, cap, crop).

    Args:
      images: [N, H, W, 3] in [0, 1]; gt_depths: [N, H, W] or [N, H, W, 1] metres, 0 = unknown.
      crop: "garg", "eigen" or None (synthetic data has valid depth everywhere).
    Returns:
      abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 averaged over images, plus ratio_median,
      ratio_std (of the median-scaling ratios) and num_images.
    """
    gt_depths = np.asarray(gt_depths, np.float32)
    if gt_depths.ndim == 4:
        gt_depths = gt_depths[..., 0]
    predictions = predict_depths(model, images, batch_size)
    accumulator = metrics.DepthMetricAccumulator(min_depth, max_depth, crop, median_scaling)
    for gt, pred in zip(gt_depths, predictions):
        accumulator.add(gt, pred)
    result = accumulator.mean()
    result["ratio_median"], result["ratio_std"] = accumulator.ratio_stats()
    result["num_images"] = len(accumulator)
    return result
