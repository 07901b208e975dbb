"""Will the TFLite GPU delegate take the whole model? An explicit check of every operator.

``tf.lite.experimental.Analyzer(gpu_compatibility=True)`` is not a usable gate in TF 2.21: it calls
models with GATHER, TOPK_V2, CUMSUM or 5-D RESHAPE/TILE "compatible" (measured with TF 2.21). This module walks
the flatbuffer instead and applies the delegate's own rules, taken from its source
(LiteRT ``tflite/delegates/gpu/common/model_builder.cc`` ``NewOperationParser`` and
``tflite/tools/versioning/gpu_compatibility.cc``):

- the operator must have a GPU parser, at most the version the parser accepts;
- inputs other than the data input (paddings, sizes, shapes, axes, weights of PAD / MIRROR_PAD /
  RESIZE_* / RESHAPE / MEAN / STRIDED_SLICE / SLICE) must be constant;
- MIRROR_PAD only in REFLECT mode; RESIZE_BILINEAR not with align_corners and half_pixel_centers
  together; STRIDED_SLICE without ellipsis / new-axis / shrink-axis masks and with positive strides;
- every non-constant tensor has rank <= 4, a static shape, and type float32 / float16 / int8 / uint8
  (the delegate dequantises int8 models and runs them in float).

Any operator failing a rule would run on the CPU, which splits the graph and usually makes the GPU
slower than the CPU alone; ``python -m tripled_tf.export`` refuses such a model unless
``--allow_cpu_ops``. Needs TensorFlow (its flatbuffer schema), i.e. runs at export time.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

# Builtin operator -> highest version the GPU delegate accepts (LiteRT model_builder.cc). DEPTH_TO_SPACE:
# version 2 (int8) as LiteRT 2.3's GPU accelerator takes it (tests/test_edge_gpu.py, the exported int8
# upsampling); the accelerator's verdict is the reference where an adapter exists.
GPU_OPS: Dict[str, int] = {
    "ABS": 2, "ADD": 2, "ADD_N": 1, "AVERAGE_POOL_2D": 2, "BATCH_MATMUL": 1, "CAST": 1,
    "CONCATENATION": 2, "CONV_2D": 6, "COS": 1, "DEPTHWISE_CONV_2D": 6, "DEPTH_TO_SPACE": 2,
    "DEQUANTIZE": 3, "DIV": 2, "ELU": 2, "EQUAL": 1, "EXP": 2, "FLOOR": 1, "FLOOR_DIV": 1,
    "FLOOR_MOD": 1, "FULLY_CONNECTED": 9, "GREATER": 1, "GREATER_EQUAL": 1, "HARD_SWISH": 1,
    "LEAKY_RELU": 2, "LESS": 1, "LESS_EQUAL": 1, "LOG": 1, "LOGISTIC": 2, "MAXIMUM": 2,
    "MAX_POOL_2D": 2, "MEAN": 1, "MINIMUM": 2, "MIRROR_PAD": 2, "MUL": 3, "NEG": 2, "NOT_EQUAL": 1,
    "PACK": 1, "PAD": 2, "PADV2": 2, "POW": 1, "PRELU": 1, "QUANTIZE": 2, "REDUCE_MAX": 1,
    "REDUCE_MIN": 1, "REDUCE_PROD": 1, "RELU": 2, "RELU6": 2, "RELU_N1_TO_1": 1, "RESHAPE": 1,
    "RESIZE_BILINEAR": 3, "RESIZE_NEAREST_NEIGHBOR": 3, "RSQRT": 2, "SIN": 1, "SLICE": 2,
    "SOFTMAX": 2, "SPACE_TO_DEPTH": 2, "SPLIT": 2, "SPLIT_V": 1, "SQRT": 2, "SQUARE": 1,
    "SQUARED_DIFFERENCE": 1, "STRIDED_SLICE": 4, "SUB": 2, "SUM": 1, "TANH": 2, "TRANSPOSE": 4,
    "TRANSPOSE_CONV": 3,
}
# Operator -> input indices that must be constant (the delegate reads them at build time).
CONSTANT_INPUTS: Dict[str, tuple] = {
    "PAD": (1,), "PADV2": (1, 2), "MIRROR_PAD": (1,), "RESIZE_BILINEAR": (1,),
    "RESIZE_NEAREST_NEIGHBOR": (1,), "RESHAPE": (1,), "MEAN": (1,), "SUM": (1,),
    "STRIDED_SLICE": (1, 2, 3), "SLICE": (1, 2), "TRANSPOSE": (1,), "DEPTHWISE_CONV_2D": (1,),
}
ALLOWED_TENSOR_TYPES = ("FLOAT32", "FLOAT16", "INT8", "UINT8")


def _enum_names(enum_class) -> Dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def opcode_names(tree) -> List[str]:
    """Builtin operator name of each entry of a ``schema.ModelT``'s operator codes ("CUSTOM" for
    custom ones); ops older than the extended-code schema keep theirs in ``deprecatedBuiltinCode``."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = _enum_names(schema.BuiltinOperator)
    return [names.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "CUSTOM")
            for c in tree.operatorCodes]


