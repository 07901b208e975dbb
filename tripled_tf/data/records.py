"""What every file-based data source (KITTI raw, own video) hands to the tf.data pipeline.

A source turns its own layout into a list of :class:`TripletRecord` — three frame files and the
intrinsics of the native frames — and the pipeline (``tripled_tf.data.pipeline``) does the rest
(decode, resize, augmentation, masks, batching) the same way for every source.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np


class BadInputError(ValueError):
    """A data file that cannot be used: missing, truncated, corrupt, or with missing fields.

    The message always names the file and what is wrong with it.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def unreadable(path, what: str, error: Exception) -> BadInputError:
    """The one wording for a file that cannot be read: ``"<path>: cannot read <what>: <reason>"``
    (the OS's reason, e.g. "No such file or directory", when there is one). Raise it ``from None``."""
    reason = getattr(error, "strerror", None) or error
    return BadInputError(path, f"cannot read {what}: {reason}")


class SettingError(ValueError):
    """A setting that cannot work as given (no intrinsics for a video, fewer samples than one batch,
    a batch that does not split over the replicas, a missing optional package). The message names
    the flag to change; entry points print it as one line."""


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


# Causes of a skip, as counted in SkipReport.by_cause() (console, result.json).
MISSING_NEIGHBOUR = "missing neighbour frame"
MISSING_FILE = "missing file"
UNREADABLE_FILE = "unreadable file"
SIZE_MISMATCH = "frame size mismatch"
STATIC_FRAME = "static frame"
BAD_CALIBRATION = "bad calibration"
BAD_LIDAR = "bad LiDAR scan"
TRUNCATED_VIDEO = "truncated video"


@dataclasses.dataclass
class SkipReport:
    """Counts what a source skipped (missing neighbours, bad files), by cause, so it can be reported,
    not lost. Thread-safe (the pipeline's decode calls add to it in parallel); a sample added again
    (met in a later epoch, or by a second dataset over the same records) is counted once."""
    skipped: List[str] = dataclasses.field(default_factory=list)
    causes: List[str] = dataclasses.field(default_factory=list)  # the cause of each entry of skipped
    _seen: set = dataclasses.field(default_factory=set, repr=False, compare=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, what: str, cause: str = UNREADABLE_FILE) -> bool:
        """Counts ``what`` (a message naming the sample and the file); False if it was counted before."""
        with self._lock:
            if what in self._seen:
                return False
            self._seen.add(what)
            self.skipped.append(what)
            self.causes.append(cause)
            return True

    def __len__(self) -> int:
        return len(self.skipped)

    def by_cause(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for cause in self.causes:
            counts[cause] = counts.get(cause, 0) + 1
        return counts

    def as_dict(self) -> Dict:
        """{"total": n, "by_cause": {cause: n}, "first": [up to 5 messages]} (for result.json)."""
        return {"total": len(self), "by_cause": self.by_cause(), "first": self.skipped[:5]}

    def summary(self, limit: int = 5) -> str:
        if not self.skipped:
            return "nothing skipped"
        causes = ", ".join(f"{count} {cause}" for cause, count in self.by_cause().items())
        head = "; ".join(self.skipped[:limit])
        more = f" (+{len(self.skipped) - limit} more)" if len(self.skipped) > limit else ""
        return f"skipped {len(self.skipped)} [{causes}]: {head}{more}"
