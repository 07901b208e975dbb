"""SavedModel -> TFLite: quantisation modes, the float disparity head, metadata, GPU-delegate check.

Needs TensorFlow (it runs where the model is exported, not on the device).

Modes (``QUANTIZE_MODES``):
  none     float32 weights and activations.
  fp16     float16 weights (dequantised to float32 on the CPU; the GPU delegate runs them in fp16).
  dynamic  int8 weights, float activations (dynamic-range quantisation; no calibration data).
  int8     int8 weights and activations calibrated on a representative dataset (full-integer body),
           float32 input and output. The disparity head (the last convolution, its sigmoid and the
           scaling to 1 / depth) is kept in float: an int8 sigmoid has 256 levels on [0, 1], and with
           the default depth range (0.1 .. 100 m, σ = 0.01 at 10 m) that leaves a handful of levels for
           everything beyond a few metres. ``integer_io=True`` makes input and output uint8 as well
           (for integer-only accelerators); the float head is then given up, and the runtime dequantises.
"""
from __future__ import annotations

import json
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from tripled_edge import gpu_compat
from tripled_edge import metadata as tflite_metadata

QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8")
MODEL_INPUT_SIGNATURE = "model_input"  # tripled_tf.serving's fixed-size network signature


def _output_head_tensor_names(float_model: bytes) -> List[str]:
    """Names of the tensors from the last convolution to the model output (the disparity head), in a
    float flatbuffer (also one calibrated but not yet quantised)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(float_model, 0)
    graph = model.subgraphs[0]
    codes = gpu_compat.opcode_names(model)
    producer = {}
    for op in graph.operators:
        for index in op.outputs:
            producer[index] = op
    names, tensor = [], graph.outputs[0]
    while tensor in producer:
        op = producer[tensor]
        names.append(graph.tensors[tensor].name.decode())
        if codes[op.opcodeIndex] == "CONV_2D":
            break
        tensor = op.inputs[0]
    return names


def convert(saved_model_dir: str, quantize: str = "none",
            representative_images: Optional[Callable[[], Iterable[np.ndarray]]] = None,
            integer_io: bool = False, signature_key: str = MODEL_INPUT_SIGNATURE) -> bytes:
    """Converts the fixed-size signature of an exported SavedModel to a TFLite flatbuffer.

    Args:
      saved_model_dir: written by ``tripled_tf.serving`` with ``batch_size=1``.
      quantize: one of ``QUANTIZE_MODES``.
      representative_images: for int8, a callable returning an iterable of ``[1, h, w, 3]`` float32
        images in [0, 1] (frames of the training data, prepared as in training).
      integer_io: int8 only: uint8 input (the image as is: scale 1/255) and uint8 output.
      signature_key: the signature to convert (default the fixed-size ``model_input``).
    """
    import tensorflow as tf

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if integer_io and quantize != "int8":
        raise ValueError("integer input/output needs --quantize=int8")
    if quantize == "int8" and representative_images is None:
        raise ValueError("int8 quantisation needs representative images (calibration data)")
    key = signature_key

    def converter():
        c = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[key])
        if quantize != "none":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "fp16":
            c.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            c.representative_dataset = lambda: ([np.asarray(x, np.float32)] for x in representative_images())
            c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
            if integer_io:
                c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                c.inference_input_type = tf.uint8
                c.inference_output_type = tf.uint8
        return c

    if quantize != "int8" or integer_io:
        return converter().convert()
    # Float head, int8 body: selective quantisation through the quantisation debugger's deny-list
    # (the documented route; the converter itself has no per-layer switch). The head's tensor names
    # are read from the debugger's own calibrated (still float) model, and the deny-list is set
    # afterwards: this calibrates once and converts the SavedModel once (a separate float conversion
    # only for the names cost ~3.4 s per export of a ResNet-18 network); same bytes either way.
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter(), debug_dataset=lambda: ([np.asarray(x, np.float32)]
                                                      for x in representative_images()))
    head = _output_head_tensor_names(debugger.calibrated_model)
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=head)
    return debugger.get_nondebug_quantized_model()


def with_metadata(model: bytes, values: Dict) -> bytes:
    """The flatbuffer with ``values`` (JSON) embedded as metadata ``tripled_tf`` (read back on the
    device by :func:`tripled_edge.metadata.read_metadata`, without TensorFlow)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    tree = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(values, sort_keys=True).encode(), np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = tflite_metadata.METADATA_NAME
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = [m for m in (tree.metadata or []) if m.name != entry.name.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))