def operator_list(model: bytes) -> List[str]:
    """Builtin operator names of the main subgraph, in execution order."""
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    codes = opcode_names(tree)
    return [codes[op.opcodeIndex] for op in tree.subgraphs[0].operators]


def gpu_incompatibilities(model: bytes) -> List[str]:
    """One line per operator (or tensor) the GPU delegate would not take; empty when it takes all."""
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    codes = opcode_names(tree)
    type_names = _enum_names(schema.TensorType)
    problems: List[str] = []
    if len(tree.subgraphs) != 1:
        problems.append(f"model has {len(tree.subgraphs)} subgraphs (control flow): the GPU delegate "
                        "takes one")
    graph = tree.subgraphs[0]

    def constant(index: int) -> bool:
        if index < 0:
            return True  # optional input left out
        buffer = tree.buffers[graph.tensors[index].buffer]
        return buffer is not None and buffer.data is not None and len(buffer.data) > 0

    def tensor_problem(index: int) -> str:
        tensor = graph.tensors[index]
        shape = list(tensor.shape if tensor.shape is not None else [])
        signature = list(tensor.shapeSignature) if tensor.shapeSignature is not None else shape
        kind = type_names.get(tensor.type, str(tensor.type))
        if len(shape) > 4:
            return f"rank {len(shape)} tensor {tensor.name.decode()!r} (at most 4)"
        if any(d < 0 for d in signature):
            return f"dynamic shape {signature} of {tensor.name.decode()!r} (static shapes only)"
        if kind not in ALLOWED_TENSOR_TYPES:
            return f"{kind} tensor {tensor.name.decode()!r}"
        return ""

    for position, op in enumerate(graph.operators):
        code = tree.operatorCodes[op.opcodeIndex]
        name = codes[op.opcodeIndex]
        where = f"op {position} {name}"
        if name not in GPU_OPS:
            problems.append(f"{where}: not supported by the GPU delegate")
            continue
        if code.version > GPU_OPS[name]:
            problems.append(f"{where}: version {code.version} (the GPU delegate takes <= {GPU_OPS[name]})")
        for slot in CONSTANT_INPUTS.get(name, ()):
            if slot < len(op.inputs) and not constant(op.inputs[slot]):
                problems.append(f"{where}: input {slot} must be constant")
        options = op.builtinOptions
        if name == "MIRROR_PAD" and options is not None and options.mode != schema.MirrorPadMode.REFLECT:
            problems.append(f"{where}: SYMMETRIC mode (only REFLECT is supported)")
        if name == "RESIZE_BILINEAR" and options is not None and options.alignCorners \
                and options.halfPixelCenters:
            problems.append(f"{where}: align_corners together with half_pixel_centers")
        if name == "STRIDED_SLICE" and options is not None:
            if options.ellipsisMask or options.newAxisMask or options.shrinkAxisMask:
                problems.append(f"{where}: ellipsis / new-axis / shrink-axis mask")
            if len(op.inputs) > 3 and constant(op.inputs[3]):
                buffer = tree.buffers[graph.tensors[op.inputs[3]].buffer]
                strides = np.frombuffer(bytes(bytearray(buffer.data)), np.int32)
                if np.any(strides <= 0):
                    problems.append(f"{where}: non-positive strides {strides.tolist()}")
        for index in list(op.inputs) + list(op.outputs):
            if index >= 0 and not constant(index):
                problem = tensor_problem(index)
                if problem:
                    problems.append(f"{where}: {problem}")
    return problems
