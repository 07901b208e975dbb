"""Published reference models (Monodepth2, FeatDepth; TripleD in :mod:`published_tripled`) as
tripled_tf models, numerically identical.

Monodepth2 (nianticlabs/monodepth2) publishes a model as a folder of PyTorch state dicts:

- ``encoder.pth``: ``networks.ResnetEncoder``: torchvision ResNet keys under ``encoder.`` (with the
  unused ``encoder.fc.*`` classifier) plus the training size ``height``, ``width`` and ``use_stereo``;
- ``depth.pth``: ``networks.DepthDecoder``: ``decoder.<n>.conv.conv.{weight,bias}`` for the ten
  ConvBlocks (n = 0..9 in construction order: upconv (4, 0), (4, 1), (3, 0), ..., (0, 1)) and
  ``decoder.<10 + s>.conv.{weight,bias}`` for the disparity heads s = 0..3;
- ``pose_encoder.pth`` (optional): a two-frame ``ResnetEncoder`` (6-channel conv1), keys ``encoder.*``;
- ``pose.pth`` (optional): ``networks.PoseDecoder``: ``net.0`` (squeeze), ``net.1``, ``net.2``
  (pose 0, 1), ``net.3`` (pose 2).

Our baseline with ``depth_decoder="monodepth2"`` is that network: same ResNet (torchvision layout), same
decoder (:class:`~tripled_tf.models.monodepth2_decoder.Monodepth2Decoder`, module names kept), same pose
net. Monodepth2's trainer builds the pose decoder with ``num_frames_to_predict_for=2`` (12 outputs) and
uses only the first pose (``axisangle[:, 0]``), so ``net.3`` keeps its first 6 output channels; that
is the only tensor not copied whole. Its pose network sees the frames at the training size, so the
converted model has ``pose_input_size=None``.

:func:`load_monodepth2` assigns strictly: every tensor lands in exactly one variable with its shape
(kernels OIHW -> HWIO) or CheckpointError names the missing and leftover keys.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from tripled_tf.conventions import STRIDE, is_stride_multiple
from tripled_tf.models import pretrained, torch_checkpoint
from tripled_tf.models.torch_checkpoint import CheckpointError
from tripled_tf.models.resnet import RESNET_SPECS, torchvision_key_map

MONODEPTH2_FILES = {"encoder": "encoder.pth", "depth": "depth.pth",
                    "pose_encoder": "pose_encoder.pth", "pose": "pose.pth"}
# Monodepth2's options.py defaults, used by its evaluation: depth = 1 / (1/100 + (1/0.1 - 1/100) sigma).
MONODEPTH2_MIN_DEPTH = 0.1
MONODEPTH2_MAX_DEPTH = 100.0
MONODEPTH2_POSE_OUTPUTS = 6  # one (axis-angle, translation) per predicted frame; the first is used

_ENCODER_EXTRAS = ("height", "width", "use_stereo")


def _tensors(obj, path: str) -> Dict[str, np.ndarray]:
    """The array entries of a state-dict file (non-tensor entries such as ``height`` dropped)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got "
                              f"{type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)
            and not str(k).endswith("num_batches_tracked")}


def resnet_depth_from_keys(keys, prefix: str, path: str) -> int:
    """ResNet depth (10/18/34/50/101) of the torchvision backbone under ``prefix``, from its block keys."""
    keys = set(keys)
    if f"{prefix}layer1.0.conv1.weight" not in keys:
        prefixes = sorted({key.split(".")[0] + "." for key in keys})
        raise CheckpointError(f"{path}: not the expected model: no ResNet backbone under '{prefix}' "
                              f"(no {prefix}layer1.0.conv1.weight); its tensors are under "
                              f"{prefixes[:10]}")
    bottleneck = f"{prefix}layer1.0.conv3.weight" in keys
    pattern = re.compile(re.escape(prefix) + r"layer(\d)\.(\d+)\.conv1\.weight$")
    blocks = [0, 0, 0, 0]
    for key in keys:
        match = pattern.match(key)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            blocks[stage - 1] = max(blocks[stage - 1], index + 1)
    for depth, (block, counts) in RESNET_SPECS.items():
        if tuple(blocks) == counts and (block == "bottleneck") == bottleneck:
            return depth
    raise CheckpointError(f"{path}: ResNet with {blocks} blocks per stage "
                          f"({'bottleneck' if bottleneck else 'basic'}) is none of "
                          f"{sorted(RESNET_SPECS)}")


