"""Depth evaluation of a model on in-memory frames with ground truth (the library behind
``python -m tripled_tf.evaluate`` and the before/after figures of a training run)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import tensorflow as tf

from tripled_tf import metrics
from tripled_tf.inference import DepthFunction, as_depth_function


def disparity_to_depth_at(disp: np.ndarray, size, min_depth: float, max_depth: float) -> np.ndarray:
    """[h, w] sigmoid disparity -> [H, W] depth at another size: the references resize the *scaled
    disparity* bilinearly (half-pixel) to the ground truth's size, then invert (docs/method.md §7)."""
    scaled = 1.0 / max_depth + (1.0 / min_depth - 1.0 / max_depth) * np.asarray(disp, np.float32)
    height, width = int(size[0]), int(size[1])
    if scaled.shape != (height, width):
        scaled = cv2.resize(scaled, (width, height), interpolation=cv2.INTER_LINEAR)
    return 1.0 / scaled


def predict_depths(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """[N, H, W] depth at the input resolution (relative scale for monocular models).

    Args:
      model: a Keras depth model or a :class:`DepthFunction` (run folder, SavedModel, .tflite).
    """
    depth_fn = as_depth_function(model)
    disps = _disparities(depth_fn, images, batch_size)
    size = np.shape(images)[1:3]
    return np.stack([disparity_to_depth_at(d, size, depth_fn.min_depth, depth_fn.max_depth)
                     for d in disps])


def _disparities(depth_fn: DepthFunction, images, batch_size: int) -> np.ndarray:
    disps = []
    for start in range(0, len(images), batch_size):
        disps.append(np.asarray(depth_fn.predict(np.asarray(images[start:start + batch_size],
                                                            np.float32))))
    return np.concatenate(disps, axis=0)


def evaluate_depth(model, images: np.ndarray, gt_depths: Sequence[np.ndarray], crop: Optional[str] = None,
                   median_scaling: bool = True, min_depth: float = 1e-3, max_depth: float = 80.0,
                   batch_size: int = 8) -> Dict[str, float]:
    """Mean depth errors over frames, Monodepth2's protocol (per-image median scaling, cap, crop).

    Args:
      model: a Keras depth model or a :class:`DepthFunction` (run folder, SavedModel, .tflite).
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
    depth_fn = as_depth_function(model)
    disps = _disparities(depth_fn, images, batch_size)
    accumulator = metrics.DepthMetricAccumulator(min_depth, max_depth, crop, median_scaling)
    for gt, disp in zip(gt_depths, disps):
        gt = np.asarray(gt, np.float32)
        gt = gt[..., 0] if gt.ndim == 3 else gt
        accumulator.add(gt, disparity_to_depth_at(disp, gt.shape, depth_fn.min_depth, depth_fn.max_depth))
    result = accumulator.mean()
    result["ratio_median"], result["ratio_std"] = accumulator.ratio_stats()
    result["num_images"] = len(accumulator)
    return result


# ------------------------------------------------------------------------------------------------
# KITTI depth: frames at the model's size, ground truth at the camera's native size


def kitti_depth_samples(frames, height: int, width: int, ground_truth: str = "auto",
                        gt_depths_file=None):
    """Images and ground-truth maps for the frames of a KITTI evaluation split.

    Args:
      frames: ``tripled_tf.data.kitti.EvalFrame`` list (``kitti.eval_frames``).
      height, width: the model's input size; frames are resized as the training pipeline resizes them.
      ground_truth: "auto" (the depth benchmark's improved PNGs where every frame has one, else the
        Velodyne projection), "benchmark" (improved PNGs, required) or "velodyne".
      gt_depths_file: Monodepth2's exported ``gt_depths.npz`` (key "data", one map per split line, in
        the split's order); when given it is used instead of ``ground_truth``.
    Returns:
      (images [N, H, W, 3] float32 in [0, 1], list of N [h, w] ground-truth maps in metres at the
      native size (0 = no measurement), the ground-truth source used).
    Raises:
      BadInputError for a frame without the requested ground truth.
    """
    from tripled_tf.data import frame_files, kitti, pipeline
    from tripled_tf.data.records import BadInputError, unreadable

    if ground_truth not in ("auto", "benchmark", "velodyne"):
        raise ValueError(f"ground_truth must be auto, benchmark or velodyne, got {ground_truth!r}")
    config = pipeline.PipelineConfig(height=height, width=width, batch_size=1)
    images = np.stack([frame_files.load_resized_frame(f.image, config) for f in frames])
    if gt_depths_file is not None:
        # Monodepth2's file is an object array of maps: loading it needs pickle, so only the user's own
        # exported file should be given here.
        try:
            maps = list(np.load(gt_depths_file, fix_imports=True, encoding="latin1",
                                allow_pickle=True)["data"])
        except (OSError, KeyError, ValueError) as e:
            raise unreadable(gt_depths_file, "exported ground truth", e) from None
        if len(maps) != len(frames):
            raise BadInputError(str(gt_depths_file), f"holds {len(maps)} depth maps, the split has "
                                                     f"{len(frames)} frames")
        return images, [np.asarray(m, np.float32) for m in maps], "exported"
    use_benchmark = ground_truth == "benchmark" or (
        ground_truth == "auto" and all(f.benchmark_depth for f in frames))
    depths = []
    for frame in frames:
        if use_benchmark:
            if frame.benchmark_depth is None:
                raise BadInputError(frame.image, "no improved ground truth (proj_depth/groundtruth) "
                                                 f"for {frame.name!r}")
            depths.append(kitti.load_benchmark_depth(frame.benchmark_depth))
        else:
            if frame.velodyne is None:
                raise BadInputError(frame.image, f"no Velodyne scan for {frame.name!r} (velodyne_points/"
                                                 "data/<index>.bin), so no ground truth")
            depths.append(kitti.generate_depth_map(frame.calib_dir, frame.velodyne, cam=frame.camera))
    return images, depths, ("benchmark" if use_benchmark else "velodyne")


# ------------------------------------------------------------------------------------------------
# Pose: absolute trajectory error over 5-frame snippets


def predict_relative_poses(model, frames: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Frame-to-frame motions from the model's pose net, in inference mode.

    Args:
      model: a depth model with ``pose_net`` (frames are resized to its input size inside the net).
      frames: [M, H, W, 3] float32 in [0, 1], consecutive frames of one sequence.
    Returns:
      [M-1, 4, 4] float64 T_{i -> i+1} (points of camera i into camera i+1): the pose net on the
      pair (i, i+1) in temporal order, not inverted — the convention ``metrics.snippet_ates`` expects.
    """
    from tripled_tf import geometry

    frames = np.asarray(frames, np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise ValueError(f"frames: expected [M >= 2, H, W, 3], got shape {list(frames.shape)}")

    @tf.function(reduce_retracing=True)
    def pose(first, second):
        axisangle, translation = model.pose_net((first, second), training=False)
        return geometry.pose_to_matrix(tf.cast(axisangle, tf.float32), tf.cast(translation, tf.float32))

    out = []
    for start in range(0, len(frames) - 1, batch_size):
        stop = min(start + batch_size, len(frames) - 1)
        out.append(pose(tf.constant(frames[start:stop]), tf.constant(frames[start + 1:stop + 1])).numpy())
    return np.concatenate(out).astype(np.float64)


def evaluate_pose(model, frames: np.ndarray, camera_to_world: np.ndarray,
                  snippet_length: int = metrics.SNIPPET_LENGTH, batch_size: int = 8) -> Dict[str, float]:
    """Monodepth2's pose protocol on one sequence: ATE of every ``snippet_length``-frame snippet,
    each scale-aligned to the ground truth (metrics.snippet_ates).

    Args:
      frames: [M, H, W, 3] consecutive frames at the model's size; camera_to_world: [M, 4, 4] (or
        KITTI's [M, 3, 4]) ground-truth poses, metres.
    Returns:
      {"ate_mean", "ate_std" (metres), "num_snippets"}.
    """
    if len(frames) != len(camera_to_world):
        raise ValueError(f"{len(frames)} frames but {len(camera_to_world)} poses")
    predicted = predict_relative_poses(model, frames, batch_size)
    ates = metrics.snippet_ates(camera_to_world, predicted, snippet_length)
    return {"ate_mean": float(np.mean(ates)), "ate_std": float(np.std(ates)),
            "num_snippets": int(len(ates))}
