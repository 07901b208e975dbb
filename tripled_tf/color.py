"""Colour-space conversions for the pretext heads (docs/method.md 2.7).

The D2G head regresses Lab lightness L/100 (or ITU-R 601 luma), the DG2C head maps (disparity, L_n)
to the normalised chroma ab_n. All conversions are plain TensorFlow ops on the last axis, so they work
on any leading shape ``[..., 3]`` (NHWC batches, single pixels, pixel lists) and inside
``tf.function``.

sRGB -> Lab uses exactly the constants of the reference code (D65 white 0.95047 / 1 / 1.08883, the
0.412453... sRGB->XYZ matrix, f(t) with threshold 0.008856 and slope 7.787), not the CIE rational
constants (216/24389, 841/108): the targets must match what the reference model was trained on.

Both piecewise functions (sRGB linearisation and f(t)) are written with "safe" arguments under
``tf.where``: the power/cube-root branch only ever sees values above its threshold. Otherwise the
branch that ``tf.where`` discards would still produce inf/NaN gradients at 0 (d/dt t^(1/3) = inf) or
for slightly negative inputs (negative base of a fractional power), and 0 * inf = NaN would poison the
gradient of the branch that was taken.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf

from tripled_tf.checks import as_float_tensor

# Reference white D65 (X_n, Y_n, Z_n).
D65_WHITE = (0.95047, 1.0, 1.08883)

# Linear sRGB -> XYZ (rows give X, Y, Z).
SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], dtype=np.float64)
# Inverted numerically (not the published rounded inverse) so that lab_to_rgb is the exact inverse of
# rgb_to_lab up to float32 rounding.
XYZ_TO_SRGB = np.linalg.inv(SRGB_TO_XYZ)

# ITU-R BT.601 luma weights (use_lab=False gray target).
LUMA_601 = (0.299, 0.587, 0.114)

_SRGB_THRESHOLD = 0.04045             # on the gamma-encoded value
_SRGB_LINEAR_THRESHOLD = 0.04045 / 12.92  # the same point on the linear value (0.0031308)
_LAB_T_THRESHOLD = 0.008856
_LAB_F_THRESHOLD = float(np.cbrt(_LAB_T_THRESHOLD))  # f(t) at the threshold, for the inverse
_LAB_SLOPE = 7.787
_LAB_OFFSET = 16.0 / 116.0

# Normalisations used by the colour heads.
L_CENTRE = 50.0
L_HALF_RANGE = 50.0
AB_SCALE = 110.0


def _as_colours(x, name: str, channels: int, allow_integer: bool) -> tf.Tensor:
    """Float32 tensor ``[..., channels]``; raises ValueError naming what was expected and given."""
    try:
        t = as_float_tensor(x, name, allow_integer=allow_integer)
    except ValueError as error:
        raise ValueError(f"{error}; colours must be float32 with values in [0, 1] "
                         f"(convert uint8 with image.astype('float32') / 255)") from None
    if t.shape.rank is not None and (t.shape.rank == 0 or t.shape[-1] not in (None, channels)):
        raise ValueError(f"{name}: expected [..., {channels}] (channels last), got shape "
                         f"{t.shape.as_list() if t.shape.rank is not None else '?'}, dtype float32")
    return t


def _mix(channels, matrix) -> list:
    """Applies a 3x3 matrix to a list of three channel tensors (per-pixel matrix-vector product)."""
    c0, c1, c2 = channels
    return [float(row[0]) * c0 + float(row[1]) * c1 + float(row[2]) * c2 for row in matrix]


def _srgb_to_linear(c: tf.Tensor) -> tf.Tensor:
    safe = tf.maximum(c, _SRGB_THRESHOLD)
    return tf.where(c > _SRGB_THRESHOLD, tf.pow((safe + 0.055) / 1.055, 2.4), c / 12.92)


def _linear_to_srgb(c: tf.Tensor) -> tf.Tensor:
    safe = tf.maximum(c, _SRGB_LINEAR_THRESHOLD)
    return tf.where(c > _SRGB_LINEAR_THRESHOLD, 1.055 * tf.pow(safe, 1.0 / 2.4) - 0.055, c * 12.92)


def _lab_f(t: tf.Tensor) -> tf.Tensor:
    safe = tf.maximum(t, _LAB_T_THRESHOLD)
    return tf.where(t > _LAB_T_THRESHOLD, tf.pow(safe, 1.0 / 3.0), _LAB_SLOPE * t + _LAB_OFFSET)


def _lab_f_inverse(f: tf.Tensor) -> tf.Tensor:
    return tf.where(f > _LAB_F_THRESHOLD, f * f * f, (f - _LAB_OFFSET) / _LAB_SLOPE)


def rgb_to_lab(rgb) -> tf.Tensor:
    """Converts sRGB to CIE Lab (D65), with the reference code's constants (docs/method.md 2.7).

    Args:
      rgb: [..., 3] float, gamma-encoded sRGB in [0, 1] (values slightly outside are converted without
        NaNs). Integer (e.g. uint8) input raises ValueError.

    Returns:
      [..., 3] float32 (L, a, b): L in [0, 100], a and b roughly in [-110, 110] for sRGB colours.
      Gradients are finite everywhere, including 0, 1 and the piecewise thresholds.
    """
    rgb = _as_colours(rgb, "rgb", 3, allow_integer=False)
    linear = [_srgb_to_linear(c) for c in tf.unstack(rgb, axis=-1)]
    xyz = _mix(linear, SRGB_TO_XYZ)
    fx, fy, fz = [_lab_f(v / white) for v, white in zip(xyz, D65_WHITE)]
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return tf.stack([lightness, a, b], axis=-1)


def lab_to_rgb(lab) -> tf.Tensor:
    """Inverse of :func:`rgb_to_lab`.

    Args:
      lab: [..., 3] float (L in [0, 100], a, b).

    Returns:
      [..., 3] float32 sRGB, clipped to [0, 1] (Lab colours outside the sRGB gamut are clipped).
    """
    lab = _as_colours(lab, "lab", 3, allow_integer=True)
    lightness, a, b = tf.unstack(lab, axis=-1)
    fy = (lightness + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    xyz = [_lab_f_inverse(f) * white for f, white in zip((fx, fy, fz), D65_WHITE)]
    linear = _mix(xyz, XYZ_TO_SRGB)
    rgb = tf.stack([_linear_to_srgb(c) for c in linear], axis=-1)
    return tf.clip_by_value(rgb, 0.0, 1.0)


def rgb_to_gray(rgb) -> tf.Tensor:
    """ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B (gray target when ``use_lab=False``).

    Args:
      rgb: [..., 3] float sRGB in [0, 1] (the gamma-encoded values are weighted, as in the reference).

    Returns:
      [..., 1] float32 in [0, 1].
    """
    rgb = _as_colours(rgb, "rgb", 3, allow_integer=False)
    r, g, b = tf.unstack(rgb, axis=-1)
    return (LUMA_601[0] * r + LUMA_601[1] * g + LUMA_601[2] * b)[..., None]


def lab_lightness(rgb) -> tf.Tensor:
    """Lab lightness L / 100 of sRGB colours: the D2G target when ``use_lab=True``.

    Args:
      rgb: [..., 3] float sRGB in [0, 1].

    Returns:
      [..., 1] float32 in [0, 1].
    """
    return rgb_to_lab(rgb)[..., :1] / 100.0


def normalize_lab(lab) -> Tuple[tf.Tensor, tf.Tensor]:
    """Normalises Lab for the colour heads: L_n = (L - 50) / 50, ab_n = ab / 110.

    Args:
      lab: [..., 3] float (L in [0, 100], a, b), e.g. from :func:`rgb_to_lab`.

    Returns:
      (l_norm [..., 1] in [-1, 1], ab_norm [..., 2] roughly in [-1, 1]), float32.
    """
    lab = _as_colours(lab, "lab", 3, allow_integer=True)
    l_norm = (lab[..., :1] - L_CENTRE) / L_HALF_RANGE
    ab_norm = lab[..., 1:] / AB_SCALE
    return l_norm, ab_norm


def denormalize_lab(l_norm, ab_norm) -> tf.Tensor:
    """Inverse of :func:`normalize_lab`.

    Args:
      l_norm: [..., 1] float, (L - 50) / 50.
      ab_norm: [..., 2] float, ab / 110 (same leading shape as ``l_norm``).

    Returns:
      [..., 3] float32 Lab (L, a, b).
    """
    l_norm = _as_colours(l_norm, "l_norm", 1, allow_integer=True)
    ab_norm = _as_colours(ab_norm, "ab_norm", 2, allow_integer=True)
    if (l_norm.shape.rank is not None and ab_norm.shape.rank is not None
            and not l_norm.shape[:-1].is_compatible_with(ab_norm.shape[:-1])):
        raise ValueError(f"l_norm {l_norm.shape.as_list()} and ab_norm {ab_norm.shape.as_list()} "
                         f"must have the same leading shape")
    return tf.concat([l_norm * L_HALF_RANGE + L_CENTRE, ab_norm * AB_SCALE], axis=-1)
