"""Depth and pose evaluation metrics (docs/method.md 7), Monodepth2 protocol, on host numpy arrays.

Depth (KITTI Eigen split): per image, valid = min_depth < gt < max_depth inside the Garg crop; the
prediction is median-scaled on the valid pixels, clamped to [min_depth, max_depth], and the seven
standard errors are computed; the reported numbers are means over images (not over pixels), which
:class:`DepthMetricAccumulator` implements.

Pose (KITTI odometry 09/10): the SfMLearner/Monodepth2 5-frame snippet ATE. Its "ATE" is
sqrt(sum of squared errors) / N, not a true RMSE; it is reproduced as is so numbers are comparable.

All functions accept numpy arrays or eager ``tf.Tensor``s and compute in float64.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DEPTH_METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")

# Crop boxes as fractions of (height, height, width, width): rows [top, bottom), cols [left, right).
# Garg et al. (ECCV 2016), used by Monodepth2 for the Eigen split.
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
# Eigen et al. (NIPS 2014) crop, as in Monodepth(1)/SfMLearner evaluation code.
EIGEN_CROP = (0.3324324, 0.91351351, 0.0359477, 0.96405229)

MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
SNIPPET_LENGTH = 5


def _describe(x) -> str:
    dtype = getattr(x, "dtype", type(x).__name__)
    return f"shape {list(np.shape(x))}, dtype {getattr(dtype, 'name', dtype)}"


def _as_array(x, name: str, shape: Optional[Sequence[Optional[int]]] = None) -> np.ndarray:
    """Returns ``x`` as a float64 numpy array after checking rank / known dimensions of ``shape``."""
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a numeric array, got {_describe(x)}") from None
    if shape is not None:
        fits = array.ndim == len(shape) and all(
            want is None or want == have for want, have in zip(shape, array.shape))
        if not fits:
            expected = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name}: expected shape {expected}, got {_describe(x)}")
    return array


# ------------------------------------------------------------------------------------------- depth


def compute_depth_errors(gt, pred) -> Dict[str, float]:
    """The seven Monodepth2 depth errors between matched valid pixels.

    abs_rel = mean(|g - p| / g); sq_rel = mean((g - p)^2 / g); rmse = sqrt(mean((g - p)^2));
    rmse_log = sqrt(mean((ln g - ln p)^2)); a_k = mean(max(g / p, p / g) < 1.25^k), k = 1, 2, 3.

    Args:
      gt: [N] ground-truth depths, metres, > 0.
      pred: [N] predicted depths, metres, > 0 (already scaled and clamped).

    Returns:
      dict with the keys of ``DEPTH_METRIC_NAMES`` mapping to Python floats (rmse in metres, sq_rel in
      metres, the rest unitless; a1..a3 are fractions in [0, 1]).
    """
    gt = _as_array(gt, "gt", (None,))
    pred = _as_array(pred, "pred", (None,))
    if gt.shape != pred.shape:
        raise ValueError(f"gt {list(gt.shape)} and pred {list(pred.shape)} must have the same length")
    if gt.size == 0:
        raise ValueError("gt and pred are empty: no valid pixel to evaluate")
    for name, values in (("gt", gt), ("pred", pred)):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"{name}: depths must be finite and > 0 (filter invalid pixels and clamp "
                             f"the prediction first), got min {values.min()}, max {values.max()}")
    ratio = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    log_diff = np.log(gt) - np.log(pred)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff ** 2))),
        "rmse_log": float(np.sqrt(np.mean(log_diff ** 2))),
        "a1": float(np.mean(ratio < 1.25)),
        "a2": float(np.mean(ratio < 1.25 ** 2)),
        "a3": float(np.mean(ratio < 1.25 ** 3)),
    }


def _median_ratio(gt: np.ndarray, pred: np.ndarray) -> float:
    ratio = float(np.median(gt) / np.median(pred))
    if not np.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"median scaling ratio median(gt) / median(pred) = {ratio} is not a finite "
                         f"positive number (median gt {np.median(gt)}, median pred {np.median(pred)})")
    return ratio


def median_scaling(gt, pred) -> Tuple[np.ndarray, float]:
    """Scales ``pred`` so that its median equals the median of ``gt`` (monocular scale ambiguity).

    Args:
      gt: [...] ground-truth depths of the valid pixels, metres.
      pred: [...] predicted depths of the same pixels (same shape), arbitrary scale.

    Returns:
      (scaled_pred [...] float64 metres, ratio = median(gt) / median(pred) as a Python float).
    """
    gt = _as_array(gt, "gt")
    pred = _as_array(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt {list(gt.shape)} and pred {list(pred.shape)} must have the same shape")
    if gt.size == 0:
        raise ValueError("gt and pred are empty: no valid pixel for median scaling")
    ratio = _median_ratio(gt, pred)
    return pred * ratio, ratio


def _crop_mask(height: int, width: int, fractions: Tuple[float, float, float, float]) -> np.ndarray:
    if int(height) != height or int(width) != width or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive integers, got {height} x {width}")
    top, bottom, left, right = fractions
    # Monodepth2 casts the float bounds with astype(int32), i.e. floors them (all are positive).
    rows = slice(int(np.floor(top * height)), int(np.floor(bottom * height)))
    cols = slice(int(np.floor(left * width)), int(np.floor(right * width)))
    mask = np.zeros((int(height), int(width)), dtype=bool)
    mask[rows, cols] = True
    return mask


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """Garg crop: rows [floor(0.40810811 h), floor(0.99189189 h)), cols [floor(0.03594771 w),
    floor(0.96405229 w)).

    Args:
      height, width: ground-truth image size in pixels.

    Returns:
      [height, width] bool, True inside the crop.
    """
    return _crop_mask(height, width, GARG_CROP)


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """Eigen crop: rows [floor(0.3324324 h), floor(0.91351351 h)), cols [floor(0.0359477 w),
    floor(0.96405229 w)).

    Args:
      height, width: ground-truth image size in pixels.

    Returns:
      [height, width] bool, True inside the crop.
    """
    return _crop_mask(height, width, EIGEN_CROP)


_CROPS = {"garg": garg_crop_mask, "eigen": eigen_crop_mask}


def evaluate_depth_map(gt_depth, pred_depth, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH,
                       crop: Optional[str] = "garg",
                       median_scaling: bool = True) -> Tuple[Dict[str, float], float]:
    """Evaluates one predicted depth map against sparse ground truth (Monodepth2 protocol).

    Valid pixels: min_depth < gt < max_depth (strict; gt = 0 marks "no lidar point") and inside the
    crop. On them: pred *= median(gt) / median(pred) if ``median_scaling``; pred clamped to
    [min_depth, max_depth]; then :func:`compute_depth_errors`.

    Args:
      gt_depth: [H, W] ground-truth depth, metres (0 where unknown).
      pred_depth: [H, W] predicted depth at the ground-truth resolution, metres (up to scale if
        ``median_scaling``); must be > 0 on valid pixels.
      min_depth, max_depth: valid depth range and clamp range, metres.
      crop: "garg" (KITTI Eigen split, the default), "eigen", or None (no crop).
      median_scaling: per-image median scaling (monocular models).

    Returns:
      (errors dict of Python floats, ratio) where ratio is the median-scaling factor (1.0 when
      ``median_scaling`` is False).

    Raises:
      ValueError: shapes differ or are not [H, W], unknown crop, or no valid pixel.
    """
    gt_depth = _as_array(gt_depth, "gt_depth", (None, None))
    pred_depth = _as_array(pred_depth, "pred_depth", (None, None))
    if gt_depth.shape != pred_depth.shape:
        raise ValueError(f"gt_depth {list(gt_depth.shape)} and pred_depth {list(pred_depth.shape)} "
                         f"must have the same [H, W] (resize the prediction to the ground-truth size)")
    if crop is not None and crop not in _CROPS:
        raise ValueError(f"crop: expected 'garg', 'eigen' or None, got {crop!r}")
    if not min_depth < max_depth:
        raise ValueError(f"min_depth {min_depth} must be smaller than max_depth {max_depth}")
    valid = (gt_depth > min_depth) & (gt_depth < max_depth)
    if crop is not None:
        valid &= _CROPS[crop](*gt_depth.shape)
    if not np.any(valid):
        raise ValueError(f"no valid ground-truth pixel (gt in ({min_depth}, {max_depth}) m, "
                         f"crop {crop!r}) in a {list(gt_depth.shape)} map")
    gt = gt_depth[valid]
    pred = pred_depth[valid]
    ratio = 1.0
    if median_scaling:
        ratio = _median_ratio(gt, pred)
        pred = pred * ratio
    pred = np.clip(pred, min_depth, max_depth)
    return compute_depth_errors(gt, pred), ratio


class DepthMetricAccumulator:
    """Averages per-image depth errors over a test set, as the reference evaluation does.

    Usage::

        acc = DepthMetricAccumulator()
        for gt, pred in pairs:            # gt, pred: [H, W] metres
            acc.add(gt, pred)
        acc.mean()                        # {"abs_rel": ..., ..., "a3": ...}
        acc.ratio_stats()                 # (median ratio, std of ratios / median)
    """

    def __init__(self, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH,
                 crop: Optional[str] = "garg", median_scaling: bool = True):
        """Stores the settings passed to :func:`evaluate_depth_map` for every image."""
        if crop is not None and crop not in _CROPS:
            raise ValueError(f"crop: expected 'garg', 'eigen' or None, got {crop!r}")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.crop = crop
        self.median_scaling = median_scaling
        self.errors: List[Dict[str, float]] = []
        self.ratios: List[float] = []

    def add(self, gt_depth, pred_depth) -> Tuple[Dict[str, float], float]:
        """Evaluates one image (gt_depth, pred_depth: [H, W] metres) and stores its errors and ratio.

        Returns what :func:`evaluate_depth_map` returns for this image.
        """
        errors, ratio = evaluate_depth_map(gt_depth, pred_depth, self.min_depth, self.max_depth,
                                           self.crop, self.median_scaling)
        self.errors.append(errors)
        self.ratios.append(ratio)
        return errors, ratio

    def __len__(self) -> int:
        return len(self.errors)

    def mean(self) -> Dict[str, float]:
        """Mean of each error over the images added so far (dict of Python floats)."""
        if not self.errors:
            raise ValueError("DepthMetricAccumulator.mean(): no image has been added")
        return {name: float(np.mean([e[name] for e in self.errors])) for name in DEPTH_METRIC_NAMES}

    def ratio_stats(self) -> Tuple[float, float]:
        """(median of the median-scaling ratios, std of ratios / that median), as Monodepth2 prints.

        The std is relative (unitless): Monodepth2 reports np.std(ratios / median).
        """
        if not self.ratios:
            raise ValueError("DepthMetricAccumulator.ratio_stats(): no image has been added")
        ratios = np.asarray(self.ratios, dtype=np.float64)
        median = float(np.median(ratios))
        return median, float(np.std(ratios / median))


# -------------------------------------------------------------------------------------------- pose


def compute_ate(gt_xyz, pred_xyz) -> float:
    """Monodepth2/SfMLearner snippet "ATE" between two matched point tracks.

    The prediction is translated so its first point coincides with the ground truth's, scaled by the
    least-squares factor s = sum(g * p) / sum(p^2) (p the translated prediction), and the error is
    sqrt(sum_i ||s p_i - g_i||^2) / N. Note the division by N, not sqrt(N): this is the reference's
    definition, not an RMSE. If the translated prediction is all zeros, the error does not depend on
    s and sqrt(sum ||g_i||^2) / N is returned (the reference would give NaN).

    Args:
      gt_xyz: [N, 3] ground-truth positions, metres.
      pred_xyz: [N, 3] predicted positions (any scale).

    Returns:
      The error as a Python float, metres.
    """
    gt_xyz = _as_array(gt_xyz, "gt_xyz", (None, 3))
    pred_xyz = _as_array(pred_xyz, "pred_xyz", (None, 3))
    if gt_xyz.shape != pred_xyz.shape:
        raise ValueError(f"gt_xyz {list(gt_xyz.shape)} and pred_xyz {list(pred_xyz.shape)} must have "
                         f"the same number of points")
    if gt_xyz.shape[0] == 0:
        raise ValueError("gt_xyz and pred_xyz are empty")
    pred = pred_xyz + (gt_xyz[0] - pred_xyz[0])[None, :]
    norm = np.sum(pred ** 2)
    scale = np.sum(gt_xyz * pred) / norm if norm > 0 else 0.0
    return float(np.sqrt(np.sum((scale * pred - gt_xyz) ** 2)) / gt_xyz.shape[0])


def _as_poses(x, name: str, allow_3x4: bool) -> np.ndarray:
    array = _as_array(x, name)
    if allow_3x4 and array.ndim == 3 and array.shape[1:] == (3, 4):
        # KITTI odometry poses.txt rows: append the homogeneous row [0, 0, 0, 1].
        bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (array.shape[0], 1, 4))
        array = np.concatenate([array, bottom], axis=1)
    if array.ndim != 3 or array.shape[1:] != (4, 4):
        expected = "[M, 4, 4] (or KITTI's [M, 3, 4])" if allow_3x4 else "[M, 4, 4]"
        raise ValueError(f"{name}: expected {expected}, got {_describe(x)}")
    return array


def local_motions_from_absolute(gt_poses) -> np.ndarray:
    """Frame-to-frame motions T_{i-1 -> i} from absolute camera-to-world poses.

    T_{i-1 -> i} = inv(inv(G_{i-1}) G_i) = inv(G_i) G_{i-1} maps points from camera i-1's frame into
    camera i's frame: the project's T_{0->s} convention with target i-1 and source i, i.e. what the
    pose net predicts for the pair (i-1, i) without inversion (Monodepth2's evaluate_pose).

    Args:
      gt_poses: [M, 4, 4] (or KITTI's [M, 3, 4]) camera-to-world poses G_i (metres): X_world = G_i X_i.

    Returns:
      [M-1, 4, 4] float64 local motions.
    """
    poses = _as_poses(gt_poses, "gt_poses", allow_3x4=True)
    return np.linalg.inv(np.linalg.inv(poses[:-1]) @ poses[1:])


def snippet_positions(local_motions) -> np.ndarray:
    """Chains local motions into a snippet track, Monodepth2/SfMLearner style.

    C_0 = I, C_k = C_{k-1} T_k (right-multiplied cumulative product); positions are the translations
    of C_k. This is the reference's definition (with T_k = T_{k-1 -> k} it is not the physical camera
    path when the camera rotates); both ground truth and prediction are chained the same way.

    Args:
      local_motions: [n, 4, 4] consecutive motions T_1 .. T_n.

    Returns:
      [n + 1, 3] float64 positions, the first one the origin.
    """
    motions = _as_poses(local_motions, "local_motions", allow_3x4=False)
    chained = np.eye(4)
    positions = [chained[:3, 3].copy()]
    for motion in motions:
        chained = chained @ motion
        positions.append(chained[:3, 3].copy())
    return np.stack(positions)


def snippet_ates(gt_poses, pred_local, snippet_length: int = SNIPPET_LENGTH) -> np.ndarray:
    """Per-snippet ATE over a sequence (Monodepth2 pose protocol, docs/method.md 7).

    For every start frame i = 0 .. M-2, the motions i .. i + snippet_length - 2 (fewer at the end of
    the sequence) of the ground truth and of the prediction are chained with :func:`snippet_positions`
    and compared with :func:`compute_ate`. Report mean and std of the returned array.

    Conventions: gt_poses are camera-to-world (KITTI odometry poses.txt: X_world = G_i X_i, metres);
    pred_local[i] = T_{i -> i+1} maps points from camera i's frame into camera i+1's frame (the pose
    net's output for the pair (i, i+1) without inversion, project convention T_{0->s}); ground-truth
    motions come from :func:`local_motions_from_absolute` in the same convention.

    Args:
      gt_poses: [M, 4, 4] (or [M, 3, 4]) absolute ground-truth poses.
      pred_local: [M-1, 4, 4] predicted frame-to-frame motions (translation in any scale).
      snippet_length: frames per snippet (5: four chained motions).

    Returns:
      [M-1] float64 array of per-snippet errors, metres.
    """
    if int(snippet_length) != snippet_length or snippet_length < 2:
        raise ValueError(f"snippet_length must be an integer >= 2, got {snippet_length}")
    gt_local = local_motions_from_absolute(gt_poses)
    pred_local = _as_poses(pred_local, "pred_local", allow_3x4=False)
    if pred_local.shape[0] != gt_local.shape[0]:
        raise ValueError(f"pred_local: expected [M-1, 4, 4] = [{gt_local.shape[0]}, 4, 4] for "
                         f"{gt_local.shape[0] + 1} ground-truth poses, got {_describe(pred_local)}")
    if gt_local.shape[0] == 0:
        raise ValueError("gt_poses: need at least 2 poses")
    motions_per_snippet = int(snippet_length) - 1
    ates = []
    for start in range(gt_local.shape[0]):
        window = slice(start, start + motions_per_snippet)
        ates.append(compute_ate(snippet_positions(gt_local[window]),
                                snippet_positions(pred_local[window])))
    return np.asarray(ates, dtype=np.float64)
