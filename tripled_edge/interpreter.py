"""The TFLite Interpreter API behind tripled_edge.runtime: LiteRT, then tflite-runtime, then tf.lite.

``runtime`` runs on LiteRT's ``CompiledModel`` API; it comes here where that API is missing
(``tflite-runtime``, an old LiteRT) and for ``delegate=`` (a delegate .so, e.g. a TFLite GPU delegate
built for Jetson). ``tflite-runtime`` stops at 2.14 and fails under numpy 2 when the interpreter is
*created*, so creation is guarded too; ``tf.lite`` only if TensorFlow happens to be installed.
No TensorFlow needed.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

# Names of the GPU delegate library on the platforms that ship or build one.
GPU_DELEGATE_LIBRARIES = ("libtensorflowlite_gpu_delegate.so", "libtensorflowlite_gpu_gl.so",
                          "libLiteRtGpuAccelerator.so")


class RuntimeUnavailableError(RuntimeError):
    """No TFLite runtime could load the model (the message lists what each one said)."""


def _import_litert():
    from ai_edge_litert.interpreter import Interpreter, load_delegate
    return Interpreter, load_delegate


def _import_tflite_runtime():
    from tflite_runtime.interpreter import Interpreter, load_delegate
    return Interpreter, load_delegate


def _import_tf_lite():
    import tensorflow as tf  # only if it happens to be installed: never required
    return tf.lite.Interpreter, tf.lite.experimental.load_delegate


RUNTIMES = (("ai-edge-litert", _import_litert), ("tflite-runtime", _import_tflite_runtime),
            ("tf.lite", _import_tf_lite))


def _backends(errors: List[str]):
    """Yields (name, Interpreter class, load_delegate) of each importable runtime, preferred first,
    imported only when reached; import failures are appended to ``errors``."""
    for name, importer in RUNTIMES:
        try:
            interpreter_class, load_delegate = importer()
        except ImportError as error:
            errors.append(f"{name}: {error}")
            continue
        yield name, interpreter_class, load_delegate


def _load_delegates(load_delegate, delegate, options: Optional[Dict]) -> List:
    if delegate is None:
        return []
    candidates = GPU_DELEGATE_LIBRARIES if delegate == "gpu" else (str(delegate),)
    errors = []
    for library in candidates:
        try:
            return [load_delegate(library, options or {})]
        except (ValueError, OSError, RuntimeError) as error:
            errors.append(f"{library}: {error}")
    raise RuntimeUnavailableError(
        f"delegate {delegate!r} could not be loaded ({'; '.join(errors)}). On Jetson build the TFLite "
        "GPU delegate and pass its .so path; elsewhere use accelerator='gpu' (LiteRT's GPU accelerator).")


def make_interpreter(model_path, delegate=None, num_threads: Optional[int] = None,
                     delegate_options: Optional[Dict] = None):
    """(interpreter with tensors allocated, runtime name) from the first runtime that works."""
    errors: List[str] = []
    for name, interpreter_class, load_delegate in _backends(errors):
        try:
            delegates = _load_delegates(load_delegate, delegate, delegate_options)
            interpreter = interpreter_class(model_path=str(model_path), num_threads=num_threads,
                                            experimental_delegates=delegates or None)
            interpreter.allocate_tensors()
            return interpreter, name
        except RuntimeUnavailableError:
            raise
        except (ValueError, RuntimeError, AttributeError, ImportError) as error:
            # tflite-runtime under numpy 2 fails here ("_ARRAY_API not found"), not at import
            errors.append(f"{name}: {error}")
    raise RuntimeUnavailableError(f"{model_path}: no TFLite runtime could load it: {'; '.join(errors)} "
                                  "(pip install ai-edge-litert)")


class InterpreterEngine:
    """One input, one output through the Interpreter API. ``input`` / ``output``: dicts with
    ``shape``, ``dtype`` (numpy type) and ``quantization`` ((scale, zero point); (0.0, 0) for float)."""

    def __init__(self, interpreter, runtime: str):
        self.interpreter = interpreter
        self.runtime = runtime
        self.accelerator = "cpu"
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])


def importable_runtimes() -> List[str]:
    """Names of the importable runtimes, preferred first."""
    return [name for name, _, _ in _backends([])]
