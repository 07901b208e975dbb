"""The depth branch as a SavedModel: signatures for TensorFlow Serving and the TFLite converter.

Only the depth path is exported (encoder -> feature split -> depth decoder -> σ_0); the pose net, the
appearance branch and every loss stay behind. Signatures of an exported SavedModel:

``serving_default(images)``
    images: ``[B, H, W, 3]`` float32 RGB in [0, 1], any H and W (a batch shares one size).
    Returns ``disparity`` and ``depth``, both ``[B, H, W, 1]`` float32 at the input size, in the
    network's units (relative scale for a monocular model: median-scale it, or use a known camera
    height as ``python -m tripled_tf.predict --camera_height`` does).
``serving_encoded(encoded)``
    encoded: ``[B]`` string, JPEG or PNG bytes (TensorFlow Serving's REST ``{"b64": ...}``); one size
    per request. Same outputs.
``model_input(images)``
    images: ``[B, h, w, 3]`` at the network's input size (the training size; another size is refused)
    -> ``disparity`` ``[B, h/2, w/2, 1]``: the network's own output, no resampling (used by the
    evaluation).

Preparation matches training exactly: frames are resized to the network's size with lanczos3 and
antialiasing then clipped to [0, 1] (the tf.data pipeline's default), and the half-resolution
disparity is resized bilinearly (half-pixel centres) to the input size before inversion, the
references' evaluation recipe (docs/method.md §7). Metadata (sizes, normalisation, depth range,
intrinsics) is written to ``assets.extra/tripled_tf.json``, where Serving ignores it.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Dict, Optional

import keras
import tensorflow as tf

from tripled_tf.atomic_files import replace_folder
from tripled_tf.conventions import KITTI_NORMALIZED_INTRINSICS
from tripled_tf.models.layers import edge_lowerings

SERVING_SIGNATURE = "serving_default"
ENCODED_SIGNATURE = "serving_encoded"
MODEL_INPUT_SIGNATURE = "model_input"
METADATA_PATH = os.path.join("assets.extra", "tripled_tf.json")
FORMAT_VERSION = 1


def export_metadata(model, config: dict, step: Optional[int] = None) -> Dict:
    """What a deployment needs to know about the network (JSON-serialisable).

    Args:
      model: the trained depth model (its ``config`` gives min/max depth and the encoder).
      config: the run's config.json ("train" and "model").
      step: the checkpoint's optimiser step.
    """
    train = config.get("train", {})
    height, width = int(train["height"]), int(train["width"])
    if train.get("intrinsics"):
        intrinsics = {"source": "--fx/--fy/--cx/--cy of the training video (pixels of its frames)",
                      "fx_fy_cx_cy": list(train["intrinsics"])}
    elif train.get("calibration"):
        intrinsics = {"source": f"calibration file {train['calibration']}"}
    elif train.get("use_calibration"):
        intrinsics = {"source": "KITTI per-drive calibration (P_rect_02 / S_rect_02)"}
    else:
        intrinsics = {"source": "KITTI normalised intrinsics (the default)",
                      "normalised_fx_fy_cx_cy": list(KITTI_NORMALIZED_INTRINSICS)}
    return {
        "format": "tripled_tf depth", "format_version": FORMAT_VERSION,
        "model": train.get("model", "baseline"), "step": step, "dataset": train.get("dataset"),
        "input_height": height, "input_width": width,
        "input": "RGB float32 in [0, 1] (uint8 / 255); the network normalises internally, (x - 0.45) / 0.225",
        "resize": "lanczos3 with antialiasing, then clip to [0, 1] (tf.image.resize; tripled_edge.resample in numpy)",
        "output": f"disparity = 1 / depth, at 1/{model.output_stride} of the input size",
        "output_stride": int(model.output_stride),
        "min_depth": float(model.config.min_depth), "max_depth": float(model.config.max_depth),
        "depth_scale": ("relative: a monocular network's depth has an unknown global scale (median-scale "
                        "against ground truth, or fix it with a known camera height)"),
        "intrinsics": intrinsics,
    }


def _disparity_of_sigma(sigma, min_depth: float, max_depth: float):
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return min_disp + (max_disp - min_disp) * sigma


def _prepare(images, height: int, width: int):
    resized = tf.image.resize(images, (height, width), method="lanczos3", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def build_archive(model, height: int, width: int, batch_size: Optional[int] = None,
                  serving: bool = True) -> keras.export.ExportArchive:
    """An ExportArchive of the depth branch alone (``model.depth_branch()``: no pose network, no
    training-only branches, no optimiser).

    Args:
      model: a built MonoDepthModel / TripleDNet (its ``depth_branch()`` is exported).
      height, width: the network's input size.
      batch_size: fixes the batch dimension of ``model_input`` (1 for the TFLite converter, whose GPU
        delegate needs static shapes); None = any.
      serving: add ``serving_default`` and ``serving_encoded`` (not wanted for TFLite conversion).
    """
    min_depth, max_depth = float(model.config.min_depth), float(model.config.max_depth)
    branch = model.depth_branch()

    def network(images):
        sigma = tf.cast(branch(images, training=False)[0], tf.float32)
        return _disparity_of_sigma(sigma, min_depth, max_depth)

    def at_input_size(prepared, size):
        disparity = tf.image.resize(network(prepared), size, method="bilinear")
        return {"disparity": disparity, "depth": 1.0 / disparity}

    def serve_images(images):
        # Signatures do not enforce their shapes at call time: check rank and channels here.
        values = tf.concat([tf.reshape(images, [-1]), [0.5]], axis=0)  # an empty batch passes
        checks = [
            tf.debugging.assert_equal(tf.rank(images), 4,
                                      message="images: expected rank 4, [batch, height, width, 3]"),
            tf.debugging.assert_equal(
                tf.shape(images)[-1], 3,
                message="images: expected 3 channels (RGB), [batch, height, width, 3]"),
            tf.debugging.assert_equal(
                tf.reduce_all(tf.math.is_finite(values)), True,
                message="images: expected float32 RGB in [0, 1] (uint8 / 255), found non-finite values "
                        "(NaN or Inf)"),
        ]
        # The range checks run after the finite check: NaN fails every comparison, so it would
        # otherwise be reported as "values below 0".
        with tf.control_dependencies(checks):
            checks += [
                tf.debugging.assert_greater_equal(
                    tf.reduce_min(values), -1e-3,
                    message="images: expected float32 RGB in [0, 1] (uint8 / 255), found values below 0"),
                tf.debugging.assert_less_equal(
                    tf.reduce_max(values), 1.0 + 1e-3,
                    message="images: expected float32 RGB in [0, 1] (uint8 / 255), found values above 1"),
            ]
        # The network must wait for the checks: automatic control dependencies only order stateful
        # ops among themselves, so with one inter-op thread the first convolution could fail first
        # with TensorFlow's own message instead of ours.
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        return at_input_size(_prepare(images, height, width), tf.shape(images)[1:3])

    def decode_one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32) / 255.0
        return _prepare(image[None], height, width)[0], tf.shape(image)[:2]

    def serve_encoded(encoded):
        prepared, sizes = tf.map_fn(
            decode_one, encoded,
            fn_output_signature=(tf.TensorSpec([height, width, 3], tf.float32),
                                 tf.TensorSpec([2], tf.int32)))
        tf.debugging.assert_equal(sizes, tf.broadcast_to(sizes[:1], tf.shape(sizes)),
                                  message="encoded: all images of one request must have the same size")
        return at_input_size(prepared, sizes[0])

    def model_input(images):
        if serving:
            # A signature does not enforce its input shape when called: without this check another
            # size would run the network at that size, not the fixed size the signature states.
            expected = f"[batch, {height}, {width}, 3]"
            check = tf.debugging.assert_equal(
                tf.shape(images)[1:], tf.constant([height, width, 3]),
                message=f"images: model_input takes the network's input size {expected} only "
                        f"(serving_default resizes any size)")
            with tf.control_dependencies([check]):
                images = tf.identity(images)
        return {"disparity": network(images)}

    endpoints = [(MODEL_INPUT_SIGNATURE, model_input,
                  tf.TensorSpec([batch_size, height, width, 3], tf.float32, name="images"))]
    if serving:
        endpoints += [
            (SERVING_SIGNATURE, serve_images, tf.TensorSpec([None, None, None, 3], tf.float32,
                                                            name="images")),
            (ENCODED_SIGNATURE, serve_encoded, tf.TensorSpec([None], tf.string, name="encoded"))]
    # Not archive.track(branch): Keras would then save every value twice (the Keras variables it
    # tracks and, under _all_variables, the TensorFlow variables the endpoints use: 2x the file
    # size). The endpoints' own variables are all a SavedModel needs.
    archive = keras.export.ExportArchive()
    for name, function, spec in endpoints:
        archive.add_endpoint(name, function, input_signature=[spec])
    return archive


# What a SavedModel folder of ours holds at its top level (keras ExportArchive.write_out + metadata).
_SAVED_MODEL_ENTRIES = {"saved_model.pb", "fingerprint.pb", "variables", "assets", "assets.extra"}


def is_previous_export(folder) -> bool:
    """True when ``folder`` is a SavedModel this module wrote: our metadata file is there and the
    folder holds nothing a SavedModel does not (so replacing it loses nothing of the user's)."""
    folder = pathlib.Path(folder)
    if not (folder / "saved_model.pb").is_file() or not (folder / METADATA_PATH).is_file():
        return False
    if any(entry.name not in _SAVED_MODEL_ENTRIES for entry in folder.iterdir()):
        return False
    try:
        return "format_version" in json.loads((folder / METADATA_PATH).read_text())
    except (OSError, ValueError):
        return False


def check_output_folder(output) -> pathlib.Path:
    """The absolute path a SavedModel may be written to, or FileExistsError saying why not.

    Export writes a new folder, fills an empty one, or replaces a previous export of ours; it never
    deletes anything it did not write: a file, or a non-empty folder that is not our export (the
    current folder, a TensorFlow Serving model base folder with its version folders), is refused.
    """
    path = pathlib.Path(os.path.abspath(output))  # "." and "x/.." name real folders
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output={output}: {path} is a file; a SavedModel is a folder "
                              f"(export deletes nothing it did not write)")
    if path.is_dir() and any(path.iterdir()) and not is_previous_export(path):
        entries = sorted(entry.name for entry in path.iterdir())
        hint = ""
        versions = [int(name) for name in entries if name.isdigit()]
        if versions:  # a TensorFlow Serving base folder: the export belongs in a version folder
            hint = ("; for TensorFlow Serving write a new version folder, e.g. "
                    f"{path / str(max(versions) + 1)}")
        shown = ", ".join(entries[:5]) + (f" (+{len(entries) - 5} more)" if len(entries) > 5 else "")
        raise FileExistsError(f"--output={output}: {path} is a non-empty folder that is not a tripled_tf "
                              f"export (it holds {shown}); export writes a new or empty folder or "
                              f"replaces its own previous export, and deletes nothing else{hint}")
    return path


