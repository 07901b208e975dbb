"""What prediction writes per frame: .npy arrays and .ply point clouds (atomically, through
:mod:`tripled_tf.atomic_files`) and the side-by-side video (frame | colour depth), written under a
temporary name and renamed when complete (numpy + OpenCV, no TensorFlow)."""
from __future__ import annotations

import os
import pathlib
from typing import Optional

import cv2
import numpy as np

from tripled_tf.atomic_files import atomic_write
from tripled_tf.data.records import BadInputError


def save_npy(path, array: np.ndarray) -> str:
    """np.save, atomically (np.save on a handle: given a path it would append a second .npy)."""
    return atomic_write(path, lambda handle: np.save(handle, array))


def write_ply(path, points: np.ndarray, colors: np.ndarray, binary: bool = True,
              comment: str = "") -> str:
    """A coloured point cloud as PLY (one ``x y z red green blue`` vertex per point), atomically.

    Args:
      points: [N, 3] coordinates (written as float32).
      colors: [N, 3] uint8 RGB.
      binary: binary_little_endian (compact, fast) or ascii.
    """
    points = np.asarray(points, np.float32).reshape(-1, 3)
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    if len(points) != len(colors):
        raise ValueError(f"{len(points)} points but {len(colors)} colours")
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
    header += [f"comment {line}" for line in comment.splitlines() if line]
    header += [f"element vertex {len(points)}", "property float x", "property float y",
               "property float z", "property uchar red", "property uchar green", "property uchar blue",
               "end_header"]
    head = ("\n".join(header) + "\n").encode("ascii")

    def write(handle):
        handle.write(head)
        if binary:
            vertices = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                    ("red", "u1"), ("green", "u1"), ("blue", "u1")])
            vertices["x"], vertices["y"], vertices["z"] = points.T
            vertices["red"], vertices["green"], vertices["blue"] = colors.T
            handle.write(vertices.tobytes())
        else:
            table = np.concatenate([points.astype(np.float64), colors.astype(np.float64)], axis=1)
            np.savetxt(handle, table, fmt=["%.7g"] * 3 + ["%d"] * 3)

    return atomic_write(path, write)


def side_by_side_frame(bgr: np.ndarray, colour_rgb: np.ndarray) -> np.ndarray:
    """One frame of the side-by-side video: the BGR frame [H, W, 3] and the RGB colour depth
    [H, W, 3] next to each other, [H (+1 if odd), 2W, 3] BGR uint8."""
    frame = np.concatenate([bgr, cv2.cvtColor(colour_rgb, cv2.COLOR_RGB2BGR)], axis=1)
    if frame.shape[0] % 2:  # MPEG-4 needs even sides; the width is 2W already
        frame = np.concatenate([frame, np.zeros_like(frame[:1])], axis=0)
    return frame


class SideBySideVideo:
    """The side-by-side video, written under a temporary name and renamed when complete."""

    def __init__(self, path: pathlib.Path, fps: float):
        self.path, self.fps = path, fps
        self.tmp = path.with_name(path.stem + ".partial" + path.suffix)  # OpenCV picks the container
        self.writer = None                                               # by the extension

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                self.writer = None
                raise BadInputError(self.path, "OpenCV cannot write an mp4v video here (no MPEG-4 "
                                               "encoder in this OpenCV build?); use --noside_by_side")
        self.writer.write(frame)

    def finish(self) -> Optional[str]:
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)
        return str(self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.tmp.exists():
            self.tmp.unlink()
