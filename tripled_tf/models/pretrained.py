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
a prefixed checkpoint silently loads nothing there (METHOD.md §9, pitfall 10).

PyTorch zip checkpoints are read with ``zipfile`` and a restricted unpickler: the only callables the
pickle may reach are the tensor rebuild functions and ``collections.OrderedDict``; any other global
becomes an inert placeholder object, so loading never executes code from the file. Legacy (pre-1.6,
non-zip) torch pickles are refused with a hint to re-save them (or read with PyTorch if it is
installed and ``allow_torch_fallback`` is set).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
import zipfile
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tripled_tf.models.resnet import ResNetEncoder, torchvision_key_map

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

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "DoubleStorage": np.dtype("<f8"),
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_LEGACY_TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not hold the expected ResNet backbone."""


# --------------------------------------------------------------------------------------------------
# PyTorch zip checkpoint reader


class _Placeholder:
    """Stands in for any global the pickle names that we do not need (argparse.Namespace, numpy
    scalars, optimizer classes, ...): accepts whatever it is built with and does nothing."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<unread {self.qualname}>"


def _placeholder_class(module: str, name: str) -> type:
    return type(f"Unread_{name}", (_Placeholder,), {"qualname": f"{module}.{name}"})


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype("<u4") << 16).view("<f4")


def _rebuild_tensor(storage: np.ndarray, storage_offset: int, size: Sequence[int],
                    stride: Sequence[int], *unused) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 on a numpy storage: a strided view, copied to own its data."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return storage[storage_offset].copy()
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    itemsize = storage.dtype.itemsize
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise CheckpointError(f"tensor of size {list(size)} / stride {list(stride)} at offset "
                              f"{storage_offset} overruns its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[s * itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles data.pkl of a torch zip checkpoint into numpy arrays, executing nothing else."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    }

    def __init__(self, file, archive: zipfile.ZipFile, root: str, big_endian: bool):
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._big_endian = big_endian
        self._storages: Dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        return _placeholder_class(module, name)

    def persistent_load(self, pid):
        # torch.save writes ("storage", storage_type, key, location, numel) for every storage.
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"unsupported persistent id in torch checkpoint: {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key in self._storages:
            return self._storages[key]
        type_name = getattr(storage_type, "name", repr(storage_type))
        if type_name not in _STORAGE_DTYPES:
            raise CheckpointError(f"unsupported storage type {type_name} in torch checkpoint; "
                                  f"supported: {sorted(_STORAGE_DTYPES)}")
        dtype = _STORAGE_DTYPES[type_name]
        raw = self._archive.read(f"{self._root}/data/{key}")
        if dtype == "bfloat16":
            array = _bfloat16_to_float32(np.frombuffer(raw, ">u2" if self._big_endian else "<u2"))
        else:
            if self._big_endian and dtype.itemsize > 1:
                dtype = dtype.newbyteorder(">")
            array = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
        self._storages[key] = array
        return array


