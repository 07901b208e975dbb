"""Depth from a .tflite file on a device: numpy + a TFLite runtime, no TensorFlow.

    from tripled_edge import runtime
    model = runtime.load("depth_int8.tflite", num_threads=4)          # CPU (XNNPACK)
    model = runtime.load("depth_fp16.tflite", accelerator="gpu")      # LiteRT's GPU accelerator
    model = runtime.load("depth_fp16.tflite", accelerator="auto")     # the GPU if it takes the model
    depth = model.predict(rgb)        # [H, W, 3] uint8 RGB, any size -> [H, W] float32 depth

Accelerators (``ACCELERATORS``), on LiteRT's ``CompiledModel`` API (``ai-edge-litert``):
  cpu   XNNPACK on the CPU.
  gpu   LiteRT's GPU accelerator (its GPU backend over WebGPU -> Vulkan / Metal / OpenCL). The whole
        graph must run on it: :class:`GpuUnavailableError` (one line) when there is no GPU adapter or
        when an operator would fall back to the CPU (a split graph is usually slower than the CPU).
  auto  the GPU when it takes the whole graph, otherwise the CPU, with one logged warning saying why.
When ``CompiledModel`` is missing (``tflite-runtime`` or an old LiteRT) the CPU path falls back to the
``Interpreter`` API (:mod:`tripled_edge.interpreter`: ``ai-edge-litert``, then ``tflite-runtime``, then
``tf.lite``); ``delegate=`` (a delegate .so, e.g. a TFLite GPU delegate built for Jetson) uses it too.

The frame is prepared exactly as in training (``tripled_edge.resample``: /255, lanczos3 with
antialiasing to the network's size, clip); the network's half-resolution disparity is resized
bilinearly to the frame's size and inverted, the references' evaluation recipe. Sizes, depth range
and normalisation come from the metadata the exporter embeds in the file (``tripled_edge.metadata``).
Depth is in the network's units: relative for a monocular model (see the metadata's ``depth_scale``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tripled_edge import metadata as tflite_metadata
from tripled_edge import resample
from tripled_edge.interpreter import (InterpreterEngine, RuntimeUnavailableError, importable_runtimes,
                                      make_interpreter)

ACCELERATORS = ("cpu", "gpu", "auto")
# What LiteRT's GPU accelerator says (on stderr) about each operator it refuses.
_GPU_REFUSAL_HEADER = "Following operations are not supported by GPU delegate:"
_NOT_ACCELERATED = "Some ops are not accelerated"

log = logging.getLogger(__name__)


class GpuUnavailableError(RuntimeUnavailableError):
    """accelerator="gpu": no GPU adapter, or the GPU accelerator does not take the whole graph.

    Attributes:
      adapter: whether a GPU adapter was found (False: no verdict on the graph).
      refused: the "OPERATOR: reason" lines of the operators the GPU refused.
    """

    def __init__(self, message: str, adapter: bool = True, refused: Sequence[str] = ()):
        super().__init__(message)
        self.adapter = adapter
        self.refused = list(refused)


# ------------------------------------------------------------------------------------------------
# LiteRT CompiledModel API (CPU and GPU accelerators)


def _import_compiled_model():
    from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options
    return CompiledModel, CpuOptions, HardwareAccelerator, Options


@contextlib.contextmanager
def _captured_native_stderr(lines: List[str]):
    """Collects what native code writes to file descriptor 2 meanwhile into ``lines``.

    LiteRT's accelerators report on stderr from C++ (dozens of INFO lines per model, and the list of
    operators the GPU refuses): kept out of the user's terminal, and parsed for the error message."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr (e.g. a daemon): nothing to capture
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


def gpu_refusals(log_lines: Sequence[str]) -> List[str]:
    """The "OPERATOR: reason" lines LiteRT's GPU accelerator logs for the operators it refuses."""
    refused, inside = [], False
    for line in log_lines:
        if _GPU_REFUSAL_HEADER in line:
            inside = True
            continue
        if inside:
            head = line.split(":", 1)[0]
            if head.isupper() and head.replace("_", "").isalnum():
                refused.append(line.strip())
            else:
                inside = False
    return refused


def _tensor_quantization(model_path, index: int) -> Tuple[float, int]:
    """(scale, zero point) of tensor ``index`` of the main subgraph; (0.0, 0) for a float tensor.
    CompiledModel's tensor details leave quantisation out; LiteRT ships the flatbuffer schema."""
    from ai_edge_litert import schema_py_generated as schema

    with open(model_path, "rb") as handle:
        model = schema.Model.GetRootAs(handle.read(), 0)
    quantization = model.Subgraphs(0).Tensors(index).Quantization()
    if quantization is None or quantization.ScaleLength() == 0:
        return 0.0, 0
    return float(quantization.Scale(0)), int(quantization.ZeroPoint(0))


