"""Where predicted frames come from, and the intrinsics they are predicted with (no TensorFlow).

:class:`FrameSource` opens one image, a folder of PNG/JPEG images (natural order: ``frame_2`` before
``frame_10``) or a video file OpenCV decodes, and checks it up front (every file of a folder: header
and end marker) so that bad input stops a run before any work is done. :class:`Intrinsics` gives
each frame's K: from ``--fx --fy --cx --cy``, a calibration file
(:mod:`tripled_tf.data.calibration`), or the KITTI-like normalised intrinsics the networks are
trained with (a stand-in, labelled as such).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterator, List, Optional, Sequence

import cv2
import numpy as np

from tripled_tf.conventions import KITTI_NORMALIZED_INTRINSICS
from tripled_tf.data.calibration import Calibration, calibration_from_arguments
from tripled_tf.data.image_io import IMAGE_EXTENSIONS, check_image_file, read_image
from tripled_tf.data.records import BadInputError, intrinsics_at_size
from tripled_tf.data.video import list_frame_files

# A single-image --input may also be one of these (OpenCV decodes them; no cheap structural check).
EXTRA_IMAGE_EXTENSIONS = (".bmp", ".tif", ".tiff", ".webp")


@dataclasses.dataclass
class Frame:
    """One input frame: ``bgr`` [H, W, 3] uint8 as OpenCV decodes it, the output file ``stem``, and
    ``source`` (a file path, or ``<video>#<frame index>``)."""
    stem: str
    source: str
    bgr: np.ndarray


def read_frame(path) -> np.ndarray:
    """A frame file as BGR uint8 [H, W, 3]: a .png / .jpg / .jpeg file must be a whole PNG or JPEG
    (checked before decoding); other extensions (EXTRA_IMAGE_EXTENSIONS) are decoded as OpenCV reads
    them. Raises BadInputError naming the file."""
    return read_image(path, any_format=pathlib.Path(path).suffix.lower() not in IMAGE_EXTENSIONS)


class FrameSource:
    """Frames of an image, a folder of images or a video, opened and checked up front.

    Attributes:
      kind: "image", "folder" or "video".
      path: the input path.
      count: number of frames (a video's count is OpenCV's estimate; None when unknown).
      fps: a video's frame rate (None for images).
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.fps: Optional[float] = None
        self._capture = None
        self._first: Optional[np.ndarray] = None
        self._files: List[pathlib.Path] = []
        self._stems: List[str] = []
        suffix = self.path.suffix.lower()
        if self.path.is_dir():
            self.kind = "folder"
            self._files = list_frame_files(self.path)
            if not self._files:
                raise BadInputError(self.path, "no images in the folder (expected "
                                               f"{', '.join(IMAGE_EXTENSIONS)} files directly in it)")
            for file in self._files:  # header + end marker of every file before any work is done
                check_image_file(file)
            self._stems = _unique_stems(self._files)
            self.count = len(self._files)
        elif self.path.is_file() and suffix in IMAGE_EXTENSIONS + EXTRA_IMAGE_EXTENSIONS:
            self.kind = "image"
            self._first = read_frame(self.path)
            self.count = 1
        elif self.path.is_file():
            self.kind = "video"
            self._capture = cv2.VideoCapture(str(self.path))
            if not self._capture.isOpened():
                raise BadInputError(self.path, "OpenCV cannot open it as a video (unsupported codec / "
                                               "container, or not a video file)")
            ok, frame = self._capture.read()
            if not ok or frame is None:
                self.close()
                raise BadInputError(self.path, "the video has no frames that OpenCV can decode")
            self._first = frame
            fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps if np.isfinite(fps) and fps > 0 else None
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.count = count if count > 0 else None
        else:
            raise BadInputError(self.path, "not found (expected an image, a folder of images or a "
                                           "video file)")

    def __iter__(self) -> Iterator[Frame]:
        if self.kind == "image":
            yield Frame(self.path.stem, str(self.path), self._first)
        elif self.kind == "folder":
            for file, stem in zip(self._files, self._stems):
                yield Frame(stem, str(file), read_frame(file))
        else:
            index, frame = 0, self._first
            while frame is not None:
                yield Frame(f"{self.path.stem}_{index:06d}", f"{self.path}#{index}", frame)
                ok, frame = self._capture.read()
                frame = frame if ok else None
                index += 1
            self.close()

    @property
    def kind_text(self) -> str:
        """"an image", "a folder" or "a video" (for messages)."""
        return {"image": "an image", "folder": "a folder", "video": "a video"}[self.kind]

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def _unique_stems(files: Sequence[pathlib.Path]) -> List[str]:
    # a.png and a.jpg in one folder would otherwise overwrite each other's outputs
    stems = [f.stem for f in files]
    return [f"{f.stem}_{f.suffix[1:].lower()}" if stems.count(f.stem) > 1 else f.stem for f in files]


# ----------------------------------------------------------------------------------------------------
# Intrinsics


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """Where a frame's K comes from: pixel values, a calibration file, or the KITTI default.

    Attributes:
      calibration: the given intrinsics (a :class:`Calibration`; with its own image size, rescaled to
        each frame), or None for the KITTI-like default scaled to each frame.
      source: a description for predictions.json.
      path: the calibration file, named by errors (a calibrated size of another aspect ratio).
    """
    calibration: Optional[Calibration] = None
    source: str = ("default KITTI-like normalised intrinsics (fx = 0.58 W, fy = 1.92 H, cx = 0.5 W, "
                   "cy = 0.5 H of each frame; not your camera's)")
    path: str = ""

    @property
    def is_default(self) -> bool:
        return self.calibration is None

    def matrix(self, width: int, height: int) -> np.ndarray:
        """[3, 3] float64 K in pixels of a width x height frame."""
        if self.calibration is None:
            return intrinsics_at_size(KITTI_NORMALIZED_INTRINSICS, width, height)[:3, :3].astype(np.float64)
        fx, fy, cx, cy = self.calibration.normalized(width, height, self.path or self.source)
        return np.array([[fx * width, 0, cx * width], [0, fy * height, cy * height], [0, 0, 1]],
                        np.float64)


def resolve_intrinsics(fx=None, fy=None, cx=None, cy=None, calib: str = "") -> Intrinsics:
    """Intrinsics from --fx --fy --cx --cy (pixels of the original frames) or --calib, else the default.

    Raises SettingError (half-given or both ways) or BadInputError (a bad calibration file)."""
    calibration = calibration_from_arguments(fx, fy, cx, cy, calib, "calib")
    if calibration is None:
        return Intrinsics()
    if calib:
        return Intrinsics(calibration, f"calibration file {calib}", str(calib))
    return Intrinsics(calibration, f"--fx={fx:g} --fy={fy:g} --cx={cx:g} --cy={cy:g} (pixels of the "
                                   "original frames)")
