"""What every file-based data source (KITTI raw, own video) hands to the tf.data pipeline.

A source turns its own layout into a list of :class:`TripletRecord` — three frame files and the
intrinsics of the native frames — and the pipeline (``tripled_tf.data.pipeline``) does the rest
(decode, resize, augmentation, masks, batching) the same way for every source.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np


class BadInputError(ValueError):
    """A data file that cannot be used: missing, truncated, corrupt, or with missing fields.

    The message always names the file and what is wrong with it.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass(frozen=True)
class TripletRecord:
    """One sample: frames t-1, t, t+1 and the normalised intrinsics of the native frames.

    Attributes:
      prev, target, next: paths of frames t-1, t, t+1 (PNG or JPEG).
      intrinsics: normalised (fx / W, fy / H, cx / W, cy / H) of the native frame, the references'
        convention (KITTI: (0.58, 1.92, 0.5, 0.5)); the pipeline multiplies by the training size.
      name: a human-readable id, e.g. the split line "2011_09_26/2011_09_26_drive_0001_sync 5 l".
      depth_path: optional ground-truth source for the target (e.g. its Velodyne scan), or None.
    """
    prev: str
    target: str
    next: str
    intrinsics: Tuple[float, float, float, float]
    name: str = ""
    depth_path: Optional[str] = None

    @property
    def paths(self) -> Tuple[str, str, str]:
        return (self.prev, self.target, self.next)


def normalized_intrinsics(fx: float, fy: float, cx: float, cy: float, width: int,
                          height: int) -> Tuple[float, float, float, float]:
    """Pixel intrinsics of a width x height image -> (fx / W, fy / H, cx / W, cy / H)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return (float(fx) / width, float(fy) / height, float(cx) / width, float(cy) / height)


def intrinsics_at_size(normalized: Tuple[float, float, float, float], width: int,
                       height: int) -> np.ndarray:
    """[4, 4] float32 pixel K for an image of width x height from normalised intrinsics."""
    fx, fy, cx, cy = normalized
    return np.array([[fx * width, 0, cx * width, 0], [0, fy * height, cy * height, 0],
                     [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)


@dataclasses.dataclass
class SkipReport:
    """Counts what a source skipped (missing neighbours, bad files) so it can be reported, not lost."""
    skipped: List[str] = dataclasses.field(default_factory=list)

    def add(self, what: str) -> None:
        self.skipped.append(what)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 5) -> str:
        if not self.skipped:
            return "nothing skipped"
        head = "; ".join(self.skipped[:limit])
        more = f" (+{len(self.skipped) - limit} more)" if len(self.skipped) > limit else ""
        return f"skipped {len(self.skipped)}: {head}{more}"
