"""PyTorch checkpoint files read without PyTorch: the zip archive (torch >= 1.6) and the legacy stream
(torch < 1.6; the published Monodepth2, FeatDepth, SwAV and MoCo files), and .npz files.

:func:`read_checkpoint` unpickles with a restricted unpickler: the only callables the pickle may reach
are the tensor rebuild functions and ``collections.OrderedDict``; any other global becomes an inert
placeholder object, so loading never executes code from the file. Tensors come back as numpy arrays.
The encoder loader (:mod:`tripled_tf.models.pretrained`) and the model converters
(:mod:`tripled_tf.models.published`, ``python -m tripled_tf.convert``) read through it.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

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

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_LEGACY_TORCH_MAGIC = _LEGACY_MAGIC_NUMBER.to_bytes(10, "little")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not hold the expected ResNet backbone."""


# --------------------------------------------------------------------------------------------------
# PyTorch checkpoint reader (zip archive and legacy stream), without PyTorch
#
# Both serialisations pickle the saved object with every tensor as a call to a torch rebuild function
# on a "persistent id" naming its storage; they differ in where the storages' bytes live:
#   zip (torch >= 1.6):  <root>/data.pkl, <root>/data/<key> (one raw file per storage),
#                        <root>/byteorder ("little" / "big"; absent = little);
#   legacy (torch < 1.6, or _use_new_zipfile_serialization=False): one stream of five pickles and
#                        the raw storages: the magic number, the protocol version (1001), a sys_info
#                        dict, the object, the sorted list of storage keys; then, per key in that
#                        order, an int64 element count and the elements, little-endian.
# The unpickler below therefore resolves storages lazily: unpickling yields _TensorRef placeholders,
# which are replaced by numpy arrays once the storage bytes are at hand.


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


@dataclasses.dataclass
class _StorageRef:
    """A storage named by a persistent id: ``key`` (its file / stream key), dtype, element count,
    and for legacy views (offset, size) into the root storage."""
    key: str
    dtype: object
    numel: Optional[int]
    view: Optional[Tuple[int, int]] = None


@dataclasses.dataclass
class _TensorRef:
    """A tensor to build once its storage is read: torch._utils._rebuild_tensor_v2's arguments."""
    storage: _StorageRef
    offset: int
    size: Tuple[int, ...]
    stride: Tuple[int, ...]


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype("<u4") << 16).view("<f4")


def _storage_dtype(storage_type) -> object:
    type_name = getattr(storage_type, "name", repr(storage_type))
    if type_name not in _STORAGE_DTYPES:
        raise CheckpointError(f"unsupported storage type {type_name}; supported: "
                              f"{sorted(_STORAGE_DTYPES)}")
    return _STORAGE_DTYPES[type_name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's object pickle, executing nothing from the file: the only
    callables reachable are the tensor rebuild functions and ``collections.OrderedDict``; storages
    and tensors become :class:`_StorageRef` / :class:`_TensorRef`; every other global an inert
    placeholder."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    }

    def __init__(self, file):
        super().__init__(file)
        self.storages: Dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        return _placeholder_class(module, name)

    def persistent_load(self, pid):
        # zip:    ("storage", storage_type, key, location, numel)
        # legacy: ("storage", storage_type, root_key, location, numel, view_metadata), view_metadata
        #         None or (view_key, offset, size) into the root storage.
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            what = pid[0] if isinstance(pid, tuple) and pid else pid
            raise CheckpointError(f"unsupported persistent id {what!r} (a whole pickled module "
                                  f"rather than a state_dict?)")
        dtype, key, numel = _storage_dtype(pid[1]), str(pid[2]), pid[4]
        root = self.storages.setdefault(key, _StorageRef(key, dtype, None if numel is None
                                                         else int(numel)))
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return root
        return _StorageRef(key, dtype, int(view[2]), (int(view[1]), int(view[2])))


def _decode_storage(raw: bytes, dtype, big_endian: bool) -> np.ndarray:
    if dtype == "bfloat16":
        return _bfloat16_to_float32(np.frombuffer(raw, ">u2" if big_endian else "<u2"))
    if big_endian and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))


def _itemsize(dtype) -> int:
    return 2 if dtype == "bfloat16" else dtype.itemsize


