"""Depth for a source of frames, written to a folder: the library behind ``python -m tripled_tf.predict``.

:func:`predict_source` runs a model (:func:`tripled_tf.inference.load_depth_fn`) over a
:class:`~tripled_tf.frame_sources.FrameSource` in batches and writes, per frame, the colour depth
PNG, the disparity and depth arrays, optionally a point cloud (:mod:`tripled_tf.depth_outputs`) and
metric scale from the camera height (:mod:`tripled_tf.ground_plane`), then ``predictions.json``
(last, only when every frame succeeded). The files and their meaning: :mod:`tripled_tf.predict`.
"""
from __future__ import annotations

import pathlib
import sys
import time
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from tripled_tf import checkpoint as run_folder  # numpy only; no TensorFlow
from tripled_tf import visualize
from tripled_tf.conventions import STRIDE, is_stride_multiple, nearest_stride_multiple
from tripled_tf.data.records import BadInputError
from tripled_tf.data.video import missing_video_frames
from tripled_tf.depth_outputs import SideBySideVideo, save_npy, side_by_side_frame, write_ply
from tripled_tf.frame_sources import FrameSource, Intrinsics
from tripled_tf.ground_plane import (SCALE_ASSUMPTION, GroundPlaneError, backproject_depth,
                                     scale_from_camera_height)
from tripled_tf.inference import DepthFunction, predict_frames

PREDICTIONS_FILE = "predictions.json"


class PredictError(ValueError):
    """A request that cannot be carried out (bad flag combination, bad input size)."""


def check_input_size(height: int, width: int) -> Tuple[int, int]:
    """(height, width) if both are positive multiples of 32, else PredictError saying what to use."""
    if not is_stride_multiple(height, width):
        raise PredictError(f"--height={height} --width={width}: the model's input size must be positive "
                           f"multiples of {STRIDE} (the encoder's stride); e.g. "
                           f"--height={nearest_stride_multiple(height)} "
                           f"--width={nearest_stride_multiple(width)}")
    return int(height), int(width)