def _strip(state: Mapping[str, np.ndarray], prefix: str, drop=()) -> Dict[str, np.ndarray]:
    """Keys under ``prefix`` with it removed; other keys kept whole (they are leftovers then)."""
    out = {}
    for key, value in state.items():
        short = key[len(prefix):] if key.startswith(prefix) else key
        if key.startswith(prefix) and any(short.startswith(d) for d in drop):
            continue
        out[short] = value
    return out


def monodepth2_decoder_key_map(decoder) -> Dict[str, object]:
    """{Monodepth2 depth.pth key: Keras variable} for a built Monodepth2Decoder."""
    key_map = {}
    for i in range(4, -1, -1):
        for j in range(2):
            n = 2 * (4 - i) + j
            conv = decoder.upconv[4 - i][j].conv.conv
            key_map[f"decoder.{n}.conv.conv.weight"] = conv.kernel
            key_map[f"decoder.{n}.conv.conv.bias"] = conv.bias
    for s, head in enumerate(decoder.dispconv):
        key_map[f"decoder.{10 + s}.conv.weight"] = head.conv.kernel
        key_map[f"decoder.{10 + s}.conv.bias"] = head.conv.bias
    return key_map


def monodepth2_pose_decoder_key_map(pose_net) -> Dict[str, object]:
    """{Monodepth2 pose.pth key: Keras variable} for a built PoseNet's decoder."""
    key_map = {}
    for n, layer in enumerate((pose_net.squeeze, pose_net.pose_0.conv, pose_net.pose_1.conv,
                               pose_net.pose_2)):
        key_map[f"net.{n}.weight"] = layer.kernel
        key_map[f"net.{n}.bias"] = layer.bias
    return key_map


def _first_pose(key: str, value: np.ndarray, target_shape) -> np.ndarray:
    """Conversion of pose.pth tensors: ``net.3`` keeps the first prediction (see module docstring)."""
    value = np.asarray(value)
    if key.startswith("net.3.") and value.shape[0] > MONODEPTH2_POSE_OUTPUTS:
        if value.shape[0] % MONODEPTH2_POSE_OUTPUTS:
            raise CheckpointError(f"{key}: {value.shape[0]} pose outputs, expected a multiple of 6")
        value = value[:MONODEPTH2_POSE_OUTPUTS]
    return pretrained.torch_to_keras_value(key, value, target_shape)