class _CompiledEngine:
    """One input, one output through LiteRT's CompiledModel (buffers created once)."""

    def __init__(self, compiled, model_path, accelerator: str):
        self.compiled = compiled
        self.runtime = "ai-edge-litert"
        self.accelerator = accelerator
        key = next(iter(compiled.get_signature_list()))
        inputs, outputs = compiled.get_input_tensor_details(key), compiled.get_output_tensor_details(key)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{model_path}: expected one input and one output, found "
                             f"{list(inputs)} -> {list(outputs)}")
        self.input = self._details(next(iter(inputs.values())), model_path)
        self.output = self._details(next(iter(outputs.values())), model_path)
        self._inputs = compiled.create_input_buffers(0)
        self._outputs = compiled.create_output_buffers(0)
        self._output_size = int(np.prod(self.output["shape"]))

    @staticmethod
    def _details(details: Dict, model_path) -> Dict:
        return {"shape": np.array(details["shape"], np.int32), "dtype": np.dtype(details["dtype"]).type,
                "index": details["index"],
                "quantization": _tensor_quantization(model_path, details["index"])}

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self._inputs[0].write(tensor)
        self.compiled.run_by_index(0, self._inputs, self._outputs)
        values = self._outputs[0].read(self._output_size, self.output["dtype"])
        return values.reshape(self.output["shape"])


def _compile(model_path, accelerator: str, num_threads: Optional[int]) -> _CompiledEngine:
    """A CompiledModel engine on the CPU or (fully) on the GPU.

    Raises:
      ImportError: this LiteRT has no CompiledModel API.
      GpuUnavailableError: "gpu" without an adapter, or with operators the GPU refuses.
    """
    CompiledModel, CpuOptions, HardwareAccelerator, Options = _import_compiled_model()
    # Dawn (WebGPU) wants a runtime directory; a bare container or a service has none.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    hardware = HardwareAccelerator.GPU if accelerator == "gpu" else HardwareAccelerator.CPU
    options = Options(hardware_accelerators=hardware, cpu_options=CpuOptions(num_threads=num_threads or 0))
    native: List[str] = []
    try:
        with _captured_native_stderr(native):
            compiled = CompiledModel.from_file(str(model_path), options=options)
            fully = compiled.is_fully_accelerated()
    except RuntimeError as error:
        if accelerator != "gpu":
            raise RuntimeUnavailableError(f"{model_path}: LiteRT could not compile it for the CPU: "
                                          f"{' '.join(str(error).split())}") from None
        refused = gpu_refusals(native)
        if refused or _NOT_ACCELERATED in str(error):
            raise GpuUnavailableError(
                f"{model_path}: LiteRT's GPU accelerator does not take the whole graph ("
                + ("; ".join(dict.fromkeys(refused)) or "some operators would run on the CPU")
                + "); export it without --allow_cpu_ops, or use accelerator='auto' / 'cpu'",
                refused=list(dict.fromkeys(refused)) or [_NOT_ACCELERATED]) from None
        raise GpuUnavailableError(
            f"{model_path}: no GPU adapter for LiteRT's GPU accelerator (WebGPU found no Vulkan / Metal / "
            "OpenCL device; without a GPU, tools/install_software_gpu.sh installs Mesa's software "
            "Vulkan driver)", adapter=False) from None
    if accelerator == "gpu" and not fully:
        raise GpuUnavailableError(f"{model_path}: LiteRT's GPU accelerator does not take the whole "
                                  "graph; use accelerator='auto' / 'cpu'", refused=[_NOT_ACCELERATED])
    return _CompiledEngine(compiled, model_path, accelerator)


def _make_engine(model_path, accelerator: str, num_threads: Optional[int], delegate,
                 delegate_options: Optional[Dict]):
    if delegate is not None:
        if accelerator != "cpu":
            raise ValueError("pass either delegate= (Interpreter API) or accelerator=, not both")
        return InterpreterEngine(*make_interpreter(model_path, delegate, num_threads, delegate_options))
    if accelerator in ("gpu", "auto") and "tensorflow" in sys.modules:
        # Seen with Mesa's lavapipe: compiling for the GPU kills a process that has TensorFlow loaded
        # (a segmentation fault in the native GPU stack). Run the device code in its own process.
        reason = ("TensorFlow is loaded in this process and LiteRT's GPU accelerator crashes beside "
                  "it; run tripled_edge in a process without TensorFlow")
        if accelerator == "gpu":
            raise GpuUnavailableError(f"{model_path}: accelerator='gpu': {reason}", adapter=False)
        log.warning("accelerator='auto': running on the CPU: %s", reason)
    elif accelerator in ("gpu", "auto"):
        try:
            return _compile(model_path, "gpu", num_threads)
        except ImportError as error:
            reason = (f"LiteRT's CompiledModel API is not installed ({error}; pip install "
                      "ai-edge-litert)")
            if accelerator == "gpu":
                raise GpuUnavailableError(f"{model_path}: accelerator='gpu' needs {reason}",
                                          adapter=False) from None
        except GpuUnavailableError as error:
            if accelerator == "gpu":
                raise
            reason = str(error)
        log.warning("accelerator='auto': running on the CPU: %s", reason)
    try:
        return _compile(model_path, "cpu", num_threads)
    except ImportError:  # tflite-runtime / tf.lite / an old LiteRT: the Interpreter API
        return InterpreterEngine(*make_interpreter(model_path, None, num_threads))


