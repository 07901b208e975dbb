"""Numbers the whole package agrees on, importable without TensorFlow (command lines check their
flags with them before TensorFlow loads; models, data and serving share them).

* :data:`STRIDE`: the depth encoder's total stride (five halvings, 2^5). The decoders upsample the
  deepest features back level by level and concatenate them with the encoder's skip features, which
  only line up when the input height and width are multiples of it.
* :data:`KITTI_NORMALIZED_INTRINSICS`: the normalised KITTI intrinsics used by Monodepth2 / FeatDepth
  / TripleD, (fx, fy, cx, cy) as fractions of the image width / height. They describe the rectified
  KITTI colour cameras well enough for training, and stand in where no calibration is given.
"""
from __future__ import annotations

STRIDE = 32
KITTI_NORMALIZED_INTRINSICS = (0.58, 1.92, 0.5, 0.5)


def is_stride_multiple(height: int, width: int) -> bool:
    """Whether ``height`` and ``width`` are both positive multiples of :data:`STRIDE`."""
    return height > 0 and width > 0 and height % STRIDE == 0 and width % STRIDE == 0


def nearest_stride_multiple(size: float) -> int:
    """The multiple of :data:`STRIDE` nearest to ``size`` (at least STRIDE): a suggestion for errors."""
    return max(STRIDE, int(round(size / STRIDE)) * STRIDE)