class _Progress:
    """A one-line frame counter on stderr: redrawn in place on a terminal, else a line every 10 s."""

    def __init__(self, total: Optional[int], enabled: bool = True, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.last = time.monotonic()
        self.drawn = False

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if not self.enabled or not (self.tty or now - self.last >= 10.0):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        text = f"predict: {self.done}" + (f"/{self.total}" if self.total else "") + " frames"
        text += f"  {rate:.1f} frames/s"
        if self.total and self.total > self.done:
            text += f"  ETA {(self.total - self.done) / max(rate, 1e-9):.0f}s"
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()
        self.drawn = self.tty

    def close(self) -> None:
        if self.drawn:  # end the redrawn line so a following message starts on its own line
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def predict_source(source: FrameSource, depth_fn: DepthFunction, output_dir,
                   input_size: Optional[Tuple[int, int]] = None,
                   intrinsics: Optional[Intrinsics] = None, ply: bool = False,
                   ply_binary: bool = True, camera_height: Optional[float] = None,
                   side_by_side: bool = False, batch_size: int = 4, progress: bool = True) -> Dict:
    """Predicts every frame of ``source`` and writes the outputs (see the module docstring).

    Args:
      source: the frames (:class:`FrameSource`).
      depth_fn: the model (:func:`load_depth_fn`).
      output_dir: folder for the outputs (created).
      input_size: (height, width) the frames are resized to for the model, multiples of 32; default
        ``depth_fn.input_size``.
      intrinsics: K per frame for --ply / --camera_height; default the KITTI-like stand-in.
      ply: also write ``<stem>.ply`` (binary little-endian, or ASCII with ``ply_binary=False``).
      camera_height: metres above a flat ground in the lower image: metric scale per frame (see
        :func:`scale_from_camera_height` for the assumption); None = relative depth.
      side_by_side: for a video, also write ``<video stem>_depth.mp4`` (frame | colour depth).
    Returns:
      The summary: frames, output_dir, scale, scale_factor (the median over frames), predictions
      (path of predictions.json), side_by_side (path or None), seconds.
    Raises:
      BadInputError naming the file (unreadable frame, no ground plane in a frame with
      camera_height), PredictError (bad size / options). predictions.json is then not written.
    """
    start = time.monotonic()
    input_size = check_input_size(*(input_size or depth_fn.input_size))
    if input_size != tuple(depth_fn.input_size) and not depth_fn.any_size:
        raise PredictError(f"{depth_fn.description}: this model only takes {depth_fn.input_size[0]}x"
                           f"{depth_fn.input_size[1]} input; drop --height/--width")
    if side_by_side and source.kind != "video":
        raise PredictError(f"--side_by_side needs a video --input; {source.path} is {source.kind_text}")
    if camera_height is not None and not (np.isfinite(camera_height) and camera_height > 0):
        raise PredictError(f"--camera_height must be a positive number of metres, got {camera_height}")
    intrinsics = intrinsics or Intrinsics()
    output_dir = pathlib.Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise BadInputError(output_dir, "--output_dir exists and is not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    # A previous run's index must not vouch for a mix of its files and this run's.
    (output_dir / PREDICTIONS_FILE).unlink(missing_ok=True)
    metric = camera_height is not None
    units = "metres" if metric else "relative"

    video = (SideBySideVideo(output_dir / f"{source.path.stem}_depth.mp4", source.fps or 10.0)
             if side_by_side else None)
    bar = _Progress(source.count, enabled=progress and source.kind != "image")
    records: List[Dict] = []
    try:
        frames = iter(source)
        while True:
            chunk = [frame for _, frame in zip(range(max(1, batch_size)), frames)]
            if not chunk:
                break
            maps = predict_frames(depth_fn, [cv2.cvtColor(f.bgr, cv2.COLOR_BGR2RGB) for f in chunk],
                                  input_size)
            for frame, (disp_full, depth) in zip(chunk, maps):
                height, width = frame.bgr.shape[:2]
                K = intrinsics.matrix(width, height)
                record = {"source": frame.source, "stem": frame.stem, "size": [height, width],
                          "intrinsics": {k: float(K[i, j]) for k, (i, j) in
                                         (("fx", (0, 0)), ("fy", (1, 1)), ("cx", (0, 2)), ("cy", (1, 2)))},
                          "scale_factor": 1.0}
                if metric:
                    try:
                        plane = scale_from_camera_height(depth, K, camera_height)
                    except GroundPlaneError as error:
                        raise BadInputError(frame.source, f"--camera_height: no ground plane: {error} (it "
                                                          "assumes a flat road in the bottom third of the "
                                                          "image and a roughly level camera)") from None
                    depth = depth * np.float32(plane.scale)
                    record["scale_factor"] = plane.scale
                    record["ground_plane"] = plane.as_dict()
                colour = visualize.colorize_disparity(disp_full)
                files = {"depth_png": f"{frame.stem}_depth.png",
                         "sigmoid_npy": f"{frame.stem}_sigmoid.npy",
                         "depth_npy": f"{frame.stem}_depth.npy"}
                visualize.write_png(output_dir / files["depth_png"], colour)
                save_npy(output_dir / files["sigmoid_npy"], disp_full.astype(np.float32))
                save_npy(output_dir / files["depth_npy"], depth)
                if ply:
                    files["ply"] = f"{frame.stem}.ply"
                    rgb = cv2.cvtColor(frame.bgr, cv2.COLOR_BGR2RGB)
                    write_ply(output_dir / files["ply"], backproject_depth(depth, K).reshape(-1, 3),
                              rgb.reshape(-1, 3), binary=ply_binary,
                              comment=f"tripled_tf depth of {frame.source}\nunits: {units}")
                if video is not None:
                    video.write(side_by_side_frame(frame.bgr, colour))
                record["files"] = files
                record.update(depth_min=float(depth.min()), depth_median=float(np.median(depth)),
                              depth_max=float(depth.max()))
                records.append(record)
                bar.update()
        video_path = video.finish() if video is not None else None
    except BaseException:
        if video is not None:
            video.abort()
        raise
    finally:
        bar.close()
        source.close()

    # A truncated video ends early without an error from OpenCV: say so rather than pass it as whole.
    missing = missing_video_frames(len(records), source.count or 0) if source.kind == "video" else 0
    if missing:
        print(f"warning: {source.path}: decoded {len(records)} of the {source.count} frames the video "
              f"declares (truncated or corrupt); the other {missing} have no output", file=sys.stderr)
    scale_factor = float(np.median([r["scale_factor"] for r in records]))
    scale = (f"metric (camera height {camera_height:g} m, plane fit per frame: RANSAC + least squares on "
             "the bottom third, centre half of the image)" if metric else "relative")
    uses = (["ply"] if ply else []) + (["camera_height"] if metric else [])
    index = {
        "input": str(source.path), "kind": source.kind, "checkpoint": depth_fn.description,
        "model_input_size": list(input_size), "min_depth": depth_fn.min_depth,
        "max_depth": depth_fn.max_depth, "scale": scale, "scale_factor": scale_factor,
        "units": units if metric else "relative (monocular depth: correct up to one unknown factor per "
                                      "frame; not metres)",
        "scale_assumption": SCALE_ASSUMPTION if metric else None,
        "intrinsics": {"source": intrinsics.source, "used_for": uses},
        "sigmoid_npy": "the network's sigmoid output σ in [0, 1]; depth = scale_factor / (1/max_depth + "
                    "(1/min_depth - 1/max_depth)·σ)",
        "side_by_side": pathlib.Path(video_path).name if video_path else None,
        "num_frames": len(records), "missing_frames": missing, "frames": records,
    }
    predictions = run_folder.write_json(output_dir / PREDICTIONS_FILE, index)
    return {"frames": len(records), "missing_frames": missing, "output_dir": str(output_dir),
            "input": str(source.path),
            "kind": source.kind, "scale": scale, "scale_factor": scale_factor,
            "intrinsics": intrinsics.source if uses else None, "predictions": predictions,
            "side_by_side": video_path, "seconds": round(time.monotonic() - start, 3)}
