"""Image resampling in numpy, equal to ``tf.image.resize`` (no TensorFlow needed).

The edge runtime must prepare frames exactly as the training pipeline did, or the network sees
different pixels on the device than it was trained on. The pipeline resizes with
``tf.image.resize(method="lanczos3", antialias=True)`` and the evaluation upsamples the disparity
bilinearly with half-pixel centres; both are separable filters whose weights TensorFlow computes in
``ScaleAndTranslate`` (``scale_and_translate_op.cc``). This module computes the same weights as dense
``[out, in]`` matrices, so a resize is two matrix products (fast in numpy's BLAS, no Python loop over
pixels), and the result matches TensorFlow to float rounding (tests/test_resample.py checks it).

Per output sample x (half-pixel centres): sample = (x + 0.5) · in / out; with antialiasing and
downscaling the kernel is stretched by in / out; taps j in [ceil(sample - r - 0.5), floor(sample + r -
0.5)] clipped to the image, weight k((j + 0.5 - sample) / stretch), normalised to sum 1. Dropping
out-of-image taps and renormalising equals clamping to the edge for the bilinear kernel.
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np

KERNELS = ("lanczos3", "bilinear")


def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    out = 3.0 * np.sin(np.pi * x) * np.sin(np.pi * x / 3.0) / np.maximum(np.pi * np.pi * x * x, 1e-30)
    out = np.where(x <= 1e-3, 1.0, out)  # the sinc limit at 0, as TensorFlow special-cases it
    return np.where(x > 3.0, 0.0, out)


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


_KERNEL_FUNCTIONS = {"lanczos3": (_lanczos3, 3.0), "bilinear": (_triangle, 1.0)}


@functools.lru_cache(maxsize=32)
def resample_matrix(in_size: int, out_size: int, kernel: str = "bilinear",
                    antialias: bool = True) -> np.ndarray:
    """``[out_size, in_size]`` float32 weights W with ``out = W @ in`` along one axis.

    Args:
      in_size, out_size: sample counts (> 0).
      kernel: "lanczos3" or "bilinear" (triangle).
      antialias: stretch the kernel when downscaling (``tf.image.resize(antialias=True)``).
    """
    if kernel not in _KERNEL_FUNCTIONS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    function, radius = _KERNEL_FUNCTIONS[kernel]
    inv_scale = in_size / out_size
    stretch = max(inv_scale, 1.0) if antialias else 1.0
    weights = np.zeros((out_size, in_size), np.float64)
    for x in range(out_size):
        sample = (x + 0.5) * inv_scale
        start = min(max(math.ceil(sample - radius * stretch - 0.5), 0), in_size - 1)
        stop = min(max(math.floor(sample + radius * stretch - 0.5), 0), in_size - 1) + 1
        taps = np.arange(start, stop)
        row = function((taps + 0.5 - sample) / stretch)
        total = row.sum()
        weights[x, start:stop] = row / total if abs(total) > 1e-30 else row
    return weights.astype(np.float32)


def resize(image: np.ndarray, size: Tuple[int, int], kernel: str = "bilinear",
           antialias: bool = True) -> np.ndarray:
    """Resizes ``[H, W]`` or ``[H, W, C]`` float32 to ``size`` = (height, width), like
    ``tf.image.resize(image, size, method=kernel, antialias=antialias)`` (no clipping)."""
    image = np.asarray(image, np.float32)
    if image.ndim not in (2, 3):
        raise ValueError(f"image: expected [H, W] or [H, W, C], got shape {list(image.shape)}")
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image.copy()
    rows = resample_matrix(image.shape[0], height, kernel, antialias)
    cols = resample_matrix(image.shape[1], width, kernel, antialias)
    out = np.tensordot(rows, image, axes=([1], [0]))              # [h, W, (C)]
    out = np.tensordot(cols, out, axes=([1], [1]))                # [w, h, (C)]
    return np.ascontiguousarray(np.swapaxes(out, 0, 1))


def prepare_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 RGB frame -> ``[h, w, 3]`` float32 in [0, 1] at the network's input size,
    exactly as the training pipeline prepares frames (/255, lanczos3 with antialiasing, clip)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected an [H, W, 3] RGB image, got shape {list(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 RGB (0..255), got {image.dtype}")
    resized = resize(image.astype(np.float32) / 255.0, size, "lanczos3", antialias=True)
    return np.clip(resized, 0.0, 1.0)