class DepthModel:
    """A loaded depth network. ``predict(image)`` -> depth; ``network(batch)`` -> raw disparity.

    Attributes:
      input_size: (height, width) the network runs at.
      metadata: the exporter's metadata (dict).
      runtime: which runtime loaded it ("ai-edge-litert", "tflite-runtime", "tf.lite").
      accelerator: where it runs: "cpu" or "gpu" ("auto" resolved).
    """

    def __init__(self, engine, metadata: Dict, path: str = ""):
        self.engine = engine
        self.runtime = engine.runtime
        self.accelerator = engine.accelerator
        self.metadata = metadata
        self.path = path
        self._input = engine.input
        self._output = engine.output
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
        out = self.engine.run(tensor)[0, ..., 0]
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


def load(model_path, accelerator: str = "cpu", num_threads: Optional[int] = None, delegate=None,
         delegate_options: Optional[Dict] = None) -> DepthModel:
    """Loads a .tflite written by ``python -m tripled_tf.export --format=tflite``.

    Args:
      model_path: the .tflite file.
      accelerator: "cpu", "gpu" (the whole graph on LiteRT's GPU accelerator, or an error) or
        "auto" (the GPU when it takes the whole graph, else the CPU with a logged warning).
      num_threads: CPU threads (None: the runtime's default).
      delegate: Interpreter API with a delegate: "gpu" (a library under one of
        ``interpreter.GPU_DELEGATE_LIBRARIES``) or a path to a delegate .so (e.g. a TFLite GPU delegate built
        for Jetson).
      delegate_options: passed to ``load_delegate``.
    Raises:
      FileNotFoundError, ValueError (not one of our models, or a bad accelerator),
      GpuUnavailableError (accelerator="gpu"), RuntimeUnavailableError.
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"{model_path}: model file not found")
    values = tflite_metadata.read_metadata(model_path)
    if values is None:
        raise ValueError(f"{model_path}: no tripled_tf metadata (export it with python -m tripled_tf.export)")
    engine = _make_engine(model_path, accelerator, num_threads, delegate, delegate_options)
    return DepthModel(engine, values, str(model_path))


def _gpu_verdict_here(model_path) -> Tuple[bool, List[str]]:
    try:
        _compile(model_path, "gpu", None)
    except ImportError:
        return False, []
    except GpuUnavailableError as error:
        return error.adapter, error.refused
    return True, []


def gpu_verdict(model_path, timeout: float = 600) -> Tuple[bool, List[str]]:
    """(a GPU adapter exists, the operators LiteRT's GPU accelerator refuses) for a .tflite file.

    ``(True, [])``: the whole graph runs on the GPU. ``(False, [])``: no adapter (or no CompiledModel
    API, or the check crashed), so no verdict; the exporter then falls back to
    ``tripled_edge.gpu_compat``'s allow-list. The model is compiled in a fresh Python process: the GPU
    stack crashes a process that has TensorFlow loaded (see :func:`load`), and the exporter has.
    """
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for attempt in range(2):
        try:
            proc = subprocess.run([sys.executable, "-m", "tripled_edge.runtime", "--gpu-verdict",
                                   str(model_path)], env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("the GPU check of %s timed out after %.0f s: no verdict", model_path, timeout)
            return False, []
        # Killed by a signal: a crash in the native GPU stack, which software drivers (lavapipe) do
        # now and then on a saturated CPU; a fresh process is asked once more.
        if proc.returncode >= 0:
            break
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        log.warning("the GPU check of %s failed (exit status %s): no verdict", model_path, proc.returncode)
        return False, []
    report = json.loads(lines[-1])
    return bool(report["adapter"]), list(report["refused"])


def available_runtimes() -> Sequence[str]:
    """Names of the importable runtimes, preferred first."""
    return importable_runtimes()


if __name__ == "__main__":  # python -m tripled_edge.runtime --gpu-verdict MODEL (used by gpu_verdict)
    if len(sys.argv) != 3 or sys.argv[1] != "--gpu-verdict":
        sys.exit("usage: python -m tripled_edge.runtime --gpu-verdict MODEL.tflite")
    adapter, refused = _gpu_verdict_here(sys.argv[2])
    print(json.dumps({"adapter": adapter, "refused": refused}))
