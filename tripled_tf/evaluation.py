"""Depth evaluation of a model on in-memory frames with ground truth (the library behind
``python -m tripled_tf.evaluate`` and the before/after figures of a training run)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import tensorflow as tf

from tripled_tf import metrics


def predict_disparities(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The finest sigmoid disparity σ_0 for frames, in inference mode.

    Args:
      model: a depth model whose call returns the multi-scale disparities, finest first.
      images: [N, H, W, 3] float32 in [0, 1].
    Returns:
      [N, H/2, W/2] float32 σ_0 (the evaluation resizes it once, straight to the ground truth's size).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected [N, H, W, 3], got shape {list(images.shape)}")
    predict = tf.function(lambda x: model(x, training=False)[0], reduce_retracing=True)
    out = [predict(tf.constant(images[i:i + batch_size]))[..., 0].numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0)


def disparity_to_depth_at(disp: np.ndarray, size, min_depth: float, max_depth: float) -> np.ndarray:
    """[h, w] sigmoid disparity -> [H, W] depth at another size: the references resize the *scaled
    disparity* bilinearly (half-pixel) to the ground truth's size, then invert (METHOD.md §7)."""
    scaled = 1.0 / max_depth + (1.0 / min_depth - 1.0 / max_depth) * np.asarray(disp, np.float32)
    height, width = int(size[0]), int(size[1])
    if scaled.shape != (height, width):
        scaled = cv2.resize(scaled, (width, height), interpolation=cv2.INTER_LINEAR)
    return 1.0 / scaled


def predict_depths(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """[N, H, W] depth at the input resolution (relative scale for monocular models)."""
    disps = predict_disparities(model, images, batch_size)
    cfg = model.config
    size = np.shape(images)[1:3]
    return np.stack([disparity_to_depth_at(d, size, cfg.min_depth, cfg.max_depth) for d in disps])


def evaluate_depth(model, images: np.ndarray, gt_depths: Sequence[np.ndarray], crop: Optional[str] = None,
                   median_scaling: bool = True, min_depth: float = 1e-3, max_depth: float = 80.0,
                   batch_size: int = 8) -> Dict[str, float]:
    """Mean depth errors over frames, Monodepth2's protocol (per-image median scaling, cap, crop).

    Args:
      images: [N, H, W, 3] in [0, 1] at the model's input size.
      gt_depths: N ground-truth maps, [h, w] or [h, w, 1] metres (0 = unknown), each at any size (KITTI:
        the native camera size); the prediction is resized to it.
      crop: "garg", "eigen" or None (synthetic data has valid depth everywhere).
    Returns:
      abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 averaged over images, plus ratio_median,
      ratio_std (of the median-scaling ratios) and num_images.
    """
    if len(gt_depths) != len(images):
        raise ValueError(f"{len(images)} images but {len(gt_depths)} ground-truth maps")
    disps = predict_disparities(model, images, batch_size)
    cfg = model.config
    accumulator = metrics.DepthMetricAccumulator(min_depth, max_depth, crop, median_scaling)
    for gt, disp in zip(gt_depths, disps):
        gt = np.asarray(gt, np.float32)
        gt = gt[..., 0] if gt.ndim == 3 else gt
        accumulator.add(gt, disparity_to_depth_at(disp, gt.shape, cfg.min_depth, cfg.max_depth))
    result = accumulator.mean()
    result["ratio_median"], result["ratio_std"] = accumulator.ratio_stats()
    result["num_images"] = len(accumulator)
    return result
