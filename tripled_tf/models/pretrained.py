"""Pretrained ResNet encoder weights from torchvision-format checkpoints, without PyTorch.

The reference models start from torchvision ResNets (ImageNet-supervised) or from self-supervised
ResNets (SwAV, MoCo, SimCLR) that reuse the torchvision module names but wrap them differently:

- torchvision:  plain state_dict, "conv1.weight", ..., "fc.weight";
- SwAV:         plain state_dict, "module.conv1.weight", ..., plus "module.projection_head.*" and
                "module.prototypes.*";
- MoCo v1/v2:   {"epoch", "arch", "state_dict": {"module.encoder_q.conv1.weight", ...,
                "module.encoder_q.fc.*", "module.encoder_k.*", "module.queue", ...}, "optimizer"};
- MoCo v3:      {"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*",
                "module.predictor.*"}, ...};
- SimCLR (converted torchvision-layout checkpoints, e.g. tonylins/simclr-converter): {"state_dict":
                {"conv1.weight", ...}}; PyTorch re-implementations save the backbone under "encoder.",
                "backbone." or "resnet." with a "projector."/"projection_head." or "backbone.fc.*" head.

:func:`load_torchvision_state` reads such a file (a PyTorch zip checkpoint or an .npz), finds the
torchvision backbone inside the wrappers and returns only its tensors under plain torchvision keys.
:func:`load_encoder_weights` assigns them into a :class:`ResNetEncoder` strictly: every backbone
variable must be loaded and no backbone tensor may be left over. The reference loads non-strictly, so
a prefixed checkpoint silently loads nothing there (docs/method.md §9, pitfall 10).

PyTorch checkpoints are read in both serialisations, the zip archive (torch >= 1.6) and the legacy
stream (torch < 1.6; the published Monodepth2, FeatDepth, SwAV and MoCo files), by
:func:`tripled_tf.models.torch_checkpoint.read_checkpoint` (a restricted unpickler: loading never
executes code from the file). The model converters (``tripled_tf.convert``) read through it too.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tripled_tf.atomic_files import atomic_write
from tripled_tf.models.resnet import RESNET_SPECS, ResNetEncoder, torchvision_key_map
from tripled_tf.models.torch_checkpoint import CheckpointError, read_checkpoint

StateDict = Dict[str, np.ndarray]

SOURCES = ("auto", "torchvision", "swav", "moco", "simclr")

# Wrapper-key prefixes under which each publisher stores the torchvision backbone, most specific
# first. "auto" considers every prefix that actually holds a backbone.
SOURCE_PREFIXES: Dict[str, Tuple[str, ...]] = {
    "torchvision": ("",),
    "swav": ("module.", ""),
    "moco": ("module.encoder_q.", "module.base_encoder.", "encoder_q.", "base_encoder."),
    "simclr": ("", "encoder.", "backbone.", "resnet.", "model.", "module.", "module.encoder.",
               "module.backbone."),
}

# Wrappers that hold the state_dict one level down, tried in this order.
STATE_DICT_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network", "resnet")

# Prefixes of backbones that are never the one to load when another candidate exists (MoCo keys).
_MOMENTUM_ENCODER_MARKERS = ("encoder_k.", "momentum_encoder.")

_BACKBONE_KEY = re.compile(r"^(conv1\.weight|bn1\.\w+|layer[1-4]\.\d+\.\w+(\.\d+)?\.\w+)$")

# --------------------------------------------------------------------------------------------------
# Unwrapping: find the torchvision backbone inside a checkpoint


def _tensor_items(obj) -> Optional[Dict[str, np.ndarray]]:
    if not isinstance(obj, Mapping):
        return None
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    return tensors or None


def _candidate_prefixes(keys: Iterable[str]) -> List[str]:
    """Every prefix p for which p + "conv1.weight" and p + "layer1.0.conv1.weight" both exist."""
    keys = set(keys)
    suffix = "layer1.0.conv1.weight"
    return sorted(k[:-len(suffix)] for k in keys
                  if k.endswith(suffix) and k[:-len(suffix)] + "conv1.weight" in keys)


def _find_state_dict(obj, path: str) -> Dict[str, np.ndarray]:
    tensors = _tensor_items(obj)
    if tensors is not None and _candidate_prefixes(tensors):
        return tensors
    if isinstance(obj, Mapping):
        for key in STATE_DICT_WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                inner = _tensor_items(obj[key])
                if inner is not None and _candidate_prefixes(inner):
                    return inner
    top = list(obj.keys())[:20] if isinstance(obj, Mapping) else type(obj).__name__
    sample = sorted(tensors)[:20] if tensors else []
    raise CheckpointError(
        f"{path}: no torchvision ResNet backbone found (looked for '<prefix>conv1.weight' and "
        f"'<prefix>layer1.0.conv1.weight' at the top level and under {list(STATE_DICT_WRAPPER_KEYS)}); "
        f"top-level entries: {top}; first tensor keys: {sample}")


def _choose_prefix(candidates: List[str], source: str, path: str) -> str:
    if source != "auto":
        for prefix in SOURCE_PREFIXES[source]:
            if prefix in candidates:
                return prefix
        raise CheckpointError(
            f"{path}: --source={source} expects the backbone under one of the prefixes "
            f"{list(SOURCE_PREFIXES[source])}, but the checkpoint holds it under {candidates}; "
            f"use --source=auto or the matching source")
    preferred = [p for p in candidates if not any(m in p for m in _MOMENTUM_ENCODER_MARKERS)]
    if len(preferred) == 1:
        return preferred[0]
    raise CheckpointError(f"{path}: several ResNet backbones in the checkpoint, under prefixes "
                          f"{candidates}; pass an explicit source")


def extract_backbone(obj, source: str = "auto", path: str = "checkpoint") -> StateDict:
    """Finds the torchvision ResNet backbone in a loaded checkpoint object.

    Args:
      obj: what :func:`read_checkpoint` returned (a state_dict, or a dict wrapping one).
      source: "auto", "torchvision", "swav", "moco" or "simclr" (see ``SOURCE_PREFIXES``).
      path: used in error messages.

    Returns:
      {torchvision key: float32 array in torch layout (conv OIHW, BN vectors)} with only the backbone
      keys (conv1, bn1, layer1-4); heads (fc, projection_head, prototypes, projector), the MoCo key
      encoder and ``num_batches_tracked`` are dropped.
    """
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    tensors = _find_state_dict(obj, path)
    prefix = _choose_prefix(_candidate_prefixes(tensors), source, path)
    state: StateDict = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        short = key[len(prefix):]
        if short.endswith("num_batches_tracked") or not _BACKBONE_KEY.match(short):
            continue  # heads and bookkeeping
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"{path}: backbone tensor {key} has dtype {value.dtype}, "
                                  f"expected floating point")
        state[short] = np.asarray(value, np.float32)
    return state


def load_torchvision_state(path, source: str = "auto") -> StateDict:
    """Reads a checkpoint file and returns its ResNet backbone under plain torchvision keys.

    Args:
      path: PyTorch checkpoint, zip or legacy (torchvision, SwAV, MoCo, SimCLR wrappers) or .npz.
      source: "auto" | "torchvision" | "swav" | "moco" | "simclr".

    Returns:
      {"conv1.weight": [64, 3, 7, 7], "bn1.running_mean": [64], ...} float32 numpy arrays in torch
      layout (conv kernels OIHW), backbone keys only.
    """
    obj = read_checkpoint(path)
    return extract_backbone(obj, source=source, path=os.fspath(path))


# --------------------------------------------------------------------------------------------------
# Assignment into a Keras encoder


def _list_keys(keys: Iterable[str], limit: int = 30) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def torch_to_keras_value(key: str, value: np.ndarray, target_shape: Sequence[int]) -> np.ndarray:
    """Converts one torch tensor to the layout of the Keras variable it maps to.

    Conv kernels: OIHW ``[out, in, kh, kw]`` -> HWIO ``[kh, kw, in, out]``. A 3-channel conv1 loaded
    into an n-frame encoder (3n input channels, the pose net) is repeated n times along the input
    channels and divided by n, so n identical frames give the single-frame response (docs/method.md §2.5).
    BN vectors unchanged. Raises CheckpointError on a shape that does not fit.
    """
    value = np.asarray(value, np.float32)
    target_shape = tuple(int(d) for d in target_shape)
    if value.ndim == 4:
        value = np.transpose(value, (2, 3, 1, 0))
        in_have, in_want = value.shape[2], target_shape[2] if len(target_shape) == 4 else None
        if (key == "conv1.weight" and in_want is not None and in_have == 3 and in_want % 3 == 0
                and in_want != 3):
            num_images = in_want // 3
            value = np.tile(value, (1, 1, num_images, 1)) / num_images
    if value.shape != target_shape:
        raise CheckpointError(f"{key}: checkpoint tensor has Keras-layout shape {list(value.shape)}, "
                              f"the encoder expects {list(target_shape)}")
    return value


def load_encoder_weights(encoder: ResNetEncoder, path_or_state: Union[str, os.PathLike, Mapping],
                         source: str = "auto") -> int:
    """Loads torchvision ResNet weights into ``encoder``, strictly.

    Args:
      encoder: a ResNetEncoder (built on demand) of the checkpoint's depth (10/18/34/50/101); with
        ``num_input_images = n > 1`` a 3-channel conv1 is repeated n times and divided by n.
      path_or_state: a checkpoint path (anything :func:`load_torchvision_state` reads, typically the
        .npz written by ``tools/convert_resnet_weights.py``) or a {torchvision key: array} mapping in
        torch layout. A mapping is used as given, without prefix stripping.
      source: as for :func:`load_torchvision_state` (paths only).

    Returns:
      the number of variables assigned (100 for ResNet-18, 265 for ResNet-50).

    Raises:
      CheckpointError (a ValueError) listing the missing and the unexpected backbone keys, or the
      tensors whose shapes do not fit; nothing is assigned in that case.
    """
    if isinstance(path_or_state, Mapping):
        state = {str(k): np.asarray(v) for k, v in path_or_state.items()}
        where = "state dict"
    else:
        state = load_torchvision_state(path_or_state, source=source)
        where = os.fspath(path_or_state)
    key_map = torchvision_key_map(encoder)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    hint = None
    if any("." in k and not _BACKBONE_KEY.match(k) for k in set(state) - set(key_map)):
        hint = ("Prefixed or head keys: read the file with load_torchvision_state (or "
                "tools/convert_resnet_weights.py), which strips wrappers and heads.")
    return assign_strict(key_map, state, where, f"the ResNet-{encoder.num_layers} encoder "
                         f"'{encoder.name}' ({len(key_map)} backbone tensors)", hint=hint)


def assign_strict(key_map: Mapping[str, "keras.Variable"], state: Mapping[str, np.ndarray],
                  where: str, target: str, hint: Optional[str] = None,
                  convert=torch_to_keras_value) -> int:
    """Assigns torch tensors to Keras variables by key, strictly and all-or-nothing.

    Every key of ``state`` must name a variable of ``key_map`` and every variable must receive a
    tensor of its shape after ``convert`` (default: conv kernels OIHW -> HWIO). Otherwise nothing is
    assigned and CheckpointError names the missing keys, the leftover (unexpected) keys and the
    tensors whose shapes do not fit.

    Args:
      key_map: {torch key: keras.Variable}.
      state: {torch key: array in torch layout}.
      where: the file (or "state dict") named in errors; target: what is loaded, for errors.
      hint: appended to a missing / unexpected keys error.
      convert: (key, array, target shape) -> array in the variable's layout.

    Returns:
      the number of variables assigned.
    """
    missing = set(key_map) - set(state)
    unexpected = set(state) - set(key_map)
    if missing or unexpected:
        parts = [f"{where} does not match {target}."]
        if missing:
            parts.append(f"Missing keys ({len(missing)}): {_list_keys(missing)}.")
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}.")
        if hint:
            parts.append(hint)
        raise CheckpointError(" ".join(parts))
    converted, errors = {}, []
    for key, variable in key_map.items():
        try:
            converted[key] = convert(key, state[key], variable.shape)
        except CheckpointError as error:
            errors.append(str(error))
    if errors:
        raise CheckpointError(f"{where}: {len(errors)} tensors do not fit {target}: "
                              + "; ".join(errors[:10]))
    for key, variable in key_map.items():
        variable.assign(converted[key])
    return len(key_map)


def save_state_npz(state: Mapping[str, np.ndarray], path) -> None:
    """Writes {torchvision key: array} as an uncompressed .npz (float32, torch layout), atomically."""
    arrays = {k: np.asarray(v, np.float32) for k, v in sorted(state.items())}
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def convert_checkpoint(input_path, output_path, num_layers: int, source: str = "auto") -> int:
    """Converts a published ResNet checkpoint into the .npz the encoders load; returns the number of
    backbone tensors written.

    What ``python -m tools.convert_resnet_weights`` and the encoder presets
    (``--encoder_weights=swav|supervised|moco``, :func:`tripled_tf.presets.fetch_encoder`) run: read
    the file (zip or legacy), strip the publisher's wrappers and heads (:func:`extract_backbone`),
    check strictly that the backbone fills every variable of a ResNet-``num_layers`` and write it with
    :func:`save_state_npz` (torchvision keys, float32, torch layout).

    Raises:
      CheckpointError (a ValueError) if the checkpoint does not fill a ResNet-``num_layers`` exactly;
      the output is not written then.
    """
    if num_layers not in RESNET_SPECS:
        raise ValueError(f"num_layers must be one of {sorted(RESNET_SPECS)}, got {num_layers}")
    state = load_torchvision_state(input_path, source=source)
    # Strict check against a real encoder, so a written file is always loadable.
    encoder = ResNetEncoder(num_layers=num_layers, name=f"resnet{num_layers}_check")
    try:
        load_encoder_weights(encoder, state)
    except CheckpointError as error:
        raise CheckpointError(f"{os.fspath(input_path)} (backbone found with source={source}): "
                              f"{error}") from None
    save_state_npz(state, output_path)
    return len(state)
