"""Frame files as the input pipeline reads them: decode, check a triplet's sizes, count skips, resize.

Decoding (files). Frames are decoded with OpenCV inside ``tf.numpy_function`` (cv2 releases the GIL, so
parallel map calls scale). Before decoding, the PNG IEND / JPEG EOI trailer is checked, because a
truncated JPEG otherwise decodes "successfully" with grey fill. A missing, truncated or corrupt file
raises :class:`~tripled_tf.data.records.BadInputError` naming the file (missing files when the dataset is
built; unreadable ones while iterating, where TensorFlow wraps the error but keeps the message), or with
``skip_bad_frames=True`` the sample is dropped and counted by cause in a
:class:`~tripled_tf.data.records.SkipReport` (the first few also printed as ``warning:`` lines as they are
met); when every sample turns out bad the stream raises BadInputError instead of filtering forever.
The three frames of a sample must have one size (a frame of another size is a bad sample too).

Resizing (records): default ``"tf_lanczos3"`` (tf.image.resize lanczos3 with antialias on the float
frame), measured on a KITTI frame at 640x192 / 1024x320 within 0.26 / 255 mean absolute difference of the
references' PIL LANCZOS, against 1.1-1.3 / 255 for ``"cv2_area"`` (OpenCV INTER_AREA on the uint8 frame)
and ``"tf_area"``, 1.3-1.7 / 255 for ``"tf_bilinear"`` (antialiased). It costs 20-30 % more time than
the area filters, which does not matter: the pipeline still delivers > 10x what a train step consumes
(``tools/bench_data.py``).
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Optional, Sequence

import cv2
import numpy as np
import tensorflow as tf

from tripled_tf.data.image_io import read_image
from tripled_tf.data.records import SIZE_MISMATCH, UNREADABLE_FILE, BadInputError, SkipReport, TripletRecord

if TYPE_CHECKING:  # the pipeline imports this module
    from tripled_tf.data.pipeline import PipelineConfig

RESIZE_METHODS = ("tf_lanczos3", "tf_area", "tf_bilinear", "cv2_area")
_WARNED_SKIPS = 10  # skipped samples printed as they are met; every one is counted in the SkipReport


def load_frame(path: str) -> np.ndarray:
    """Reads one frame file (PNG or JPEG) as RGB uint8 [h, w, 3] at its native size.

    Raises:
      BadInputError naming the file: missing, empty, truncated or undecodable (``image_io.read_image``).
    """
    return cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB)


class TripletLoader:
    """Python side of the decode step (runs inside tf.numpy_function, several calls in parallel).

    With ``skip_bad_frames`` a bad sample is counted in the report the first time it is met and
    replaced by a placeholder the dataset filters out. Once every sample has been found bad the
    stream could never yield a batch (the filter would spin over the repeated stream forever), so
    the loader raises instead.
    """

    def __init__(self, records: Sequence[TripletRecord], config: PipelineConfig, report: SkipReport):
        self.records = records
        self.config = config
        self.report = report
        self._reported = set()
        self._lock = threading.Lock()

    def _skip(self, index: int, error: BadInputError, cause: str) -> None:
        with self._lock:  # count each bad sample once, not once per epoch
            if index in self._reported:
                return
            self._reported.add(index)
            every_sample_bad = len(self._reported) == len(self.records)
        message = f"{self.records[index].name or index}: {error}"
        if self.report.add(message, cause) and len(self.report) <= _WARNED_SKIPS:
            more = (" (further skips are counted, not printed)" if len(self.report) == _WARNED_SKIPS
                    else "")
            print(f"warning: skipped {message}{more}", flush=True)
        if every_sample_bad:
            raise BadInputError(common_folder(self.records),
                                f"none of the {len(self.records)} samples can be used, there is nothing "
                                f"to train on ({self.report.summary()})")

    @staticmethod
    def _odd_size_frame(frames, paths) -> Optional[BadInputError]:
        """A BadInputError naming the frame of a triplet whose size differs from the others, or None.
        The three frames of a sample must show one camera at one size: a frame of another size would
        be stretched to the training size silently and break the warp."""
        sizes = [f.shape[:2] for f in frames]
        if sizes[0] == sizes[1] == sizes[2]:
            return None
        odd = 0 if sizes[1] == sizes[2] else (1 if sizes[0] == sizes[2] else 2)
        other = sizes[(odd + 1) % 3]
        return BadInputError(paths[odd], f"frame is {sizes[odd][1]}x{sizes[odd][0]} but the other "
                                         f"frame(s) of its triplet are {other[1]}x{other[0]}")

    def __call__(self, index):
        index = int(index)
        size = (self.config.height, self.config.width)
        record = self.records[index]
        # In FRAME_KEYS order (target, source_prev, source_next), not the record's time order.
        paths = (record.target, record.prev, record.next)
        try:
            frames = [load_frame(path) for path in paths]
            cause = SIZE_MISMATCH
            error = self._odd_size_frame(frames, paths)
        except BadInputError as decode_error:
            cause, error = UNREADABLE_FILE, decode_error
        if error is not None:
            if not self.config.skip_bad_frames:
                raise error
            self._skip(index, error, cause)
            shape = (1, 1, 3) if self.config.resize_method != "cv2_area" else (*size, 3)
            return (*[np.zeros(shape, np.uint8)] * 3, np.bool_(False))
        if self.config.resize_method == "cv2_area":
            frames = [f if f.shape[:2] == size else
                      cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames]
        return (*frames, np.bool_(True))


def common_folder(records: Sequence[TripletRecord]) -> str:
    """The deepest folder holding every frame of ``records`` (what an error about all of them names)."""
    try:
        return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for r in records for p in r.paths])
    except ValueError:  # paths on different drives
        return os.path.dirname(records[0].target)


def load_resized_frame(path: str, config: PipelineConfig) -> np.ndarray:
    """One frame file as the pipeline delivers it (decode, resize, [0, 1]): [H, W, 3] float32.

    For evaluation-time loading, so held-out frames are resized exactly as training frames are.
    """
    frame = load_frame(path)
    if config.resize_method == "cv2_area":
        frame = cv2.resize(frame, (config.width, config.height), interpolation=cv2.INTER_AREA)
        return frame.astype(np.float32) / 255.0
    return resize_frame(tf.constant(frame), config).numpy()


def resize_frame(frame: tf.Tensor, config: PipelineConfig) -> tf.Tensor:
    """A decoded uint8 frame ``[h, w, 3]`` resized by ``config.resize_method`` (a TensorFlow one) to
    ``[config.height, config.width, 3]`` float32 in [0, 1]."""
    method = {"tf_area": "area", "tf_lanczos3": "lanczos3", "tf_bilinear": "bilinear"}[config.resize_method]
    resized = tf.image.resize(tf.cast(frame, tf.float32) / 255.0, (config.height, config.width),
                              method=method, antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)