def _resolve_input(path: str, workdir: str) -> str:
    """The model folder: ``path`` itself, or a published .zip (mono_640x192.zip) extracted into
    ``workdir`` (only its .pth members, flattened)."""
    if os.path.isdir(path):
        return path
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such folder or file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith(".pth")]
            if not members:
                raise CheckpointError(f"{path}: expected a Monodepth2 model folder or its .zip "
                                      f"(encoder.pth, depth.pth, ...); this zip holds "
                                      f"{archive.namelist()[:8]}")
            for member in members:
                target = os.path.join(workdir, os.path.basename(member))
                with archive.open(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        return workdir
    raise CheckpointError(f"{path}: expected a Monodepth2 model folder (encoder.pth, depth.pth, "
                          f"optional pose_encoder.pth, pose.pth) or its .zip")


def read_monodepth2(path, pose: Optional[bool] = None, workdir: Optional[str] = None) -> dict:
    """Reads a Monodepth2 model folder (or its published .zip).

    Args:
      path: the folder (or .zip) holding encoder.pth, depth.pth and optionally pose_encoder.pth +
        pose.pth.
      pose: True = the pose files are required; False = ignored; None = used when present.
      workdir: where a .zip is extracted (a temporary folder the caller removes); required for zips.

    Returns:
      {"files": {part: path}, "states": {part: {key: array}}, "height", "width", "use_stereo",
       "depth_layers", "pose_layers" (None without pose)}.
    """
    path = os.fspath(path)
    folder = _resolve_input(path, workdir) if workdir else path
    if not os.path.isdir(folder):
        raise CheckpointError(f"{path}: expected a Monodepth2 model folder (encoder.pth, depth.pth, "
                              f"optional pose_encoder.pth, pose.pth)")
    files = {part: os.path.join(folder, name) for part, name in MONODEPTH2_FILES.items()}
    where = {part: os.path.join(path, name) for part, name in MONODEPTH2_FILES.items()}
    for part in ("encoder", "depth"):
        if not os.path.isfile(files[part]):
            raise CheckpointError(f"{where[part]}: missing; a Monodepth2 model folder holds "
                                  f"encoder.pth and depth.pth (and pose_encoder.pth, pose.pth)")
    present = [part for part in ("pose_encoder", "pose") if os.path.isfile(files[part])]
    if pose is None:
        if len(present) == 1:
            other = "pose" if present[0] == "pose_encoder" else "pose_encoder"
            raise CheckpointError(f"{where[other]}: missing while {MONODEPTH2_FILES[present[0]]} is "
                                  f"there; pass both pose files or --nopose for a depth-only model")
        pose = len(present) == 2
    elif pose and len(present) < 2:
        missing = [where[p] for p in ("pose_encoder", "pose") if p not in present]
        raise CheckpointError(f"{missing[0]}: missing; the pose network was asked for but "
                              f"{path} holds a depth-only model")
    parts = ("encoder", "depth") + (("pose_encoder", "pose") if pose else ())
    raw = {part: torch_checkpoint.read_checkpoint(files[part]) for part in parts}
    encoder_obj = raw["encoder"]
    if not isinstance(encoder_obj, Mapping) or not all(k in encoder_obj for k in ("height",
                                                                                  "width")):
        top = list(encoder_obj)[:8] if isinstance(encoder_obj, Mapping) else type(encoder_obj).__name__
        raise CheckpointError(f"{where['encoder']}: not a Monodepth2 encoder.pth (no 'height' / "
                              f"'width' entries beside the weights; entries: {top})")
    height, width = int(encoder_obj["height"]), int(encoder_obj["width"])
    if not is_stride_multiple(height, width):
        raise CheckpointError(f"{where['encoder']}: training size {height}x{width} is not a multiple "
                              f"of {STRIDE}")
    states = {part: _tensors(obj, where[part]) for part, obj in raw.items()}
    result = {"files": {p: where[p] for p in parts}, "states": states, "height": height,
              "width": width, "use_stereo": bool(encoder_obj.get("use_stereo", False)),
              "depth_layers": resnet_depth_from_keys(states["encoder"], "encoder.",
                                                     where["encoder"]),
              "pose_layers": None}
    if pose:
        result["pose_layers"] = resnet_depth_from_keys(states["pose_encoder"], "encoder.",
                                                       where["pose_encoder"])
    return result


def monodepth2_model_config(depth_layers: int, pose_layers: Optional[int]):
    """The baseline configuration of a Monodepth2 model (its decoder, depth range and pose size)."""
    from tripled_tf.models.depth_model import DepthModelConfig
    return DepthModelConfig(depth_layers=depth_layers, pose_layers=pose_layers or 18,
                            pose_input_size=None, depth_decoder="monodepth2",
                            min_depth=MONODEPTH2_MIN_DEPTH, max_depth=MONODEPTH2_MAX_DEPTH)


def load_monodepth2(model, files: dict) -> int:
    """Assigns what :func:`read_monodepth2` read into a built baseline model, strictly.

    Returns the number of variables assigned. Raises CheckpointError (nothing assigned from the
    failing file) naming the file, its missing and its leftover keys.
    """
    states, where = files["states"], files["files"]
    count = 0
    encoder_state = _strip(states["encoder"], "encoder.", drop=("fc.",))
    count += pretrained.assign_strict(
        torchvision_key_map(model.encoder), encoder_state, where["encoder"],
        f"Monodepth2's ResNet-{model.encoder.num_layers} depth encoder (keys 'encoder.*')")
    count += pretrained.assign_strict(
        monodepth2_decoder_key_map(model.depth_decoder), states["depth"], where["depth"],
        "Monodepth2's depth decoder (keys 'decoder.<n>.conv[.conv].weight/bias')")
    if "pose" in states:
        pose_encoder_state = _strip(states["pose_encoder"], "encoder.", drop=("fc.",))
        count += pretrained.assign_strict(
            torchvision_key_map(model.pose_net.encoder), pose_encoder_state, where["pose_encoder"],
            f"Monodepth2's two-frame ResNet-{model.pose_net.encoder.num_layers} pose encoder")
        count += pretrained.assign_strict(
            monodepth2_pose_decoder_key_map(model.pose_net), states["pose"], where["pose"],
            "Monodepth2's pose decoder (keys 'net.0' .. 'net.3')", convert=_first_pose)
    return count


def build_monodepth2(path, pose: Optional[bool] = None) -> Tuple[object, dict]:
    """A baseline model holding the Monodepth2 model at ``path`` (folder or .zip).

    Returns:
      (model built at the stored training size, info: height, width, use_stereo, depth_layers,
      pose_layers, files, tensors).
    """
    from tripled_tf.models.depth_model import MonoDepthModel

    with tempfile.TemporaryDirectory(prefix="monodepth2-") as workdir:
        files = read_monodepth2(path, pose=pose, workdir=workdir)
    model = MonoDepthModel(monodepth2_model_config(files["depth_layers"], files["pose_layers"]))
    model.build_for_size(files["height"], files["width"])
    count = load_monodepth2(model, files)
    info = {k: v for k, v in files.items() if k != "states"}
    info["tensors"] = count
    return model, info


# --------------------------------------------------------------------------------------------------
# FeatDepth (sconlyshootery/FeatDepth, mono/model/mono_fm)
#
# An mmcv checkpoint {"meta": ..., "state_dict": ..., ["optimizer"]} of the mono_fm model, whose
# attributes name the key prefixes: DepthEncoder.encoder.* (torchvision ResNet keys, with fc),
# DepthDecoder.* (reduce<s>.conv, iconv<s>.conv, crp<s>.0.<k>_pointwise.conv, merge<s>.conv,
# disp<s>.0.conv for stages s = 4 (deepest) .. 1), PoseEncoder.encoder.* (two-frame ResNet),
# PoseDecoder.{reduce, conv1, conv2, conv3} and extractor.* (the frozen autoencoder encoder of the
# feature-metric loss: training only, not part of this model, skipped and counted). The training size
# is not stored; FeatDepth's KITTI models are 320x1024.

FEATDEPTH_PREFIXES = {"depth_encoder": "DepthEncoder.encoder.", "depth": "DepthDecoder.",
                      "pose_encoder": "PoseEncoder.encoder.", "pose": "PoseDecoder."}
FEATDEPTH_SKIPPED = ("extractor.",)  # the feature-metric loss's frozen encoder (training only)
FEATDEPTH_AUTOENCODER = ("Encoder.", "Decoder.")
FEATDEPTH_SIZE = (320, 1024)
FEATDEPTH_MIN_DEPTH = 0.1
FEATDEPTH_MAX_DEPTH = 100.0


def select_pose(parts: Dict, pose: Optional[bool], path: str) -> None:
    """Drops the pose parts unless asked for (``pose`` True) or present and not refused (``None``);
    a pose network asked for but absent is an error naming the file."""
    has_pose = bool(parts["pose_encoder"]) or bool(parts["pose"])
    if pose and not has_pose:
        raise CheckpointError(f"{path}: holds no pose network (no PoseEncoder.* / PoseDecoder.*), "
                              f"but the pose network was asked for")
    if not (has_pose if pose is None else pose):
        parts.pop("pose_encoder"), parts.pop("pose")


def featdepth_decoder_key_map(decoder) -> Dict[str, object]:
    """{FeatDepth DepthDecoder key (without the prefix): Keras variable} for a built DepthDecoder."""
    key_map = {}
    for index, stage in enumerate((4, 3, 2, 1)):
        key_map[f"reduce{stage}.conv.weight"] = decoder.reduce[index].kernel
        for name, layer in ((f"iconv{stage}", decoder.iconv[index]),
                            (f"merge{stage}", decoder.merge[index]),
                            (f"disp{stage}.0", decoder.disp[index])):
            key_map[f"{name}.conv.weight"] = layer.conv.kernel
            key_map[f"{name}.conv.bias"] = layer.conv.bias
        for k, conv in enumerate(decoder.crp[index].pointwise):
            key_map[f"crp{stage}.0.{k + 1}_pointwise.conv.weight"] = conv.kernel
    return key_map


def featdepth_pose_decoder_key_map(pose_net) -> Dict[str, object]:
    """{FeatDepth PoseDecoder key (without the prefix): Keras variable} for a built PoseNet."""
    key_map = {}
    for name, layer in (("reduce", pose_net.squeeze), ("conv1", pose_net.pose_0.conv),
                        ("conv2", pose_net.pose_1.conv), ("conv3", pose_net.pose_2)):
        key_map[f"{name}.weight"] = layer.kernel
        key_map[f"{name}.bias"] = layer.bias
    return key_map


def read_mmcv_state(path: str) -> Dict[str, np.ndarray]:
    """The tensors of an mmcv checkpoint ({"meta", "state_dict", ["optimizer"]}) or of a bare
    state_dict, without ``num_batches_tracked`` and without a DataParallel ``module.`` prefix."""
    obj = torch_checkpoint.read_checkpoint(path)
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    state = _tensors(state, path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_featdepth(path, pose: Optional[bool] = None) -> dict:
    """Reads a FeatDepth mono_fm checkpoint: {"file", "parts": {part: {key: array}}, "skipped",
    "depth_layers", "pose_layers"} with the parts' prefixes removed (see the section comment)."""
    path = os.fspath(path)
    state = read_mmcv_state(path)
    prefixes = sorted({key.split(".")[0] + "." for key in state})
    if set(prefixes) and set(prefixes) <= set(FEATDEPTH_AUTOENCODER):
        raise CheckpointError(f"{path}: FeatDepth's feature autoencoder (keys {prefixes}), not a "
                              f"depth model; convert the mono_fm checkpoint (DepthEncoder.*, "
                              f"DepthDecoder.*)")
    parts: Dict[str, Dict[str, np.ndarray]] = {part: {} for part in FEATDEPTH_PREFIXES}
    skipped, leftover = 0, []
    for key, value in state.items():
        for part, prefix in FEATDEPTH_PREFIXES.items():
            if key.startswith(prefix):
                short = key[len(prefix):]
                if not (part.endswith("encoder") and short.startswith("fc.")):
                    parts[part][short] = value
                break
        else:
            if key.startswith(FEATDEPTH_SKIPPED):
                skipped += 1
            else:
                leftover.append(key)
    if leftover:
        raise CheckpointError(f"{path}: not a FeatDepth mono_fm checkpoint: {len(leftover)} tensors "
                              f"outside {sorted(FEATDEPTH_PREFIXES.values())}: "
                              f"{pretrained._list_keys(leftover, 10)}")
    if not parts["depth_encoder"] or not parts["depth"]:
        raise CheckpointError(f"{path}: not a FeatDepth depth model: no DepthEncoder.* / "
                              f"DepthDecoder.* tensors (its tensors are under {prefixes[:10]})")
    select_pose(parts, pose, path)
    result = {"file": path, "parts": parts, "skipped": skipped,
              "depth_layers": resnet_depth_from_keys(parts["depth_encoder"], "", path),
              "pose_layers": None}
    if "pose" in parts:
        result["pose_layers"] = resnet_depth_from_keys(parts["pose_encoder"], "", path)
    return result


def featdepth_model_config(depth_layers: int, pose_layers: Optional[int]):
    """The baseline configuration of a FeatDepth model: its decoder, depth range, 192x640 pose input."""
    from tripled_tf.models.depth_model import DepthModelConfig
    return DepthModelConfig(depth_layers=depth_layers, pose_layers=pose_layers or 18,
                            depth_decoder="featdepth", min_depth=FEATDEPTH_MIN_DEPTH,
                            max_depth=FEATDEPTH_MAX_DEPTH)


def load_featdepth(model, read: dict) -> int:
    """Assigns what :func:`read_featdepth` read into a built baseline model, strictly."""
    parts, path = read["parts"], read["file"]
    count = pretrained.assign_strict(
        torchvision_key_map(model.encoder), parts["depth_encoder"], path,
        f"FeatDepth's ResNet-{model.encoder.num_layers} depth encoder (keys 'DepthEncoder.encoder.*')")
    count += pretrained.assign_strict(
        featdepth_decoder_key_map(model.depth_decoder), parts["depth"], path,
        "FeatDepth's depth decoder (keys 'DepthDecoder.*')")
    if "pose" in parts:
        count += pretrained.assign_strict(
            torchvision_key_map(model.pose_net.encoder), parts["pose_encoder"], path,
            f"FeatDepth's two-frame ResNet-{model.pose_net.encoder.num_layers} pose encoder "
            f"(keys 'PoseEncoder.encoder.*')")
        count += pretrained.assign_strict(
            featdepth_pose_decoder_key_map(model.pose_net), parts["pose"], path,
            "FeatDepth's pose decoder (keys 'PoseDecoder.*')")
    return count


def build_featdepth(path, pose: Optional[bool] = None,
                    size: Tuple[int, int] = FEATDEPTH_SIZE) -> Tuple[object, dict]:
    """A baseline model holding the FeatDepth checkpoint at ``path``, built at ``size``.

    Returns:
      (model, info: height, width, depth_layers, pose_layers, files, tensors, skipped).
    """
    from tripled_tf.models.depth_model import MonoDepthModel

    height, width = (int(s) for s in size)
    if not is_stride_multiple(height, width):
        raise CheckpointError(f"--height={height} --width={width}: must be positive multiples of {STRIDE}")
    read = read_featdepth(path, pose=pose)
    model = MonoDepthModel(featdepth_model_config(read["depth_layers"], read["pose_layers"]))
    model.build_for_size(height, width)
    count = load_featdepth(model, read)
    info = {"height": height, "width": width, "use_stereo": None,
            "depth_layers": read["depth_layers"], "pose_layers": read["pose_layers"],
            "files": {"checkpoint": read["file"]}, "tensors": count, "skipped": read["skipped"]}
    return model, info
