"""TripleD's own checkpoints (``convert --from=tripled``) as a TripleDNet, numerically identical.

The reading helpers shared with FeatDepth's files (mmcv state, ResNet depth from keys, FeatDepth's
decoder and pose key maps) live in :mod:`tripled_tf.models.published`.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tripled_tf.conventions import STRIDE, is_stride_multiple
from tripled_tf.models import pretrained
from tripled_tf.models.published import (FEATDEPTH_MAX_DEPTH, FEATDEPTH_MIN_DEPTH,
                                         featdepth_decoder_key_map, featdepth_pose_decoder_key_map,
                                         read_mmcv_state, resnet_depth_from_keys, select_pose)
from tripled_tf.models.resnet import RESNET_SPECS, torchvision_key_map
from tripled_tf.models.torch_checkpoint import CheckpointError

# TripleD (ufukpage/TripleD-Exploring-Depth-Estimation-with-Self-Supervised-Representation-Learning)
#
# An mmcv checkpoint {"meta", "state_dict", ["optimizer"]} of one of the mono_fm_joint* classes
# (mono/model/mono_fm_joint/net.py, mono/model/mono_fm_joint_inpaint/net.py). Its keys are named after
# the attributes the class sets, and which attributes exist says which TripleDNet branches exist:
#
#   DepthEncoder.encoder.*   depth ResNet (torchvision keys, unused fc.* dropped)   -> encoder
#   DepthDecoder.*           FeatDepth's decoder (reduce<s>, iconv<s>, crp<s>, ...)  -> depth_decoder
#   depth_skip_layer_<i>.*   the split of level i + 1: no tensors for "use_half" slicing;
#                            0.conv + 1 (BN) for depth_disentangle_type 1x1         -> feature_split
#   ColorDecoder.*           appearance decoder (disentangle classes)              -> appearance_decoder
#   Encoder.encoder.*, Decoder.*  jointly trained feature extractor + its decoder  -> extractor(_decoder)
#   DepthToGray.*, ColorizeNet.*  D2G / DG2C pretext heads                         -> pretext_head
#   PoseEncoder.encoder.*, PoseDecoder.*                                             -> pose_net
#
# Switches read from tensor shapes: the depth / pose / extractor ResNet depth (block keys), which
# levels are split (a split level reaches DepthDecoder.reduce<s> and ColorDecoder with half its
# channels), head inputs (DepthToGray 1 channel = disparity, 2 = surface normals; ColorizeNet 2 =
# disparity + L, 4 = with normals). Switches that leave no trace in the weights (all training-only)
# keep TripleDConfig's defaults, the main config's values: skip_multiplier 1, the loss weights,
# use_lab_gray on, head_mask off (TripleD's use_mask; on in ..._disentangle_distill_colorize.py).
# extractor_input_masked follows the class: the disentangle classes feed the extractor the plain frame,
# mono_fm_joint_inpaint and its distill_gs / distill_colorize children the erased frame I·m
# (mono_fm_joint has the same keys and feeds the plain frame: it converts as mono_fm_joint_inpaint).
#
# Skipped by rule (counted in "skipped"): ColorDecoder.upconv{5,4,3,2}_skip.*, the four encoder-skip
# ConvBlocks TripleD's ColorDecoder always builds but runs only where color_skip_layers is on. That
# flag is not in the file: ``color_encoder_skips`` (default off, cfg_kitti_tripleD.py) says which are
# used; a used one is converted like any other tensor.
# Refused (one error line naming the keys): parts TripleDNet has no counterpart for (attention before
# the split or on unsplit levels and a 1x1 conv on an unsplit level, i.e. depth_skip_type ca / pa /
# asca / 1x1; 1x1 appearance projections; the separate colourisation / inpainting networks; map-pose
# and rotation heads; pixel-shuffle or HR-Depth decoders) and the frozen ``extractor.*`` of a FeatDepth
# mono_fm checkpoint (``--from=featdepth``). The training size is not stored; TripleD's KITTI model is
# 320x1024.

TRIPLED_PREFIXES = {"depth_encoder": "DepthEncoder.encoder.", "depth": "DepthDecoder.",
                    "split": "depth_skip_layer_", "appearance": "ColorDecoder.",
                    "extractor": "Encoder.encoder.", "extractor_decoder": "Decoder.",
                    "d2g": "DepthToGray.", "dg2c": "ColorizeNet.",
                    "pose_encoder": "PoseEncoder.encoder.", "pose": "PoseDecoder."}
TRIPLED_SIZE = (320, 1024)
# Key prefixes of TripleD classes and switches without a TripleDNet counterpart, with the reason.
TRIPLED_UNSUPPORTED = {
    "color_skip_layer_": "color_skip_type='1x1' (1x1 appearance projections)",
    "ColorizeEncoder.": "the separate colourisation network of ..._distill_sep_colorize",
    "ColorizeDecoder.": "the separate colourisation network of ..._distill_sep_colorize",
    "InpaintEncoder.": "the separate inpainting network of ..._distill_sep_inpaint",
    "InpaintDecoder.": "the separate inpainting network of ..._distill_sep_inpaint",
    "pose_map_cls.": "the map-pose classifier of mono_fm_joint_inpaint_map_pose",
    "ClassificationHead.": "the rotation classifier of mono_fm_joint_im_rot",
    "extractor.": "FeatDepth's frozen autoencoder encoder: a FeatDepth mono_fm checkpoint, convert it "
                  "with --from=featdepth",
    "encoder.": "a Monodepth2 file (convert its folder with --from=monodepth2)",
    "decoder.": "a Monodepth2 file (convert its folder with --from=monodepth2)",
}
# ColorDecoder's encoder-skip ConvBlocks, skip i = 0..3 (level 4 .. level 1 into the H/8 .. H stage).
TRIPLED_COLOR_SKIPS = ("upconv5_skip.", "upconv4_skip.", "upconv3_skip.", "upconv2_skip.")
# The 1x1 depth split of one level: Conv1x1 (no bias) then BatchNorm2d, in a Sequential.
_PROJECTION_KEYS = {"0.conv.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"}


def _batch_norm_key_map(prefix: str, bn) -> Dict[str, object]:
    """{torch BatchNorm2d key: Keras variable} for a built BatchNormalization layer."""
    return {f"{prefix}weight": bn.gamma, f"{prefix}bias": bn.beta,
            f"{prefix}running_mean": bn.moving_mean, f"{prefix}running_var": bn.moving_variance}


def _upconv_decoder_key_map(upconv_in, upconv_out, heads) -> Dict[str, object]:
    """Keys of FeatDepth's / TripleD's ``Decoder`` layout: ConvBlocks ``upconv<n>`` / ``iconv<n>``
    (n = 5 .. 1, our stages 0 .. 4) and sigmoid heads ``disp<n>`` (n = 4 .. 1: H/8 .. H)."""
    key_map = {}
    for stage, n in enumerate((5, 4, 3, 2, 1)):
        for name, block in ((f"upconv{n}", upconv_in[stage]), (f"iconv{n}", upconv_out[stage])):
            key_map[f"{name}.conv.conv.weight"] = block.conv.conv.kernel
            key_map[f"{name}.conv.conv.bias"] = block.conv.conv.bias
    for j, n in enumerate((4, 3, 2, 1)):
        key_map[f"disp{n}.conv.weight"] = heads[j].conv.kernel
        key_map[f"disp{n}.conv.bias"] = heads[j].conv.bias
    return key_map


def appearance_decoder_key_map(decoder) -> Dict[str, object]:
    """{TripleD ColorDecoder key (without the prefix): Keras variable} for a built AppearanceDecoder;
    the encoder-skip ConvBlocks only where the decoder uses them."""
    key_map = _upconv_decoder_key_map(decoder.upconv_in, decoder.upconv_out, decoder.side_output)
    for skip, name in zip(decoder.skip_conv, TRIPLED_COLOR_SKIPS):
        if skip is not None:
            key_map[f"{name}conv.conv.weight"] = skip.conv.conv.kernel
            key_map[f"{name}conv.conv.bias"] = skip.conv.conv.bias
    return key_map


def extractor_decoder_key_map(decoder) -> Dict[str, object]:
    """{TripleD / FeatDepth extractor ``Decoder`` key: Keras variable} for a built ExtractorDecoder."""
    return _upconv_decoder_key_map(decoder.upconv_in, decoder.upconv_out, decoder.reconstruction)


def pretext_head_key_map(head) -> Dict[str, object]:
    """{key of TripleD's ``Sequential(BasicBlock(c_in, 32), Conv2d(32, c_out, 1))`` head (DepthToGray,
    ColorizeNet; without the prefix): Keras variable} for a built PretextHead."""
    key_map = {"0.conv1.weight": head.conv1.conv.kernel, "0.conv2.weight": head.conv2.conv.kernel,
               "1.weight": head.output_conv.kernel, "1.bias": head.output_conv.bias}
    key_map.update(_batch_norm_key_map("0.bn1.", head.bn1))
    key_map.update(_batch_norm_key_map("0.bn2.", head.bn2))
    return key_map


def split_projection_key_map(feature_split) -> Dict[str, object]:
    """{``<i>.0.conv.weight`` / ``<i>.1.*`` (the depth_skip_layer_<i> keys without the prefix):
    Keras variable} for the 1x1 depth projections of a built FeatureSplit."""
    key_map = {}
    for i, projection in enumerate(feature_split.depth_projections):
        if projection is not None:
            key_map[f"{i}.0.conv.weight"] = projection.conv.kernel
            key_map.update(_batch_norm_key_map(f"{i}.1.", projection.bn))
    return key_map


def _resnet_channels(depth: int) -> Tuple[int, ...]:
    """Channels of the 5 encoder levels of a torchvision ResNet of ``depth`` layers."""
    expansion = 4 if RESNET_SPECS[depth][0] == "bottleneck" else 1
    return (64,) + tuple(w * expansion for w in (64, 128, 256, 512))


def _split_flag(channels_in: int, full: int, what: str, level: int, path: str) -> bool:
    """Whether ``what``, taking ``channels_in`` channels of encoder level ``level`` (``full``
    channels), reads a split (half) level."""
    if channels_in == full:
        return False
    if channels_in * 2 == full:
        return True
    raise CheckpointError(f"{path}: {what} takes {channels_in} channels; level {level} of the depth "
                          f"encoder has {full} ({full // 2} when split)")


def _tripled_split_levels(parts: dict, channels, path: str) -> Tuple[bool, ...]:
    """The 5 disentangle flags, read from the input widths of the depth decoder (levels 2..5) and of
    the appearance decoder (levels 1..5; it always builds all four skip ConvBlocks); both must agree."""
    flags: Dict[int, Tuple[bool, str]] = {}

    def record(level, part, key):
        if key not in parts[part]:
            return  # a missing tensor: named by the strict assignment
        what = TRIPLED_PREFIXES[part] + key
        flag = _split_flag(int(parts[part][key].shape[1]), channels[level - 1], what, level, path)
        if level in flags and flags[level][0] != flag:
            raise CheckpointError(f"{path}: {flags[level][1]} and {what} disagree on whether level "
                                  f"{level} is split")
        flags[level] = (flag, what)

    for level, stage in ((5, 4), (4, 3), (3, 2), (2, 1)):
        record(level, "depth", f"reduce{stage}.conv.weight")
    record(5, "appearance", "upconv5.conv.conv.weight")
    for level, name in zip((4, 3, 2, 1), TRIPLED_COLOR_SKIPS):
        record(level, "appearance", f"{name}conv.conv.weight")
    return tuple(flags.get(level, (False, ""))[0] for level in range(1, 6))


def _tripled_depth_split(split_state: Mapping[str, np.ndarray], levels, path: str) -> str:
    """"first_half" (no depth_skip_layer tensors: TripleD's "use_half" slicing) or "conv1x1" (a 1x1
    conv + BN on every split level); anything else is refused."""
    by_level: Dict[int, set] = {}
    for key in split_state:
        index, _, rest = key.partition(".")
        if not index.isdigit() or not 0 <= int(index) < 5:
            raise CheckpointError(f"{path}: unexpected tensor depth_skip_layer_{key}")
        by_level.setdefault(int(index), set()).add(rest)
    if not by_level:
        return "first_half"
    split = [i for i, flag in enumerate(levels) if flag]
    for index, keys in sorted(by_level.items()):
        if keys != _PROJECTION_KEYS or not levels[index]:
            kind = ("attention (depth_skip_type ca / pa / asca) or another layer before the split"
                    if levels[index] else "a layer on an unsplit level (depth_skip_type 1x1 / ca / pa "
                    "/ asca)")
            raise CheckpointError(
                f"{path}: depth_skip_layer_{index}.* ({pretrained._list_keys(keys, 6)}) is {kind}, "
                f"which TripleDNet does not represent; it converts the 'use_half' and 1x1 splits only")
    if sorted(by_level) != split:
        raise CheckpointError(f"{path}: 1x1 split layers depth_skip_layer_{sorted(by_level)} do not "
                              f"match the split levels {[i + 1 for i in split]} (0-based {split})")
    return "conv1x1"


def read_tripled(path, pose: Optional[bool] = None,
                 color_encoder_skips: Optional[Sequence[bool]] = None) -> dict:
    """Reads a TripleD checkpoint and the TripleDNet switches its keys imply (see the section comment).

    Args:
      path: the mmcv checkpoint (.pth, either serialisation).
      pose: True = the pose network is required, False = ignored, None = converted when present.
      color_encoder_skips: 4 booleans, which of ColorDecoder's encoder-skip ConvBlocks the model used
        (its color_skip_layers; default all off). Unused ones are skipped.

    Returns:
      {"file", "parts": {part: {key without prefix: array}}, "skipped", "config": TripleDConfig
       fields, "depth_layers", "pose_layers", "switches": a short description}.
    """
    path = os.fspath(path)
    state = read_mmcv_state(path)
    skips = tuple(bool(f) for f in (color_encoder_skips or (False,) * 4))
    if len(skips) != 4:
        raise CheckpointError(f"color_encoder_skips: expected 4 booleans (levels 4, 3, 2, 1), got "
                              f"{list(color_encoder_skips)}")
    parts: Dict[str, Dict[str, np.ndarray]] = {part: {} for part in TRIPLED_PREFIXES}
    refused: Dict[str, list] = {}
    for key, value in state.items():
        for part, prefix in TRIPLED_PREFIXES.items():
            if key.startswith(prefix):
                short = key[len(prefix):]
                # The classifier of the encoders' torchvision ResNets is never run.
                if not (part.endswith("encoder") or part == "extractor") or not short.startswith("fc."):
                    parts[part][short] = value
                break
        else:
            reason = next((r for p, r in TRIPLED_UNSUPPORTED.items() if key.startswith(p)),
                          "not a TripleD model attribute")
            refused.setdefault(reason, []).append(key)
    if refused:
        text = "; ".join(f"{reason}: {pretrained._list_keys(keys, 4)}"
                         for reason, keys in refused.items())
        raise CheckpointError(f"{path}: not a TripleD checkpoint TripleDNet represents: "
                              f"{sum(map(len, refused.values()))} tensors outside "
                              f"{sorted(TRIPLED_PREFIXES.values())} ({text})")
    if not parts["depth_encoder"] or not parts["depth"]:
        prefixes = sorted({key.split(".")[0] + "." for key in state})
        raise CheckpointError(f"{path}: not a TripleD depth model: no DepthEncoder.* / DepthDecoder.* "
                              f"tensors (its tensors are under {prefixes[:10]})")
    depth_layers = resnet_depth_from_keys(parts["depth_encoder"], "", path)
    select_pose(parts, pose, path)

    levels = _tripled_split_levels(parts, _resnet_channels(depth_layers), path)
    depth_split = _tripled_depth_split(parts["split"], levels, path)
    use_appearance = bool(parts["appearance"])
    skipped = 0
    if use_appearance:
        for used, name in zip(skips, TRIPLED_COLOR_SKIPS):
            if not used:  # built by TripleD's ColorDecoder, run only for color_skip_layers
                unused = [k for k in parts["appearance"] if k.startswith(name)]
                skipped += len(unused)
                for key in unused:
                    del parts["appearance"][key]
    elif any(levels):
        raise CheckpointError(f"{path}: split levels {[i + 1 for i, f in enumerate(levels) if f]} "
                              f"without an appearance decoder (no ColorDecoder.*)")
    use_extractor = bool(parts["extractor"])
    if use_extractor != bool(parts["extractor_decoder"]):
        have, lack = (("Encoder.encoder.*", "Decoder.*") if use_extractor
                      else ("Decoder.*", "Encoder.encoder.*"))
        raise CheckpointError(f"{path}: holds the feature extractor's {have} but not its {lack} "
                              f"(img_reconstruct_weight=0?); TripleDNet's extractor has both")
    heads = [part for part in ("d2g", "dg2c") if parts[part]]
    if len(heads) > 1:
        raise CheckpointError(f"{path}: holds both DepthToGray.* and ColorizeNet.*; TripleDNet has one "
                              f"pretext head")
    pretext, use_normals = "none", False
    if heads:
        from tripled_tf.models.pretext_heads import pretext_head_spec
        pretext = heads[0]
        conv1 = parts[pretext].get("0.conv1.weight")
        c_in = int(conv1.shape[1]) if conv1 is not None else None
        choices = {pretext_head_spec(pretext, n)[0]: n for n in (False, True)}
        if c_in is not None and c_in not in choices:
            raise CheckpointError(f"{path}: {TRIPLED_PREFIXES[pretext]}0.conv1.weight takes {c_in} "
                                  f"input channels; the {pretext} head takes {sorted(choices)}")
        use_normals = choices.get(c_in, False)
    config = dict(depth_layers=depth_layers, disentangle_levels=levels, depth_split=depth_split,
                  use_appearance=use_appearance,
                  color_encoder_skips=skips if use_appearance else (False,) * 4,
                  use_extractor=use_extractor, pretext_task=pretext, head_use_normals=use_normals,
                  extractor_input_masked=use_extractor and not use_appearance)
    if use_extractor:
        config["extractor_layers"] = resnet_depth_from_keys(parts["extractor"], "", path)
    pose_layers = resnet_depth_from_keys(parts["pose_encoder"], "", path) if "pose" in parts else None
    switches = [f"split levels {[i + 1 for i, f in enumerate(levels) if f]} ({depth_split})"
                if any(levels) else "no split"]
    if use_appearance:
        switches.append("appearance decoder" + (f" (skips {list(skips)})" if any(skips) else ""))
    if use_extractor:
        switches.append(f"extractor ResNet-{config['extractor_layers']}")
    if pretext != "none":
        switches.append(f"{pretext} head" + (" with normals" if use_normals else ""))
    return {"file": path, "parts": parts, "skipped": skipped, "config": config,
            "depth_layers": depth_layers, "pose_layers": pose_layers, "switches": ", ".join(switches)}


def tripled_model_config(read: dict):
    """The TripleDConfig of what :func:`read_tripled` read (FeatDepth's decoder, 192x640 pose input;
    every switch not read from the file at its default, see the section comment)."""
    from tripled_tf.models.tripled_net import TripleDConfig
    return TripleDConfig(pose_layers=read["pose_layers"] or 18, depth_decoder="featdepth",
                         min_depth=FEATDEPTH_MIN_DEPTH, max_depth=FEATDEPTH_MAX_DEPTH, **read["config"])


def load_tripled(model, read: dict) -> int:
    """Assigns what :func:`read_tripled` read into a built TripleDNet, strictly: every tensor into one
    variable of its shape, and every variable of the converted parts receives one."""
    parts, path = read["parts"], read["file"]
    shuffle_hint = ("DepthDecoder.up<k>.* (depth_use_shuffle) and DepthDecoder.convs.* (HR-Depth, "
                    "DIFFNet) have no counterpart in TripleDNet's depth decoder.")
    jobs = [(torchvision_key_map(model.encoder), "depth_encoder",
             f"TripleD's ResNet-{model.encoder.num_layers} depth encoder "
             f"(keys 'DepthEncoder.encoder.*')"),
            (featdepth_decoder_key_map(model.depth_decoder), "depth",
             "TripleD's depth decoder (keys 'DepthDecoder.*')")]
    if model.config.depth_split == "conv1x1":
        jobs.append((split_projection_key_map(model.feature_split), "split",
                     "TripleD's 1x1 depth split (keys 'depth_skip_layer_<i>.0.conv' / '.1')"))
    if model.appearance_decoder is not None:
        jobs.append((appearance_decoder_key_map(model.appearance_decoder), "appearance",
                     "TripleD's appearance decoder (keys 'ColorDecoder.*')"))
    if model.extractor is not None:
        jobs.append((torchvision_key_map(model.extractor), "extractor",
                     f"TripleD's ResNet-{model.extractor.num_layers} feature extractor "
                     f"(keys 'Encoder.encoder.*')"))
        jobs.append((extractor_decoder_key_map(model.extractor_decoder), "extractor_decoder",
                     "the feature extractor's decoder (keys 'Decoder.*')"))
    if model.pretext_head is not None:
        task = model.config.pretext_task
        jobs.append((pretext_head_key_map(model.pretext_head), task,
                     f"TripleD's {task} head (keys '{TRIPLED_PREFIXES[task]}*')"))
    if "pose" in parts:
        jobs.append((torchvision_key_map(model.pose_net.encoder), "pose_encoder",
                     f"TripleD's two-frame ResNet-{model.pose_net.encoder.num_layers} pose encoder "
                     f"(keys 'PoseEncoder.encoder.*')"))
        jobs.append((featdepth_pose_decoder_key_map(model.pose_net), "pose",
                     "TripleD's pose decoder (keys 'PoseDecoder.*')"))
    # Parts the file holds but the model does not have cannot occur (the switches come from the
    # file); checked anyway so that no tensor is dropped silently.
    used = {part for _, part, _ in jobs}
    dropped = [TRIPLED_PREFIXES[p] for p, tensors in parts.items() if tensors and p not in used]
    if dropped:
        raise CheckpointError(f"{path}: tensors under {dropped} have no place in the converted model")
    # And the converse: every variable of the model receives a tensor (the pose net's stay as
    # initialised only when the file holds none), so no branch is left at its random initialisation.
    mapped = {id(v) for key_map, _, _ in jobs for v in key_map.values()}
    if "pose" not in parts:
        mapped |= {id(v) for v in model.pose_net.weights}
    unmapped = [v.path for v in model.weights if id(v) not in mapped]
    if unmapped:
        raise CheckpointError(f"{path}: {len(unmapped)} variables of the converted model have no "
                              f"tensor in the file: {pretrained._list_keys(unmapped, 6)}")
    count = 0
    for key_map, part, target in jobs:
        count += pretrained.assign_strict(key_map, parts[part], path, target,
                                          hint=shuffle_hint if part == "depth" else None)
    return count


def build_tripled(path, pose: Optional[bool] = None, size: Tuple[int, int] = TRIPLED_SIZE,
                  color_encoder_skips: Optional[Sequence[bool]] = None) -> Tuple[object, dict]:
    """A TripleDNet holding the TripleD checkpoint at ``path``, built at ``size``.

    Returns:
      (model, info: height, width, depth_layers, pose_layers, files, tensors, skipped, switches).
    """
    from tripled_tf.models.tripled_net import TripleDNet

    height, width = (int(s) for s in size)
    if not is_stride_multiple(height, width):
        raise CheckpointError(f"--height={height} --width={width}: must be positive multiples of "
                              f"{STRIDE}")
    read = read_tripled(path, pose=pose, color_encoder_skips=color_encoder_skips)
    model = TripleDNet(tripled_model_config(read))
    model.build_for_size(height, width)
    count = load_tripled(model, read)
    info = {"height": height, "width": width, "use_stereo": None,
            "depth_layers": read["depth_layers"], "pose_layers": read["pose_layers"],
            "files": {"checkpoint": read["file"]}, "tensors": count, "skipped": read["skipped"],
            "switches": read["switches"]}
    return model, info
