"""Metadata embedded in our .tflite files, read without TensorFlow (a ~50-line flatbuffer reader).

The exporter stores a JSON object (input size, normalisation, depth range, intrinsics; see
``tripled_tf.serving.export_metadata``) in the model's ``metadata`` list under the name
``tripled_tf``, so a deployed file carries what is needed to use it and cannot be separated from it.
Only the few tables on the path Model.metadata -> Metadata{name, buffer} -> Model.buffers[i].data
are read (schema: tensorflow/compiler/mlir/lite/schema/schema.fbs).
"""
from __future__ import annotations

import json
import pathlib
import struct
from typing import Dict, Optional, Union

METADATA_NAME = "tripled_tf"
FILE_IDENTIFIER = b"TFL3"

# Field indices in the schema's tables.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


def _u16(data, at): return struct.unpack_from("<H", data, at)[0]
def _u32(data, at): return struct.unpack_from("<I", data, at)[0]
def _u64(data, at): return struct.unpack_from("<Q", data, at)[0]


def _field(data, table: int, index: int) -> Optional[int]:
    """Position of field ``index`` of the table at ``table``, or None when absent (default)."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    slot = 4 + 2 * index
    if slot >= _u16(data, vtable):
        return None
    offset = _u16(data, vtable + slot)
    return table + offset if offset else None


def _deref(data, at: int) -> int:
    return at + _u32(data, at)


def _vector(data, at: int):
    start = _deref(data, at)
    return start + 4, _u32(data, start)


def read_metadata(model: Union[str, pathlib.Path, bytes], name: str = METADATA_NAME) -> Optional[Dict]:
    """The JSON object stored under ``name`` in a .tflite file (path or bytes), or None.

    Raises:
      ValueError: not a TFLite flatbuffer.
    """
    data = model if isinstance(model, (bytes, bytearray, memoryview)) else pathlib.Path(model).read_bytes()
    if len(data) < 8 or bytes(data[4:8]) != FILE_IDENTIFIER:
        raise ValueError("not a TFLite model (no TFL3 file identifier)")
    root = _deref(data, 0)
    entries = _field(data, root, _MODEL_METADATA)
    buffers = _field(data, root, _MODEL_BUFFERS)
    if entries is None or buffers is None:
        return None
    start, count = _vector(data, entries)
    for i in range(count):
        entry = _deref(data, start + 4 * i)
        name_at = _field(data, entry, _METADATA_NAME)
        if name_at is None:
            continue
        text_start, length = _vector(data, name_at)
        if bytes(data[text_start:text_start + length]).decode() != name:
            continue
        buffer_at = _field(data, entry, _METADATA_BUFFER)
        index = _u32(data, buffer_at) if buffer_at is not None else 0
        buffers_start, _ = _vector(data, buffers)
        buffer = _deref(data, buffers_start + 4 * index)
        data_at = _field(data, buffer, _BUFFER_DATA)
        if data_at is not None:
            payload_start, size = _vector(data, data_at)
            payload = bytes(data[payload_start:payload_start + size])
        else:  # models over 2 GB keep buffers after the flatbuffer: offset / size fields
            offset_at, size_at = _field(data, buffer, _BUFFER_OFFSET), _field(data, buffer, _BUFFER_SIZE)
            if offset_at is None or size_at is None:
                return None
            offset = _u64(data, offset_at)
            payload = bytes(data[offset:offset + _u64(data, size_at)])
        return json.loads(payload.decode())
    return None
