"""Converts a published reference model into a tripled_tf run folder.

    python -m tripled_tf.convert --from=monodepth2 --input=mono_640x192 --output=runs/md2_mono_640x192
    python -m tripled_tf.convert --from=monodepth2 --input=mono_640x192.zip --output=OUT --nopose
    python -m tripled_tf.convert --from=featdepth --input=fm_depth.pth --output=OUT [--height=320 --width=1024]
    python -m tripled_tf.convert --from=tripled --input=epoch_20.pth --output=OUT [--height=320 --width=1024]

``--input``: Monodepth2: an unzipped model folder (encoder.pth, depth.pth, optional pose_encoder.pth
and pose.pth) or the published .zip itself. FeatDepth: its mmcv checkpoint of the mono_fm model
({"meta", "state_dict"}: DepthEncoder.*, DepthDecoder.*, PoseEncoder.*, PoseDecoder.*; the frozen
feature-metric extractor.* is skipped). TripleD: its mmcv checkpoint of a mono_fm_joint* model
(DepthEncoder.*, DepthDecoder.*, ColorDecoder.*, Encoder.*, Decoder.*, DepthToGray.* / ColorizeNet.*,
PoseEncoder.*, PoseDecoder.*; which are there decides the TripleDNet switches, see
tripled_tf/models/published_tripled.py). Both PyTorch serialisations are read without PyTorch.

``--output``: a normal run folder (config.json + checkpoints/) of the baseline model with the
reference's depth decoder (``depth_decoder="monodepth2"`` / ``"featdepth"``), or for TripleD of a
TripleDNet (``model="tripled"``), at the training size (Monodepth2: stored in encoder.pth; FeatDepth,
TripleD: not stored, ``--height/--width``, default 320x1024),
which every tool takes:
``python -m tripled_tf.predict --checkpoint=OUT``, ``evaluate``, ``export``, and
``tripled_tf.load(OUT)``. The folder appears complete or not at all (written beside it, then renamed);
an existing folder is replaced only with ``--overwrite``.

Every tensor must land in exactly one variable of its shape; a missing tensor, a leftover one, a file of
another model or a truncated file ends in one ``error:`` line naming the file.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Optional, Sequence, Tuple

from absl import app, flags

from tripled_tf.atomic_files import replace_folder
from tripled_tf.cli import exit_with_error, use_onednn_by_default

SOURCES = ("monodepth2", "featdepth", "tripled")
SOURCE_KEY = "converted_from"  # config.json entry describing the converted model


class ConversionError(ValueError):
    """The output folder cannot be written as asked."""


def _replace_folder(staging: pathlib.Path, output: pathlib.Path, overwrite: bool) -> None:
    """Moves the complete ``staging`` folder to ``output`` (same file system: a rename)."""
    if output.exists() and not overwrite:
        raise ConversionError(f"{output}: already exists; pass --overwrite to replace it")
    retired = output.with_name(output.name + ".replaced")
    shutil.rmtree(retired, ignore_errors=True)
    replace_folder(staging, output, retired)
    shutil.rmtree(retired, ignore_errors=True)


def save_run_folder(model, output, height: int, width: int, source: dict,
                    overwrite: bool = False, data: Optional[dict] = None) -> str:
    """Writes ``model`` as a run folder (config.json + checkpoints/), atomically.

    Args:
      model: a built baseline MonoDepthModel or TripleDNet (config.json's train.model "baseline" /
        "tripled").
      output: the folder to create.
      height, width: the model's input size (config.json's train.height / train.width).
      source: what was converted (recorded under config.json's "converted_from").
      overwrite: replace an existing folder.
      data: TrainConfig fields of the data the model is meant for (dataset, data_path, splits_dir,
        split): int8 export calibrates on it, evaluation and fine-tuning default to it.

    Returns:
      the output path.
    """
    from tripled_tf import checkpoint
    from tripled_tf.models.tripled_net import TripleDNet
    from tripled_tf.train_config import TrainConfig

    output = pathlib.Path(output).resolve()
    if output.exists() and not overwrite:
        raise ConversionError(f"{output}: already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        # Pretrained encoder weights are not loaded when training starts from this folder's weights.
        kind = "tripled" if isinstance(model, TripleDNet) else "baseline"
        train = TrainConfig(model=kind, height=int(height), width=int(width),
                            encoder_weights="none", log_dir=str(output), **(data or {}))
        checkpoint.write_json(staging / checkpoint.CONFIG_FILE,
                              {"train": dataclasses.asdict(train),
                               "model": model.config.to_dict(), SOURCE_KEY: source})
        checkpoint.save_checkpoint(model, staging, step=0, with_state=False)
        checkpoint.save_depth_weights(model, staging)
        _replace_folder(staging, output, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(output)


def convert(source: str, input_path, output, pose: Optional[bool] = None,
            overwrite: bool = False, size: Optional[Tuple[int, int]] = None,
            data: Optional[dict] = None,
            color_encoder_skips: Optional[Sequence[bool]] = None) -> dict:
    """Converts a published model into a run folder.

    Args:
      source: "monodepth2", "featdepth" or "tripled".
      input_path: the model folder or .zip (Monodepth2), the checkpoint file (FeatDepth, TripleD).
      output: the run folder to write.
      pose: True = require the pose network, False = depth only, None = convert it when present.
      overwrite: replace an existing output folder.
      size: (height, width) of a FeatDepth / TripleD model (default 320x1024); Monodepth2 stores its own.
      data: see :func:`save_run_folder` (e.g. {"dataset": "kitti", "data_path": ..., "splits_dir": ...}).
      color_encoder_skips: TripleD: which of ColorDecoder's 4 encoder skips the model used (its
        color_skip_layers, not stored in the file; default all off as in cfg_kitti_tripleD.py).

    Returns:
      {"output", "height", "width", "depth_layers", "pose_layers", "tensors", "files", ...}.

    Raises:
      CheckpointError / ConversionError (ValueErrors) naming the file and the problem; nothing is
      written to ``output`` then.
    """
    if source not in SOURCES:
        raise ValueError(f"--from: expected one of {SOURCES}, got {source!r}")
    output = pathlib.Path(output)
    if output.exists() and not overwrite:
        raise ConversionError(f"{output}: already exists; pass --overwrite to replace it")
    from tripled_tf.models import published, published_tripled
    from tripled_tf.train_config import TrainConfig

    TrainConfig(model="baseline", **(data or {}))  # a bad data flag fails before the conversion
    if color_encoder_skips is not None and source != "tripled":
        raise ConversionError("--color_encoder_skips: only for --from=tripled")

    if source == "monodepth2":
        if size is not None:
            raise ConversionError("--height/--width: a Monodepth2 model's size is stored in its "
                                  "encoder.pth; drop them")
        model, info = published.build_monodepth2(input_path, pose=pose)
    elif source == "featdepth":
        model, info = published.build_featdepth(input_path, pose=pose,
                                                size=size or published.FEATDEPTH_SIZE)
    else:
        model, info = published_tripled.build_tripled(input_path, pose=pose,
                                                      size=size or published_tripled.TRIPLED_SIZE,
                                                      color_encoder_skips=color_encoder_skips)
    record = {"format": source, "input": os.path.abspath(os.fspath(input_path)),
              "height": info["height"], "width": info["width"], "use_stereo": info["use_stereo"],
              "depth_layers": info["depth_layers"], "pose_layers": info["pose_layers"],
              "pose": info["pose_layers"] is not None, "skipped_tensors": info.get("skipped", 0)}
    if "switches" in info:
        record["switches"] = info["switches"]
    info["output"] = save_run_folder(model, output, info["height"], info["width"], record,
                                     overwrite=overwrite, data=data)
    return info


def _parse_bool(value: str, flag: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConversionError(f"{flag}: expected booleans (1/0, true/false), got {value!r}")


def define_flags(flag_values=None) -> None:
    fv = flag_values or flags.FLAGS
    flags.DEFINE_enum("from", None, list(SOURCES), "Publisher of the model to convert.",
                      flag_values=fv)
    flags.DEFINE_string("input", None, "Monodepth2: the unzipped model folder (encoder.pth, depth.pth, "
                        "optional pose_encoder.pth + pose.pth) or the published .zip; FeatDepth: "
                        "the mono_fm checkpoint (.pth); TripleD: the mono_fm_joint* checkpoint "
                        "(.pth).", flag_values=fv)
    flags.DEFINE_integer("height", None, "FeatDepth, TripleD: training height (default 320).",
                         flag_values=fv)
    flags.DEFINE_integer("width", None, "FeatDepth, TripleD: training width (default 1024).",
                         flag_values=fv)
    flags.DEFINE_list("color_encoder_skips", None, "TripleD: 4 booleans (1/0), the model's "
                      "color_skip_layers (encoder skips into the appearance decoder, levels 4..1; "
                      "not stored in the file). Default: all off, as cfg_kitti_tripleD.py.",
                      flag_values=fv)
    flags.DEFINE_string("output", None, "Run folder to create (config.json + checkpoints/).",
                        flag_values=fv)
    flags.DEFINE_bool("pose", None, "--pose: the pose network is required; --nopose: depth only; "
                      "unset: converted when its files are there.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing output folder.", flag_values=fv)
    flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "kitti", "video"], "The data the model is "
                      "for, recorded in config.json: int8 export calibrates on it, evaluate and "
                      "train default to it.", flag_values=fv)
    flags.DEFINE_string("data_path", "", "KITTI raw root or video, as for train.", flag_values=fv)
    flags.DEFINE_string("splits_dir", "", "KITTI: Monodepth2's splits/ folder.", flag_values=fv)
    flags.DEFINE_string("split", "eigen_zhou", "KITTI: split name or file.", flag_values=fv)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    for name in ("from", "input", "output"):
        if not FLAGS[name].value:
            exit_with_error(f"--{name} is required")
    try:
        size = None
        if FLAGS.height is not None or FLAGS.width is not None:
            from tripled_tf.models.published import FEATDEPTH_SIZE, TRIPLED_SIZE
            default = TRIPLED_SIZE if FLAGS["from"].value == "tripled" else FEATDEPTH_SIZE
            size = (FLAGS.height or default[0], FLAGS.width or default[1])
        data = {"dataset": FLAGS.dataset, "data_path": FLAGS.data_path,
                "splits_dir": FLAGS.splits_dir, "split": FLAGS.split}
        skips = None
        if FLAGS.color_encoder_skips is not None:
            skips = [_parse_bool(v, "--color_encoder_skips") for v in FLAGS.color_encoder_skips]
        info = convert(FLAGS["from"].value, FLAGS.input, FLAGS.output, pose=FLAGS.pose,
                       overwrite=FLAGS.overwrite, size=size, data=data, color_encoder_skips=skips)
    except ValueError as error:  # CheckpointError, ConversionError: one line naming the file
        exit_with_error(str(error))
    pose = (f"pose ResNet-{info['pose_layers']}" if info["pose_layers"] else "no pose network")
    switches = f", {info['switches']}" if info.get("switches") else ""
    skipped = f" ({info['skipped']} skipped by rule)" if info.get("skipped") else ""
    print(f"wrote {info['output']}: {FLAGS['from'].value} ResNet-{info['depth_layers']} depth, "
          f"{pose}{switches}, {info['width']}x{info['height']}, {info['tensors']} tensors{skipped}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    use_onednn_by_default()
    define_flags()
    app.run(main)
