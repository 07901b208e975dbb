"""Writes PyTorch checkpoints without PyTorch, in both serialisations, for the reader's tests.

``save_torch(obj, path, legacy=False)`` lays out ``obj`` (dicts / lists / tuples of numpy arrays and
plain values) exactly as ``torch.save`` does: the zip archive of torch >= 1.6 (``archive/data.pkl``,
``archive/data/<key>``, ``archive/byteorder``, ``archive/version``) or, with ``legacy=True``, the stream
of torch < 1.6 (magic number, protocol 1001, sys_info, the object, the sorted storage keys, then each
storage as an int64 element count and its little-endian elements). Arrays become tensors: a rebuild
call on a persistent storage id, views (e.g. transposes) as strided tensors of their owner's storage.
The committed fixtures written by real torch (tests/fixtures/torch_*.pth) check the same reader
against PyTorch itself.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class _Global:
    """A reference to a global by name, pickled as GLOBAL without importing it (torch is absent)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only accepts callables as reduce functions
        raise AssertionError("never called")


class _Storage:
    def __init__(self, key, type_name, numel):
        self.key, self.type_name, self.numel = key, type_name, numel


_TYPE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
               np.dtype("float64"): "DoubleStorage", np.dtype("int64"): "LongStorage",
               np.dtype("int32"): "IntStorage", np.dtype("uint8"): "ByteStorage",
               np.dtype("bool"): "BoolStorage"}


class _TorchPickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, storages, legacy):
        super().__init__(file, protocol=2)
        self.storages = storages  # key -> (numel, little-endian bytes)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            pid = ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None

    def _save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def _save_array(self, array):
        # A view (e.g. a transpose) is written as its owner's storage plus element strides, like a
        # non-contiguous torch tensor; anything else is written contiguously.
        owner = array
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        if not (owner.flags.c_contiguous and owner.size == array.size and owner.dtype == array.dtype
                and owner.ctypes.data == array.ctypes.data):
            array = owner = np.ascontiguousarray(array)
        key = str(len(self.storages))
        self.storages[key] = (owner.size, owner.astype(owner.dtype.newbyteorder("<")).tobytes())
        strides = tuple(s // array.itemsize for s in array.strides)
        storage = _Storage(key, _TYPE_NAMES[array.dtype], owner.size)
        self.save_reduce(_Global("torch._utils", "_rebuild_tensor_v2"),
                         (storage, 0, tuple(array.shape), strides, False, collections.OrderedDict()))

    dispatch[_Global] = _save_global_ref
    dispatch[np.ndarray] = _save_array


def save_torch(obj, path, legacy: bool = False, archive: str = "archive") -> None:
    """Writes ``obj`` the way ``torch.save`` does (see the module docstring)."""
    storages, buffer = {}, io.BytesIO()
    _TorchPickler(buffer, storages, legacy).dump(obj)
    if not legacy:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"{archive}/data.pkl", buffer.getvalue())
            z.writestr(f"{archive}/byteorder", "little")
            for key, (_, data) in storages.items():
                z.writestr(f"{archive}/data/{key}", data)
            z.writestr(f"{archive}/version", "3\n")
        return
    sys_info = {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, sys_info):
            pickle.dump(header, f, protocol=2)
        f.write(buffer.getvalue())
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            numel, data = storages[key]
            f.write(np.int64(numel).astype("<i8").tobytes())
            f.write(data)


def save_torch_zip(obj, path, archive="archive"):
    """``save_torch`` in the zip serialisation (torch >= 1.6)."""
    save_torch(obj, path, legacy=False, archive=archive)