def _build_tensor(ref: _TensorRef, storages: Mapping[str, np.ndarray]) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 on a numpy storage: a strided view, copied to own its data."""
    storage = storages[ref.storage.key]
    if ref.storage.view is not None:
        start, count = ref.storage.view
        storage = storage[start:start + count]
    size, stride, offset = ref.size, ref.stride, ref.offset
    if not size:
        if offset >= storage.size:
            raise CheckpointError(f"scalar at offset {offset} overruns its storage of "
                                  f"{storage.size} elements")
        return storage[offset].copy()
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size or min(stride) < 0:
        raise CheckpointError(f"tensor of size {list(size)} / stride {list(stride)} at offset "
                              f"{offset} overruns its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return np.array(view)


def _resolve(obj, storages: Mapping[str, np.ndarray]):
    """``obj`` with every _TensorRef replaced by its numpy array (dicts, lists, tuples walked)."""
    if isinstance(obj, _TensorRef):
        return _build_tensor(obj, storages)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _resolve(v, storages)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _resolve(v, storages) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, storages) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, storages) for v in obj)
    return obj


def read_torch_zip(path: str):
    """Reads a PyTorch zip checkpoint (``torch.save`` >= 1.6) without PyTorch.

    Returns the saved object with every tensor as a numpy array (float32/float16/float64/int64/...
    as stored; bfloat16 is widened to float32). Objects other than tensors, dicts, lists, tuples and
    plain Python values come back as inert placeholders.
    """
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        pickles = sorted((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), key=len)
        if not pickles:
            raise CheckpointError(f"{path}: a zip file without data.pkl is not a torch checkpoint")
        root = pickles[0][:-len("data.pkl")].rstrip("/")
        prefix = f"{root}/" if root else ""
        big_endian = (f"{prefix}byteorder" in names
                      and archive.read(f"{prefix}byteorder").strip() == b"big")
        unpickler = _TorchUnpickler(io.BytesIO(archive.read(pickles[0])))
        obj = unpickler.load()
        storages = {}
        for key, ref in unpickler.storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointError(f"{path}: storage {name} is missing from the archive")
            storages[key] = _decode_storage(archive.read(name), ref.dtype, big_endian)
    return _resolve(obj, storages)


def _read_exactly(stream, count: int, what: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise EOFError(f"{what}: expected {count} bytes, the file ends after {len(data)}")
    return data


def read_torch_legacy(path: str):
    """Reads a legacy (torch < 1.6 or ``_use_new_zipfile_serialization=False``) checkpoint without
    PyTorch; returns what :func:`read_torch_zip` returns."""
    with open(path, "rb") as stream:
        magic = _TorchUnpickler(stream).load()
        if magic != _LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        protocol = _TorchUnpickler(stream).load()
        if protocol != _LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: legacy torch protocol version {protocol!r}, expected "
                                  f"{_LEGACY_PROTOCOL_VERSION}")
        sys_info = _TorchUnpickler(stream).load()
        if isinstance(sys_info, Mapping) and sys_info.get("little_endian") is False:
            raise CheckpointError(f"{path}: written on a big-endian machine, which is not supported")
        unpickler = _TorchUnpickler(stream)
        obj = unpickler.load()
        keys = _TorchUnpickler(stream).load()
        if not isinstance(keys, list):
            raise CheckpointError(f"{path}: no storage key list after the pickled object")
        storages = {}
        for key in keys:
            key = str(key)
            if key not in unpickler.storages:
                raise CheckpointError(f"{path}: storage {key} is listed but never used")
            ref = unpickler.storages[key]
            numel = int(np.frombuffer(_read_exactly(stream, 8, f"storage {key} size"), "<i8")[0])
            if ref.numel is not None and numel != ref.numel:
                raise CheckpointError(f"{path}: storage {key} holds {numel} elements, the pickle "
                                      f"says {ref.numel}")
            raw = _read_exactly(stream, numel * _itemsize(ref.dtype), f"storage {key}")
            storages[key] = _decode_storage(raw, ref.dtype, big_endian=False)
        missing = sorted(set(unpickler.storages) - set(storages))
        if missing:
            raise CheckpointError(f"{path}: storages {missing[:5]} are used but not stored")
    return _resolve(obj, storages)


def _is_legacy_torch_pickle(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
    return head[:1] == b"\x80" and _LEGACY_TORCH_MAGIC in head


def read_checkpoint(path):
    """Reads a checkpoint file without PyTorch: a PyTorch checkpoint in either serialisation (zip,
    torch >= 1.6; legacy, torch < 1.6) or an .npz.

    Args:
      path: file path (.pth / .pt / .pth.tar / .tar / .npz; the content decides, not the suffix).

    Returns:
      the saved object (usually a dict) with tensors as numpy arrays.

    Raises:
      CheckpointError naming the file: missing, truncated (e.g. half-downloaded), or not a checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if names and all(n.endswith(".npy") for n in names):
                with np.load(path, allow_pickle=False) as npz:
                    return {k: npz[k] for k in npz.files}
            return read_torch_zip(path)
        if head == b"PK\x03\x04":
            raise CheckpointError(f"{path}: truncated or corrupt zip archive (a half-finished "
                                  f"download?); download it again")
        if _is_legacy_torch_pickle(path):
            return read_torch_legacy(path)
    except CheckpointError as error:
        message = str(error)
        raise CheckpointError(message if message.startswith(path) else f"{path}: {message}") from None
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError, OSError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint (a half-finished "
                              f"download?): {type(error).__name__}: {error}") from None
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (zip or legacy format) or an .npz")
