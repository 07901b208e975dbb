"""Depth from a .tflite file on a device: numpy + a TFLite runtime, no TensorFlow.

    from edge import runtime
    model = runtime.load("depth_int8.tflite", num_threads=4)        # CPU (XNNPACK)
    model = runtime.load("depth_fp16.tflite", delegate="gpu")      # GPU delegate (Jetson / Android)
    depth = model.predict(rgb)        # [H, W, 3] uint8 RGB, any size -> [H, W] float32 depth

Runtimes, first found wins: ``ai-edge-litert`` (LiteRT, the maintained one), ``tflite-runtime``
(stops at 2.14 and fails under numpy 2 when the interpreter is *created*, so creation is guarded
too), then ``tf.lite`` if TensorFlow happens to be installed.

The frame is prepared exactly as in training (``edge.resample``: /255, lanczos3 with antialiasing to the
network's size, clip); the network's half-resolution disparity is resized bilinearly to the frame's
size and inverted, the references' evaluation recipe. Sizes, depth range and normalisation come
from the metadata the exporter embeds in the file (``edge.metadata``). Depth is in the network's
units: relative for a monocular model (see the metadata's ``depth_scale``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge import metadata as tflite_metadata
from edge import resample

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
        "GPU delegate and pass its .so path; on Android use LiteRT's GPU delegate. No GPU delegate "
        "ships for Linux x86.")


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


class DepthModel:
    """A loaded depth network. ``predict(image)`` -> depth; ``network(batch)`` -> raw disparity.

    Attributes:
      input_size: (height, width) the network runs at.
      metadata: the exporter's metadata (dict).
      runtime: which runtime loaded it ("ai-edge-litert", "tflite-runtime", "tf.lite").
    """

    def __init__(self, interpreter, runtime: str, metadata: Dict, path: str = ""):
        self.interpreter = interpreter
        self.runtime = runtime
        self.metadata = metadata
        self.path = path
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]
        shape = tuple(int(d) for d in self._input["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ValueError(f"{path}: expected one [1, h, w, 3] input, found {list(shape)}")
        self.input_size: Tuple[int, int] = (shape[1], shape[2])
        self.min_depth = float(metadata["min_depth"])
        self.max_depth = float(metadata["max_depth"])

    def network(self, image: np.ndarray) -> np.ndarray:
        """The network alone: ``[h, w, 3]`` float32 in [0, 1] at ``input_size`` -> ``[h/2, w/2]``
        float32 disparity (1 / depth)."""
        image = np.asarray(image, np.float32)
        if image.shape != self.input_size + (3,):
            raise ValueError(f"image: expected {list(self.input_size) + [3]}, got {list(image.shape)}")
        scale, zero_point = self._input["quantization"]
        if self._input["dtype"] == np.float32:
            tensor = image[None]
        else:  # integer input: quantise with the tensor's own parameters
            info = np.iinfo(self._input["dtype"])
            tensor = np.clip(np.round(image / scale + zero_point), info.min, info.max)
            tensor = tensor.astype(self._input["dtype"])[None]
        self.interpreter.set_tensor(self._input["index"], tensor)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output["index"])[0, ..., 0]
        if out.dtype != np.float32:
            scale, zero_point = self._output["quantization"]
            out = (out.astype(np.float32) - zero_point) * scale
        return out

    def predict_disparity(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB -> ``[H, W]`` float32 disparity (1 / depth) at the image's size."""
        prepared = resample.prepare_image(image, self.input_size)
        disparity = self.network(prepared)
        disparity = resample.resize(disparity, image.shape[:2], "bilinear", antialias=False)
        # An integer output can round to 0: keep within the trained range before inverting.
        return np.clip(disparity, 1.0 / self.max_depth, 1.0 / self.min_depth)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB frame of any size -> ``[H, W]`` float32 depth (network units)."""
        return (1.0 / self.predict_disparity(image)).astype(np.float32)


def load(model_path, delegate=None, num_threads: Optional[int] = None,
         delegate_options: Optional[Dict] = None) -> DepthModel:
    """Loads a .tflite written by ``python -m tripled_tf.export --format=tflite``.

    Args:
      model_path: the .tflite file.
      delegate: None (CPU; XNNPACK is applied automatically), "gpu" (the GPU delegate library under
        one of ``GPU_DELEGATE_LIBRARIES``), or a path to a delegate .so.
      num_threads: CPU threads (None: the runtime's default).
      delegate_options: passed to ``load_delegate``.
    Raises:
      FileNotFoundError, ValueError (not one of our models), RuntimeUnavailableError.
    """
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"{model_path}: model file not found")
    values = tflite_metadata.read_metadata(model_path)
    if values is None:
        raise ValueError(f"{model_path}: no tripled_tf metadata (export it with python -m tripled_tf.export)")
    interpreter, runtime = make_interpreter(model_path, delegate, num_threads, delegate_options)
    return DepthModel(interpreter, runtime, values, str(model_path))


def available_runtimes() -> Sequence[str]:
    """Names of the importable runtimes, preferred first."""
    return [name for name, _, _ in _backends([])]