def read_torch_zip(path: str):
    """Reads a PyTorch zip checkpoint (``torch.save`` >= 1.6) without PyTorch.

    Returns the saved object with every tensor as a numpy array (float32/float16/float64/int64/...
    as stored; bfloat16 is widened to float32). Objects other than tensors, dicts, lists, tuples and
    plain Python values come back as inert placeholders.
    """
    with zipfile.ZipFile(path) as archive:
        pickles = sorted((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"),
                         key=len)
        if not pickles:
            raise CheckpointError(f"{path}: a zip file without data.pkl is not a torch checkpoint")
        root = pickles[0][:-len("data.pkl")].rstrip("/")
        byteorder_name = f"{root}/byteorder" if root else "byteorder"
        big_endian = (byteorder_name in archive.namelist()
                      and archive.read(byteorder_name).strip() == b"big")
        with archive.open(pickles[0]) as f:
            return _TorchUnpickler(io.BytesIO(f.read()), archive, root, big_endian).load()


def _is_legacy_torch_pickle(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
    return head[:1] == b"\x80" and _LEGACY_TORCH_MAGIC in head


def read_checkpoint(path: str, allow_torch_fallback: bool = False):
    """Reads a checkpoint file: a PyTorch zip checkpoint (.pth/.pt/.pth.tar) or an .npz.

    Args:
      path: file path.
      allow_torch_fallback: read legacy (non-zip) torch pickles with ``torch.load(weights_only=True)``
        if PyTorch is importable; otherwise they are refused.

    Returns:
      the saved object (usually a dict) with tensors as numpy arrays.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if names and all(n.endswith(".npy") for n in names):
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        return read_torch_zip(path)
    if _is_legacy_torch_pickle(path):
        if allow_torch_fallback:
            try:
                import torch  # optional: only to read legacy pickles
            except ImportError:
                torch = None
            if torch is not None:
                obj = torch.load(path, map_location="cpu", weights_only=True)
                return _torch_to_numpy(obj)
        raise CheckpointError(
            f"{path} is a legacy (pre-1.6, non-zip) PyTorch pickle, which this reader does not parse. "
            f"Re-save it once in the zip format with PyTorch: "
            f"python -c \"import torch; torch.save(torch.load('{path}', map_location='cpu', "
            f"weights_only=True), 'resaved.pth')\" (or install PyTorch and pass "
            f"allow_torch_fallback / --allow_torch).")
    raise CheckpointError(f"{path}: not a PyTorch zip checkpoint, a legacy torch pickle or an .npz")


def _torch_to_numpy(obj):
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):
        tensor = obj.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(obj, Mapping):
        return collections.OrderedDict((k, _torch_to_numpy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_torch_to_numpy(v) for v in obj)
    return obj


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


def load_torchvision_state(path, source: str = "auto",
                           allow_torch_fallback: bool = False) -> StateDict:
    """Reads a checkpoint file and returns its ResNet backbone under plain torchvision keys.

    Args:
      path: PyTorch zip checkpoint (torchvision, SwAV, MoCo, SimCLR wrappers) or .npz.
      source: "auto" | "torchvision" | "swav" | "moco" | "simclr".
      allow_torch_fallback: see :func:`read_checkpoint`.

    Returns:
      {"conv1.weight": [64, 3, 7, 7], "bn1.running_mean": [64], ...} float32 numpy arrays in torch
      layout (conv kernels OIHW), backbone keys only.
    """
    obj = read_checkpoint(path, allow_torch_fallback=allow_torch_fallback)
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
    channels and divided by n, so n identical frames give the single-frame response (METHOD.md §2.5).
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
      encoder: a ResNetEncoder (built on demand) of the checkpoint's depth (18/34/50/101); with
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
    missing = set(key_map) - set(state)
    unexpected = set(state) - set(key_map)
    if missing or unexpected:
        parts = [f"{where} does not match the ResNet-{encoder.num_layers} encoder "
                 f"'{encoder.name}' ({len(key_map)} backbone tensors)."]
        if missing:
            parts.append(f"Missing keys ({len(missing)}): {_list_keys(missing)}.")
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}.")
        if unexpected and any("." in k and not _BACKBONE_KEY.match(k) for k in unexpected):
            parts.append("Prefixed or head keys: read the file with load_torchvision_state (or "
                         "tools/convert_resnet_weights.py), which strips wrappers and heads.")
        raise CheckpointError(" ".join(parts))
    converted, errors = {}, []
    for key, variable in key_map.items():
        try:
            converted[key] = torch_to_keras_value(key, state[key], variable.shape)
        except CheckpointError as error:
            errors.append(str(error))
    if errors:
        raise CheckpointError(f"{where}: {len(errors)} tensors do not fit the ResNet-"
                              f"{encoder.num_layers} encoder: " + "; ".join(errors[:10]))
    for key, variable in key_map.items():
        variable.assign(converted[key])
    return len(key_map)


def save_state_npz(state: Mapping[str, np.ndarray], path) -> None:
    """Writes {torchvision key: array} as an uncompressed .npz (float32, torch layout), atomically."""
    path = os.fspath(path)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v, np.float32) for k, v in sorted(state.items())})
    os.replace(tmp, path)
