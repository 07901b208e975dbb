"""Input validation shared by the public functions.

Every public function of the numerical core accepts ``tf.Tensor`` or ``numpy`` input. These helpers
convert to float32 tensors and turn the usual mistakes (NCHW layout, uint8 images, a 3x3 K where a
4x4 one is expected) into a ``ValueError`` that says what was expected and what was given, instead of
a TensorFlow stack trace from deep inside a kernel.

Checks use the static shape only, so they cost nothing inside a ``tf.function`` and silently accept
dimensions that are unknown at trace time.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf


def _describe(x) -> str:
    dtype = getattr(x, "dtype", type(x).__name__)
    dtype = getattr(dtype, "name", dtype)
    shape = getattr(x, "shape", None)
    shape = list(shape) if shape is not None else "?"
    return f"shape {shape}, dtype {dtype}"


def _is_floating(x) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return True  # python scalars / lists: let tf decide
    if isinstance(dtype, tf.DType):
        return dtype.is_floating
    return np.issubdtype(np.dtype(dtype), np.floating)


def as_float_tensor(x, name: str, rank: Optional[int] = None,
                    shape: Optional[Sequence[Optional[int]]] = None,
                    allow_integer: bool = True) -> tf.Tensor:
    """Returns ``x`` as a float32 tensor after checking its rank and known dimensions.

    Args:
      x: tensor-like.
      name: argument name used in the error message.
      rank: required rank, or None.
      shape: required shape; ``None`` entries match anything (also checked only where the static
        dimension of ``x`` is known).
      allow_integer: if False, integer / bool input raises instead of being cast.
    """
    if not allow_integer and not _is_floating(x):
        raise ValueError(f"{name}: expected a floating-point tensor, got {_describe(x)}")
    if isinstance(x, (tf.Tensor, tf.Variable)):
        t = tf.cast(x, tf.float32) if x.dtype != tf.float32 else tf.convert_to_tensor(x)
    else:
        t = tf.convert_to_tensor(np.asarray(x, dtype=np.float32) if not tf.is_tensor(x) else x)
        if t.dtype != tf.float32:
            t = tf.cast(t, tf.float32)
    if shape is not None:
        rank = len(shape)
    if rank is not None and t.shape.rank is not None and t.shape.rank != rank:
        expected = f"{list(shape)}" if shape is not None else f"rank {rank}"
        raise ValueError(f"{name}: expected {expected}, got {_describe(x)}")
    if shape is not None and t.shape.rank is not None:
        for axis, (want, have) in enumerate(zip(shape, t.shape)):
            if want is not None and have is not None and want != have:
                raise ValueError(f"{name}: expected shape {_fmt_shape(shape)}, got {_describe(x)} "
                                 f"(axis {axis} is {have}, expected {want})")
    return t


def _fmt_shape(shape) -> str:
    return "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


def as_images(x, name: str = "image", channels: Optional[int] = None) -> tf.Tensor:
    """Validates an NHWC float image batch ``[B, H, W, C]`` with values in [0, 1].

    uint8 / integer images are refused (the library works on floats in [0, 1]: divide by 255 first);
    an input that looks channels-first is refused with a hint.
    """
    if not _is_floating(x):
        raise ValueError(f"{name}: expected float32 NHWC images with values in [0, 1], got "
                         f"{_describe(x)}; convert with image.astype('float32') / 255")
    t = as_float_tensor(x, name)
    if t.shape.rank is not None and t.shape.rank != 4:
        raise ValueError(f"{name}: expected NHWC [B, H, W, C], got {_describe(x)}")
    if t.shape.rank == 4:
        c, second = t.shape[-1], t.shape[1]
        if channels is not None and c is not None and c != channels:
            hint = (" (it looks channels-first/NCHW; this library uses NHWC: transpose to "
                    "[B, H, W, C])" if second == channels else "")
            raise ValueError(f"{name}: expected NHWC [B, H, W, {channels}], got {_describe(x)}{hint}")
        if channels is None and c is not None and second is not None and c > 4 and second in (1, 3):
            raise ValueError(f"{name}: got {_describe(x)}, which looks channels-first (NCHW); this "
                             f"library uses NHWC [B, H, W, C]")
    return t


def as_depth(x, name: str = "depth") -> tf.Tensor:
    """Validates a per-pixel map ``[B, H, W, 1]`` (depth, disparity)."""
    t = as_float_tensor(x, name)
    if t.shape.rank is not None and (t.shape.rank != 4 or (t.shape[-1] not in (None, 1))):
        raise ValueError(f"{name}: expected [B, H, W, 1], got {_describe(x)}")
    return t


def as_matrices(x, name: str, size: int = 4) -> tf.Tensor:
    """Validates a batch of square matrices ``[B, size, size]``."""
    t = as_float_tensor(x, name)
    if t.shape.rank is not None and (t.shape.rank != 3 or any(
            d is not None and d != size for d in t.shape[1:])):
        hint = ""
        if t.shape.rank == 3 and tuple(t.shape[1:]) == (3, 3) and size == 4:
            hint = " (a 3x3 intrinsics matrix: give the 4x4 of geometry.intrinsics_matrix)"
        elif t.shape.rank == 2:
            hint = " (add a batch axis)"
        raise ValueError(f"{name}: expected [B, {size}, {size}], got {_describe(x)}{hint}")
    return t


def as_vectors(x, name: str, size: int = 3) -> tf.Tensor:
    """Validates a batch of vectors ``[B, size]``; ``[B, 1, size]`` (Monodepth2's layout) is squeezed."""
    t = as_float_tensor(x, name)
    if t.shape.rank == 3 and t.shape[1] == 1:
        t = t[:, 0]
    if t.shape.rank is not None and (t.shape.rank != 2 or t.shape[-1] not in (None, size)):
        raise ValueError(f"{name}: expected [B, {size}], got {_describe(x)}")
    return t


def same_spatial_size(a: tf.Tensor, b: tf.Tensor, name_a: str, name_b: str) -> None:
    """Raises if two NHWC tensors have known, different batch/height/width."""
    if a.shape.rank == 4 and b.shape.rank == 4:
        for axis in range(3):
            da, db = a.shape[axis], b.shape[axis]
            if da is not None and db is not None and da != db:
                raise ValueError(f"{name_a} {list(a.shape)} and {name_b} {list(b.shape)} must have the "
                                 f"same batch, height and width")
