"""Depth for your own images and videos.

    python -m tripled_tf.predict --checkpoint=runs/demo --input=PATH --output_dir=DIR [--flag=value ...]

``--input`` is one image, a folder of PNG/JPEG images (natural order: ``frame_2`` before ``frame_10``)
or a video file OpenCV decodes (mp4, avi, mkv, ...). ``--checkpoint`` is a training run folder
(``config.json`` + ``checkpoints/``), an exported SavedModel or a .tflite file. Each frame is resized to the model's input size (the training size
unless ``--height/--width`` say otherwise; multiples of 32), predicted, and the result resized back to
the frame's ORIGINAL size. Per frame, ``--output_dir`` receives

    <stem>_depth.png   the disparity in the magma colour map (near = bright; robust 95th-percentile
                       normalisation per frame)
    <stem>_sigmoid.npy float32 [H, W]: the network's sigmoid output σ in [0, 1], scale-free
    <stem>_depth.npy   float32 [H, W]: depth = scale / (1/max_depth + (1/min_depth - 1/max_depth)·σ)
    <stem>.ply         with --ply: a coloured point cloud (x y z red green blue, one vertex per pixel)

and, for a video, ``<video stem>_depth.mp4`` (frame | colour depth side by side; ``--noside_by_side``
to skip it). ``predictions.json`` lists every frame, its files, the scale and the intrinsics used; it
is written last, only when every frame succeeded, so a folder without it is an interrupted or failed
run. Every other file is written under a temporary name and renamed, so no file is ever half-written.
The last line on stdout is one JSON object summarising the run.

Scale. A monocular network predicts depth up to an unknown factor: without ``--camera_height`` the
outputs are RELATIVE (the network's own units, labelled ``"scale": "relative"``). With
``--camera_height=METRES`` each frame is given metric scale from the ground plane, ASSUMING the camera
looks at a flat road (or floor) that fills the bottom third of the image around its centre, and is
roughly level (its pitch and roll within ±30°; a dash-cam or a car-mounted camera). The pixels of
that region are back-projected with the intrinsics, a plane is fitted robustly (RANSAC, then least
squares on its inliers, see :func:`scale_from_camera_height`), and depth is multiplied by
camera_height / (the camera's distance to that plane). The result is only as right as the assumption
and the intrinsics: a car or a wall filling the region, a hill, a tilted mount or a wrong focal
length give a wrong scale. A frame where no plausible plane is found stops the run with an error.

Intrinsics (used for ``--ply`` and ``--camera_height``): ``--fx --fy --cx --cy`` in pixels of the
original frames, or ``--calib=FILE`` (the calibration formats of ``tripled_tf.data.calibration``), or by
default the KITTI-like normalised intrinsics the networks are trained with (fx = 0.58 W, fy = 1.92 H,
cx = 0.5 W, cy = 0.5 H of each frame) - a stand-in, stated in predictions.json.

Models: ``--checkpoint`` is a training run folder, an exported SavedModel folder or a .tflite file
(``python -m tripled_tf.export``); :func:`tripled_tf.inference.load_depth_fn` tells them apart. Exported
models run at their exported size only (no ``--height/--width``). Frames are resized to the model's
size as the training pipeline resizes them (lanczos3 with antialiasing, ``tripled_edge.resample``).

Bad input (missing or unreadable file, empty folder, a video OpenCV cannot open, a missing
checkpoint, a size that is not a multiple of 32) stops the run with one line ``error: ...`` naming the
problem and the path on stderr, and exit code 2.

This module only wires the flags. The library: :func:`tripled_tf.prediction.predict_source` (the run
and its files), :mod:`tripled_tf.frame_sources` (inputs and intrinsics), :mod:`tripled_tf.ground_plane`
(metric scale) and :mod:`tripled_tf.depth_outputs` (.npy, .ply and video writers).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tripled_tf.cli import exit_with_error, use_onednn_by_default  # noqa: E402
from tripled_tf.conventions import STRIDE, nearest_stride_multiple  # noqa: E402
from tripled_tf.data.records import BadInputError, SettingError  # noqa: E402
from tripled_tf.frame_sources import FrameSource, resolve_intrinsics  # noqa: E402
from tripled_tf.ground_plane import SCALE_ASSUMPTION  # noqa: E402
from tripled_tf.inference import check_model_path, load_depth_fn  # noqa: E402
from tripled_tf.prediction import PredictError, predict_source  # noqa: E402


def define_flags(flag_values=None) -> None:
    """Defines the command line's flags.

    Not at import time: tests and tools import this module next to ``tripled_tf.train``, which
    defines flags of the same names (--height, --fx, ...) in the same global registry.
    """
    from absl import flags

    fv = flag_values or flags.FLAGS
    flags.DEFINE_string("input", None, "An image, a folder of PNG/JPEG images (natural order) or a "
                        "video file.", flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "A training run folder (config.json + checkpoints/), an "
                        "exported SavedModel folder or a .tflite file.", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Folder for <stem>_depth.png, <stem>_sigmoid.npy, "
                        "<stem>_depth.npy [, <stem>.ply, <video>_depth.mp4] and predictions.json.",
                        flag_values=fv)
    flags.DEFINE_integer("height", None, "Model input height, multiple of 32 (default: the training "
                         "height).", flag_values=fv)
    flags.DEFINE_integer("width", None, "Model input width, multiple of 32 (default: the training "
                         "width).", flag_values=fv)
    flags.DEFINE_float("fx", None, "Focal length x, pixels of the original frames (--ply, "
                       "--camera_height).", flag_values=fv)
    flags.DEFINE_float("fy", None, "Focal length y, pixels.", flag_values=fv)
    flags.DEFINE_float("cx", None, "Principal point x, pixels.", flag_values=fv)
    flags.DEFINE_float("cy", None, "Principal point y, pixels.", flag_values=fv)
    flags.DEFINE_string("calib", "", "Calibration file (JSON/YAML: fx, fy, cx, cy or camera_matrix "
                        "[, width, height]) instead of --fx --fy --cx --cy. Without either, KITTI-like "
                        "intrinsics (fx = 0.58 W, fy = 1.92 H, cx = cy = centre) stand in.", flag_values=fv)
    flags.DEFINE_bool("ply", False, "Also write <stem>.ply: a coloured point cloud, every pixel "
                      "back-projected with the intrinsics.", flag_values=fv)
    flags.DEFINE_enum("ply_format", "binary", ["binary", "ascii"], "PLY encoding (binary little-endian "
                      "or ASCII).", flag_values=fv)
    flags.DEFINE_float("camera_height", None, "Camera height above the ground in metres: metric depth. "
                       + SCALE_ASSUMPTION + " Without it depth is relative (unknown scale).",
                       flag_values=fv)
    flags.DEFINE_bool("side_by_side", None, "Video input: also write <video stem>_depth.mp4, frame | "
                      "colour depth (default on for video).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 4, "Frames per forward pass.", flag_values=fv)
    flags.DEFINE_bool("progress", True, "Frame counter on stderr for folders and videos.", flag_values=fv)


def run_from_flags(FLAGS) -> Dict:
    """Checks everything cheap (before TensorFlow is imported), loads the model, predicts."""
    for name in ("input", "checkpoint", "output_dir"):
        if not getattr(FLAGS, name):
            raise PredictError(f"--{name} is required (see --helpfull)")
    for name in ("height", "width"):
        value = getattr(FLAGS, name)
        if value is not None and (value <= 0 or value % STRIDE):
            raise PredictError(f"--{name}={value}: the model's input size must be a positive multiple of "
                               f"{STRIDE} (the encoder's stride), e.g. --{name}="
                               f"{nearest_stride_multiple(value)}")
    if FLAGS.batch_size < 1:
        raise PredictError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    intrinsics = resolve_intrinsics(FLAGS.fx, FLAGS.fy, FLAGS.cx, FLAGS.cy, FLAGS.calib)
    check_model_path(FLAGS.checkpoint)
    source = FrameSource(FLAGS.input)
    try:
        side_by_side = FLAGS.side_by_side if FLAGS.side_by_side is not None else source.kind == "video"
        if side_by_side and source.kind != "video":
            raise PredictError(f"--side_by_side needs a video --input; {source.path} is "
                               f"{source.kind_text}")
        if intrinsics.is_default and (FLAGS.ply or FLAGS.camera_height is not None):
            print(f"note: no --fx --fy --cx --cy or --calib: using the {intrinsics.source}",
                  file=sys.stderr)
        depth_fn = load_depth_fn(FLAGS.checkpoint, FLAGS.batch_size)
        size = (FLAGS.height or depth_fn.input_size[0], FLAGS.width or depth_fn.input_size[1])
        return predict_source(source, depth_fn, FLAGS.output_dir, input_size=size, intrinsics=intrinsics,
                              ply=FLAGS.ply, ply_binary=FLAGS.ply_format == "binary",
                              camera_height=FLAGS.camera_height, side_by_side=side_by_side,
                              batch_size=FLAGS.batch_size, progress=FLAGS.progress)
    finally:
        source.close()


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        summary = run_from_flags(flags.FLAGS)
    except (BadInputError, PredictError, SettingError, OSError) as error:
        exit_with_error(str(error), 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    from absl import app

    use_onednn_by_default()
    define_flags()
    app.run(main)
