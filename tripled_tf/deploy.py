"""Exports of a trained run: SavedModel (TensorFlow Serving), TFLite (edge), ONNX (TensorRT).

The library behind ``python -m tripled_tf.export``. Every format goes through the SavedModel written
by :mod:`tripled_tf.serving` (``TFLiteConverter.from_saved_model``; tf2onnx from the same signature),
so all of them run the same traced network. Outputs are written under a temporary name and renamed,
so an interrupted export never leaves a file that looks complete.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from tripled_tf import checkpoint as run_folder
from tripled_tf.atomic_files import atomic_write_bytes
from tripled_tf.conventions import STRIDE, is_stride_multiple

FORMATS = ("saved_model", "tflite", "onnx")


class ExportError(ValueError):
    """An export that cannot be done as asked (the message says why and what to do)."""


@dataclasses.dataclass
class LoadedRun:
    model: object
    config: dict
    step: Optional[int]
    height: int
    width: int


def load_run(run_dir, height: int = 0, width: int = 0) -> LoadedRun:
    """The trained model of a run folder, to be exported at ``height`` x ``width`` (0: training size)."""
    config = run_folder.read_config(run_dir)
    height = int(height or config["train"]["height"])
    width = int(width or config["train"]["width"])
    if not is_stride_multiple(height, width):
        raise ExportError(f"--height={height} --width={width}: the network's input size must be positive "
                          f"multiples of {STRIDE}")
    model, config = run_folder.load_model(run_dir)
    step = (run_folder.latest_checkpoint(run_dir) or {}).get("step")
    return LoadedRun(model, config, step, height, width)


def metadata_for(run: LoadedRun, **extra) -> Dict:
    from tripled_tf import serving

    values = serving.export_metadata(run.model, run.config, run.step)
    values.update(input_height=run.height, input_width=run.width, **extra)
    return values


def export_saved_model(run: LoadedRun, output) -> str:
    """The serving SavedModel (signatures: see tripled_tf.serving) at ``output`` (a folder)."""
    from tripled_tf import serving

    check_output(output, "saved_model")  # before the slow part
    archive = serving.build_archive(run.model, run.height, run.width)
    return serving.write_saved_model(archive, output, metadata_for(run, format="saved_model"))


def calibration_frames(config: dict, height: int, width: int, count: int,
                       seed: int = 0) -> Callable[[], Iterator[np.ndarray]]:
    """Representative frames for int8 calibration, drawn from the run's own training data.

    The frames come through the training pipeline (same source, split, decoding and resizing), without
    augmentation: calibration must see the value ranges of real inputs, not of colour-jittered ones.

    Returns:
      a callable yielding ``count`` arrays ``[1, height, width, 3]`` float32 in [0, 1] (the same ones
      each call: the converter may iterate more than once).
    """
    from tripled_tf import train_sources
    from tripled_tf.train_config import TrainConfig

    train = dict(config["train"])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in train.items() if k in known})
    train_config = dataclasses.replace(
        train_config, height=height, width=width, batch_size=1, augment=False, seed=seed,
        num_train_samples=min(train_config.num_train_samples, count) if train_config.dataset == "synthetic"
        else train_config.num_train_samples, num_val_samples=0)
    make_dataset, _, _ = train_sources.training_sources(train_config)
    config_pipe = train_sources.pipeline_config(train_config)
    frames = []
    for batch in make_dataset(config_pipe).take(count):
        frames.append(np.asarray(batch["target"], np.float32)[:1])
    if not frames:
        raise ExportError("no training frames found for the int8 calibration (check the run's data_path)")

    def frames_iterator():
        return iter(frames)
    return frames_iterator


def _is_previous_file_export(path: pathlib.Path, format: str) -> bool:
    """True when ``path`` is a .tflite / .onnx file this module wrote (it carries our metadata)."""
    try:
        if format == "tflite":
            from tripled_edge import metadata as tflite_metadata

            return "format_version" in (tflite_metadata.read_metadata(path) or {})
        import onnx

        return any(entry.key == "format_version" for entry in onnx.load(str(path)).metadata_props)
    except Exception:  # noqa: BLE001 -- unreadable, not a model, onnx missing: not ours
        return False


def check_output(output, format: str) -> pathlib.Path:
    """The absolute path ``output`` of a ``format`` export, or FileExistsError (an OSError) when
    writing it would delete something the export did not write.

    A SavedModel needs a new or empty folder or a previous SavedModel export
    (serving.check_output_folder); a .tflite / .onnx file a path that is free or holds a previous
    export of the same format, never a folder or a foreign file.
    """
    from tripled_tf import serving

    if format == "saved_model":
        return serving.check_output_folder(output)
    path = pathlib.Path(os.path.abspath(output))
    if path.is_dir():
        raise FileExistsError(f"--output={output}: {path} is a folder; --format={format} writes one "
                              f"file, e.g. {path / ('depth.' + format)}")
    if path.exists() and not _is_previous_file_export(path, format):
        raise FileExistsError(f"--output={output}: {path} exists and is not a tripled_tf .{format} "
                              f"export; export replaces only its own previous files (delete it or "
                              f"choose another name)")
    return path


def _atomic_write_bytes(path: pathlib.Path, data: bytes, format: str) -> str:
    path = check_output(path, format)  # again: the path may have changed during the conversion
    return atomic_write_bytes(path, data)


def write_network_saved_model(run: LoadedRun, output) -> str:
    """The SavedModel the converters start from: the network alone at the fixed input size, batch 1
    (the GPU delegate needs static shapes). Write it once to convert several TFLite modes."""
    from tripled_tf import serving

    archive = serving.build_archive(run.model, run.height, run.width, batch_size=1, serving=False)
    return serving.write_saved_model(archive, output, metadata_for(run))


def export_tflite(run: LoadedRun, output, quantize: str = "none", integer_io: bool = False,
                  allow_cpu_ops: bool = False, calibration_count: int = 128,
                  representative: Optional[Callable[[], Iterator[np.ndarray]]] = None,
                  saved_model_dir: Optional[str] = None) -> Dict:
    """A .tflite of the depth network at the run's (or the given) fixed input size, batch 1.

    Args:
      quantize: "none" | "fp16" | "dynamic" | "int8" (tripled_edge.convert).
      integer_io: int8 only: uint8 input and output.
      allow_cpu_ops: write the model even when some operators would not run on the GPU (the verdict of
        LiteRT's GPU accelerator where an adapter exists, else the allow-list; :func:`gpu_verdict`).
      calibration_count: training frames used to calibrate int8.
      representative: overrides the calibration frames (a callable as :func:`calibration_frames`).
      saved_model_dir: a :func:`write_network_saved_model` folder of this run to convert (default: one
        written to a temporary folder).
    Returns:
      {"path", "bytes", "gpu_incompatible": [...], "gpu_check": which check decided (see
      :func:`gpu_verdict`), "operators": {name: count}}.
    Raises:
      ExportError: operators the GPU does not take, without ``allow_cpu_ops``.
    """
    from tripled_edge import convert, gpu_compat

    output = check_output(output, "tflite")  # before the slow part
    if quantize == "int8" and representative is None:
        representative = calibration_frames(run.config, run.height, run.width, calibration_count)
    with tempfile.TemporaryDirectory(prefix="tripled_tflite_") as tmp:
        if saved_model_dir is None:
            saved_model_dir = write_network_saved_model(run, os.path.join(tmp, "saved_model"))
        model = convert.convert(saved_model_dir, quantize, representative, integer_io=integer_io)
        gpu_check, problems = gpu_verdict(model, os.path.join(tmp, "check.tflite"))
    if problems and not allow_cpu_ops:
        raise ExportError(f"the model has operators the GPU does not take ({gpu_check}; they would run "
                          "on the CPU); pass --allow_cpu_ops to export anyway:\n  " + "\n  ".join(problems))
    values = metadata_for(run, format="tflite", quantize=quantize, integer_io=integer_io,
                          gpu_compatible=not problems, gpu_check=gpu_check)
    model = convert.with_metadata(model, values)
    operators: Dict[str, int] = {}
    for name in gpu_compat.operator_list(model):
        operators[name] = operators.get(name, 0) + 1
    return {"path": _atomic_write_bytes(output, model, "tflite"), "bytes": len(model),
            "gpu_incompatible": problems, "gpu_check": gpu_check, "operators": operators}


GPU_CHECK_ACCELERATOR = "LiteRT GPU accelerator"
GPU_CHECK_ALLOW_LIST = "GPU-delegate allow-list"


def gpu_verdict(model: bytes, scratch_path) -> Tuple[str, List[str]]:
    """(which check decided, the operators the GPU would not take) for a converted flatbuffer.

    Where a GPU adapter exists (a GPU, or Mesa's software Vulkan driver: tools/install_software_gpu.sh),
    LiteRT's GPU accelerator compiles the model and its verdict is final; elsewhere the operator
    allow-list of ``tripled_edge.gpu_compat`` decides (tests/test_edge_gpu.py keeps the two in agreement).
    ``scratch_path``: where to write the model for the accelerator (it loads files).
    """
    from tripled_edge import gpu_compat, runtime

    pathlib.Path(scratch_path).write_bytes(model)
    adapter, refused = runtime.gpu_verdict(scratch_path)
    if adapter:
        return GPU_CHECK_ACCELERATOR, refused
    return GPU_CHECK_ALLOW_LIST, gpu_compat.gpu_incompatibilities(model)


def export_onnx(run: LoadedRun, output, opset: int = 17) -> str:
    """An ONNX file of the network at the fixed input size (batch 1) through tf2onnx, for
    ONNX Runtime or TensorRT (Jetson). Needs ``pip install tf2onnx``; nearest-neighbour resizes are
    rewritten from TF's deprecated ``tf_half_pixel_for_nn`` coordinate mode to the equivalent
    ``asymmetric`` (exact for the 2x upsampling used), which TensorRT and current runtimes accept."""
    try:
        import onnx
        import tf2onnx  # noqa: F401  (the check that it is installed)
    except ImportError as error:
        raise ExportError(f"--format=onnx needs tf2onnx and onnx (pip install tf2onnx onnx): {error}") from None
    import subprocess
    import sys

    from tripled_tf import serving

    output = check_output(output, "onnx")  # before the slow part
    with tempfile.TemporaryDirectory(prefix="tripled_onnx_") as tmp:
        saved = write_network_saved_model(run, os.path.join(tmp, "saved_model"))
        converted = os.path.join(tmp, "model.onnx")
        # tf2onnx deep-copies the whole graph, weights included, before each optimiser pass so that a
        # failing pass can be rolled back: ~half of a ResNet-18 network's conversion time (13.5 ->
        # 7 s of optimisation, measured). Off: a failing pass fails the export, in one line below.
        # (tf2onnx 1.17 reads the variable's presence, not its value.)
        proc = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved,
                               "--signature_def", serving.MODEL_INPUT_SIGNATURE, "--tag", "serve",
                               "--opset", str(opset), "--output", converted],
                              capture_output=True, text=True,
                              env=dict(os.environ, TF2ONNX_CATCH_ERRORS="FALSE"))
        if proc.returncode != 0:
            raise ExportError(f"tf2onnx failed: {proc.stderr.strip().splitlines()[-1:]}")
        graph = onnx.load(converted)
        for node in graph.graph.node:
            if node.op_type == "Resize":
                for attribute in node.attribute:
                    if attribute.name == "coordinate_transformation_mode" and \
                            attribute.s == b"tf_half_pixel_for_nn":
                        attribute.s = b"asymmetric"
        for key, value in metadata_for(run, format="onnx").items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, str(value)
        data = graph.SerializeToString()
    return _atomic_write_bytes(output, data, "onnx")