def write_saved_model(archive: keras.export.ExportArchive, output, metadata: Dict) -> str:
    """Writes the archive to ``output`` (a folder) and returns its absolute path.

    ``output`` must be new, empty, or a previous export of ours (:func:`check_output_folder`;
    FileExistsError otherwise). The SavedModel is written to a temporary sibling and renamed into
    place, so an interrupted export never leaves a folder that looks complete; a previous export is
    moved aside just before the rename and deleted after it (put back if the rename fails).
    """
    output = check_output_folder(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        target = staging / "saved_model"
        # The endpoints are traced while saving: XNNPACK- and GPU-friendly lowerings (models/layers.py).
        with edge_lowerings():
            archive.write_out(str(target), verbose=False)
        (target / METADATA_PATH).parent.mkdir(parents=True, exist_ok=True)
        (target / METADATA_PATH).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        output = check_output_folder(output)  # again: the folder may have changed while writing
        replace_folder(target, output, staging / "previous")  # deleted with the staging folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(output)


def read_metadata(saved_model_dir) -> Dict:
    """The metadata :func:`write_saved_model` stored; FileNotFoundError when absent."""
    path = pathlib.Path(saved_model_dir) / METADATA_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{saved_model_dir}: not a tripled_tf SavedModel (no {METADATA_PATH})")
    return json.loads(path.read_text())
