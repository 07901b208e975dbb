"""Camera geometry: disparity to depth, pose vectors to matrices, back-projection, projection,
bilinear sampling and view synthesis (warping).

Conventions used everywhere in tripled_tf:
- Camera coordinates: x right, y down, z forward, metres.
- Pixel coordinates: (x, y) with pixel *centres* at integers, x right, y down; pixel (0, 0) is the
  centre of the top-left pixel. Back-projection and sampling use the same convention, so an identity
  pose reproduces the target image exactly (unlike the PyTorch references, whose grid_sample call
  samples half a pixel off near the borders; ``sampling="torch_default"`` reproduces that bias).
- Intrinsics ``K`` and poses ``T`` are batches of homogeneous 4x4 matrices ``[B, 4, 4]``.
- ``T`` (written T_{0->s}) maps points from the *target* camera frame into the *source* camera frame,
  so the target pixel p lands at ``K · T · depth(p) · K⁻¹ · p`` in the source image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.conventions import KITTI_NORMALIZED_INTRINSICS

SAMPLING_MODES = ("exact", "torch_default")


def disp_to_depth(disp, min_depth: float = 0.1, max_depth: float = 100.0):
    """Converts a sigmoid disparity to (scaled disparity, depth), Monodepth2's convention.

    scaled_disp = 1/max_depth + (1/min_depth - 1/max_depth) · disp; depth = 1 / scaled_disp.

    Args:
      disp: sigmoid output in [0, 1], any shape (usually [B, H, W, 1]).
      min_depth, max_depth: depth range in metres that disp = 1 and disp = 0 map to.
    Returns:
      (scaled_disp in 1/metres, depth in metres), both with the shape of ``disp``.
    """
    if not (0 < min_depth < max_depth):
        raise ValueError(f"need 0 < min_depth < max_depth, got min_depth={min_depth}, "
                         f"max_depth={max_depth}")
    disp = checks.as_float_tensor(disp, "disp")
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


def depth_to_disp(depth, min_depth: float = 0.1, max_depth: float = 100.0):
    """Inverse of :func:`disp_to_depth`: the sigmoid disparity in [0, 1] that gives ``depth`` metres."""
    depth = checks.as_float_tensor(depth, "depth")
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    return (1.0 / depth - min_disp) / (max_disp - min_disp)


def rotation_from_axisangle(axisangle) -> tf.Tensor:
    """Rodrigues' formula: axis-angle vectors [B, 3] (radians · unit axis) -> rotations [B, 3, 3].

    R = cos θ · I + sin θ · [a]× + (1 − cos θ) · a aᵀ with θ = |ω|, a = ω / (θ + 1e-7).
    """
    axisangle = checks.as_vectors(axisangle, "axisangle", 3)
    squared_norm = tf.reduce_sum(tf.square(axisangle), axis=-1, keepdims=True)
    # +1e-14 keeps the gradient of the norm finite at ω = 0 (it changes θ by < 1e-7 rad).
    theta = tf.sqrt(squared_norm + 1e-14)
    axis = axisangle / (theta + 1e-7)
    cos = tf.cos(theta)[..., None]
    sin = tf.sin(theta)[..., None]
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zero = tf.zeros_like(x)
    cross = tf.stack([tf.stack([zero, -z, y], -1),
                      tf.stack([z, zero, -x], -1),
                      tf.stack([-y, x, zero], -1)], axis=1)
    outer = axis[:, :, None] * axis[:, None, :]
    eye = tf.eye(3, batch_shape=tf.shape(axisangle)[:1], dtype=axisangle.dtype)
    return cos * eye + sin * cross + (1.0 - cos) * outer


def pose_to_matrix(axisangle, translation, invert: bool = False) -> tf.Tensor:
    """Builds homogeneous transforms from axis-angle rotations and translations.

    Args:
      axisangle: [B, 3] Rodrigues vectors (radians). [B, 1, 3] (Monodepth2's layout) is accepted.
      translation: [B, 3] metres.
      invert: if False, M = Trans(t) · R (rotate, then translate); if True, the inverse
        M⁻¹ = Rᵀ · Trans(−t).
    Returns:
      [B, 4, 4] float32.
    """
    rotation = rotation_from_axisangle(axisangle)
    translation = checks.as_vectors(translation, "translation", 3)
    if invert:
        rotation = tf.linalg.matrix_transpose(rotation)
        translation = -tf.linalg.matvec(rotation, translation)
    top = tf.concat([rotation, translation[:, :, None]], axis=2)
    bottom = tf.broadcast_to(tf.constant([[[0.0, 0.0, 0.0, 1.0]]]), tf.stack([tf.shape(top)[0], 1, 4]))
    return tf.concat([top, bottom], axis=1)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """A 4x4 intrinsics matrix (pixels) as float32 numpy; batch it with ``np.broadcast_to``."""
    return np.array([[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)


def kitti_intrinsics(height: int, width: int) -> np.ndarray:
    """The references' normalised KITTI K scaled to an image of height x width pixels: [4, 4]."""
    fx, fy, cx, cy = KITTI_NORMALIZED_INTRINSICS
    return intrinsics_matrix(fx * width, fy * height, cx * width, cy * height)


def scale_intrinsics(K, scale_x: float, scale_y: float) -> tf.Tensor:
    """K [B, 4, 4] for an image resized by (scale_x, scale_y): rows 0 and 1 scaled (the references'
    convention, e.g. halving K for the half-resolution feature-metric loss)."""
    K = checks.as_matrices(K, "K")
    scale = tf.constant([scale_x, scale_y, 1.0, 1.0], tf.float32)[:, None]
    return K * scale


def pixel_coordinates(height, width):
    """Pixel-centre coordinates as two [H, W] maps (x in [0, W-1], y in [0, H-1])."""
    xs = tf.range(tf.cast(width, tf.float32), dtype=tf.float32)
    ys = tf.range(tf.cast(height, tf.float32), dtype=tf.float32)
    return tf.meshgrid(xs, ys)


def pixel_grid(height, width) -> tf.Tensor:
    """Homogeneous pixel-centre coordinates [H, W, 3] = (x, y, 1), x in [0, W-1], y in [0, H-1]."""
    grid_x, grid_y = pixel_coordinates(height, width)
    return tf.stack([grid_x, grid_y, tf.ones_like(grid_x)], axis=-1)


def backproject(depth, inv_K) -> tf.Tensor:
    """Lifts every pixel to a 3-D point in its camera frame.

    Args:
      depth: [B, H, W, 1] metres (z-depth along the optical axis).
      inv_K: [B, 4, 4] inverse intrinsics.
    Returns:
      [B, H, W, 4] homogeneous camera points (X, Y, Z, 1), metres.
    """
    depth = checks.as_depth(depth)
    inv_K = checks.as_matrices(inv_K, "inv_K")
    shape = tf.shape(depth)
    pixels = pixel_grid(shape[1], shape[2])
    rays = tf.einsum("bij,hwj->bhwi", inv_K[:, :3, :3], pixels)
    points = depth * rays
    return tf.concat([points, tf.ones_like(depth)], axis=-1)


def project_coords(depth, T, K, inv_K) -> tf.Tensor:
    """Where every target pixel lands in the source image.

    Args:
      depth: [B, H, W, 1] target depth, metres.
      T: [B, 4, 4] target -> source transform (T_{0->s}).
      K, inv_K: [B, 4, 4] intrinsics (pixels) and their inverse.
    Returns:
      [B, H, W, 2] source pixel coordinates (x right, y down, pixel centres at integers).
    """
    return tf.stack(_project_xy(depth, T, K, inv_K), axis=-1)


def _project_xy(depth, T, K, inv_K):
    """:func:`project_coords` as two [B, H, W] maps (x, y).

    Equal to projecting ``backproject(depth, inv_K)`` with (K · T)[:3] and dividing by z, regrouped
    for the training loss, which warps at every scale: with P = (K · T)[:3],
    P · (d · K⁻¹ p, 1) = d · (P[:, :3] · K⁻¹) · p + P[:, 3], so the per-pixel work is one multiply-add
    per coordinate and one division, with no [B, H, W, 4] homogeneous points, no 4x4 product per pixel
    and no channel slices (whose gradients are full-size scatters).
    """
    depth = checks.as_depth(depth)
    K = checks.as_matrices(K, "K")
    T = checks.as_matrices(T, "T")
    inv_K = checks.as_matrices(inv_K, "inv_K")
    projection = tf.matmul(K, T)[:, :3, :]
    ray_matrix = tf.matmul(projection[:, :, :3], inv_K[:, :3, :3])[:, :, :, None, None]
    translation = projection[:, :, 3, None, None]
    shape = tf.shape(depth)
    grid_x, grid_y = pixel_coordinates(shape[1], shape[2])
    depth = depth[..., 0]

    def camera(row):  # row i of P · (d K⁻¹ p, 1), [B, H, W]
        ray = ray_matrix[:, row, 0] * grid_x + ray_matrix[:, row, 1] * grid_y + ray_matrix[:, row, 2]
        return depth * ray + translation[:, row]

    z = camera(2) + 1e-7
    return camera(0) / z, camera(1) / z


def bilinear_sample(image, coords, sampling: str = "exact") -> tf.Tensor:
    """Samples ``image`` bilinearly at pixel coordinates, clamping to the border.

    Args:
      image: [B, H, W, C].
      coords: [B, h, w, 2] (x, y) pixel coordinates, pixel centres at integers. Coordinates outside
        the image are clamped to [0, W-1] x [0, H-1] (PyTorch's padding_mode="border").
      sampling: "exact" samples exactly at ``coords``; "torch_default" reproduces the references'
        grid_sample call (align_corners=True normalisation read back with align_corners=False), which
        samples at x·W/(W−1) − 0.5 (and likewise y): a half-pixel zoom about the image centre.
    Returns:
      [B, h, w, C] float32. Differentiable w.r.t. ``image`` and ``coords`` (zero coordinate gradient
      where clamped).
    """
    coords = checks.as_float_tensor(coords, "coords", shape=(None, None, None, 2))
    return _bilinear_sample_xy(image, coords[..., 0], coords[..., 1], sampling)


def _bilinear_sample_xy(image, x, y, sampling: str) -> tf.Tensor:
    """:func:`bilinear_sample` with the coordinates as two [B, h, w] maps."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    image = checks.as_float_tensor(image, "image", rank=4)
    shape = tf.shape(image)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    width_f = tf.cast(width, tf.float32)
    height_f = tf.cast(height, tf.float32)
    if sampling == "torch_default":
        x = x * width_f / tf.maximum(width_f - 1.0, 1.0) - 0.5
        y = y * height_f / tf.maximum(height_f - 1.0, 1.0) - 0.5
    x = tf.clip_by_value(x, 0.0, width_f - 1.0)
    y = tf.clip_by_value(y, 0.0, height_f - 1.0)
    # The lower corner stays <= size-2 so that x = W-1 is reached with weight 1 on the upper corner;
    # floor() carries no gradient, so the coordinate gradient flows through the weights only.
    # A NaN coordinate (from a NaN depth) must give a NaN sample, which the trainer's guard reports,
    # not an out-of-range gather index (int cast of NaN): indices come from a finite copy, the
    # weights from the coordinates themselves.
    x0 = tf.minimum(tf.floor(tf.where(tf.math.is_finite(x), x, 0.0)), tf.maximum(width_f - 2.0, 0.0))
    y0 = tf.minimum(tf.floor(tf.where(tf.math.is_finite(y), y, 0.0)), tf.maximum(height_f - 2.0, 0.0))
    wx = (x - x0)[..., None]
    wy = (y - y0)[..., None]
    x0i = tf.cast(x0, tf.int32)
    y0i = tf.cast(y0, tf.int32)
    x1i = tf.minimum(x0i + 1, width - 1)
    y1i = tf.minimum(y0i + 1, height - 1)

    flat = tf.reshape(image, tf.stack([batch, height * width, channels]))
    out_shape = tf.shape(x)

    def gather(yi, xi):
        index = tf.reshape(yi * width + xi, tf.stack([batch, -1]))
        values = tf.gather(flat, index, batch_dims=1)
        return tf.reshape(values, tf.concat([out_shape, [channels]], axis=0))

    top = gather(y0i, x0i) * (1.0 - wx) + gather(y0i, x1i) * wx
    bottom = gather(y1i, x0i) * (1.0 - wx) + gather(y1i, x1i) * wx
    return top * (1.0 - wy) + bottom * wy


def warp(source, depth, T, K, inv_K, sampling: str = "exact") -> tf.Tensor:
    """Synthesises the target view from a source image (inverse warping).

    Args:
      source: [B, H, W, C] source image (or features).
      depth: [B, H, W, 1] target depth, metres, at the resolution of ``source``.
      T: [B, 4, 4] target -> source transform; K, inv_K: [B, 4, 4] intrinsics at that resolution.
      sampling: see :func:`bilinear_sample`.
    Returns:
      [B, H, W, C] the source resampled into the target view.
    """
    source = checks.as_float_tensor(source, "source", rank=4)
    depth = checks.as_depth(depth)
    checks.same_spatial_size(source, depth, "source", "depth")
    x, y = _project_xy(depth, T, K, inv_K)
    return _bilinear_sample_xy(source, x, y, sampling)


def resize_bilinear(images, size: Sequence[int]) -> tf.Tensor:
    """Bilinear resize with half-pixel centres and no antialiasing: [B, H, W, C] -> [B, h, w, C].

    This is PyTorch's ``interpolate(mode="bilinear", align_corners=False)``, which the references use
    for every up-sampling of disparities and images.
    """
    return tf.image.resize(images, size, method="bilinear", antialias=False)


def inverse_intrinsics(K) -> tf.Tensor:
    """K⁻¹ [B, 4, 4] of intrinsics [B, 4, 4]."""
    return tf.linalg.inv(checks.as_matrices(K, "K"))
