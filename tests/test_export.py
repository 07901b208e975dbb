"""python -m tripled_tf.export on the demo checkpoint: SavedModel, every TFLite mode, the runtime
without TensorFlow, and the exported files through evaluate / predict.

The checkpoint is configs/demo.cfg's network (TripleDNet) with ResNet-10 encoders (tests/conftest.py),
64x192, untrained: the export must not care how well the network is trained, only reproduce it.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from unittest import mock

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tripled_edge import metadata as tflite_metadata
from tripled_tf import deploy, inference, serving

REPO = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 64, 192


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _module(name, args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", name, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def demo_run(module_tmp, untrained_run):
    """A run folder of configs/demo.cfg's network (TripleDNet, ResNet-10 encoders) at 64x192, untrained: the
    exports must reproduce a network whatever its weights (a one-step CLI run cost ~40 s here; the
    trainer's run folder is checked by tests/test_train.py)."""
    return untrained_run(module_tmp("export") / "demo", "tripled", HEIGHT, WIDTH, step=1)


@pytest.fixture(scope="module")
def keras_run(demo_run):
    return deploy.load_run(demo_run)


@pytest.fixture(scope="module")
def test_frames():
    from tripled_tf.data import synthetic

    return synthetic.make_triplets(4, HEIGHT, WIDTH, seed=3, split="test")["target"]


def _keras_disparity(run, images):
    """The Keras model's disparity (1 / depth units) at the network's output size."""
    sigma = inference.predict_disparities(run.model, images)
    min_disp, max_disp = 1.0 / run.model.config.max_depth, 1.0 / run.model.config.min_depth
    return min_disp + (max_disp - min_disp) * sigma


def _keras_at_input_size(run, images):
    """The serving recipe written out in TensorFlow ops: lanczos3 + clip, network, bilinear back."""
    prepared = tf.clip_by_value(tf.image.resize(images, (HEIGHT, WIDTH), "lanczos3", antialias=True), 0, 1)
    disparity = _keras_disparity(run, prepared.numpy())[..., None]
    return tf.image.resize(disparity, tf.shape(images)[1:3], "bilinear").numpy()


# ------------------------------------------------------------------------------------------------
# SavedModel


@pytest.fixture(scope="module")
def saved_model(demo_run, module_tmp):
    out = module_tmp("saved") / "depth" / "1"
    proc = _module("tripled_tf.export", [f"--checkpoint={demo_run}", "--format=saved_model",
                                         f"--output={out}"], demo_run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _last_json(proc.stdout)["path"] == str(out)
    return out


def test_saved_model_signatures_match_the_keras_model(saved_model, keras_run):
    loaded = tf.saved_model.load(str(saved_model))
    assert {serving.SERVING_SIGNATURE, serving.ENCODED_SIGNATURE,
            serving.MODEL_INPUT_SIGNATURE} <= set(loaded.signatures)
    images = np.random.default_rng(0).random((2, 50, 70, 3)).astype(np.float32)  # not multiples of 32
    out = loaded.signatures[serving.SERVING_SIGNATURE](images=tf.constant(images))
    assert out["depth"].shape == (2, 50, 70, 1) and out["disparity"].shape == (2, 50, 70, 1)
    expected = _keras_at_input_size(keras_run, images)
    np.testing.assert_allclose(out["disparity"].numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["depth"].numpy(), 1.0 / expected, rtol=1e-4)
    # The network alone, at its own size.
    frames = np.random.default_rng(1).random((3, HEIGHT, WIDTH, 3)).astype(np.float32)
    raw = loaded.signatures[serving.MODEL_INPUT_SIGNATURE](images=tf.constant(frames))["disparity"]
    np.testing.assert_allclose(raw.numpy()[..., 0], _keras_disparity(keras_run, frames), rtol=1e-4)


def test_saved_model_holds_the_depth_network_alone(saved_model, keras_run):
    model = keras_run.model
    depth_layers = (model.encoder, model.feature_split, model.depth_decoder)
    expected = sorted(tuple(v.shape) for layer in depth_layers for v in layer.weights)
    loaded = tf.saved_model.load(str(saved_model))
    assert sorted(tuple(v.shape) for v in loaded._all_variables) == expected  # see serving.build_archive
    # Far from all of it: the pose net, appearance decoder, extractor and pretext head stay behind.
    assert sum(int(np.prod(s)) for s in expected) < 0.8 * model.count_params()
    variables = sum(f.stat().st_size for f in (saved_model / "variables").iterdir())
    assert variables < 1.05 * 4 * sum(int(np.prod(s)) for s in expected)  # float32, stored once


def test_saved_model_takes_encoded_png_and_jpeg(saved_model):
    loaded = tf.saved_model.load(str(saved_model))
    image = (np.random.default_rng(2).random((45, 81, 3)) * 255).astype(np.uint8)
    png = tf.io.encode_png(image)
    out = loaded.signatures[serving.ENCODED_SIGNATURE](encoded=tf.stack([png, png]))
    direct = loaded.signatures[serving.SERVING_SIGNATURE](
        images=tf.constant(np.stack([image, image]).astype(np.float32) / 255.0))
    assert out["depth"].shape == (2, 45, 81, 1)
    np.testing.assert_allclose(out["depth"].numpy(), direct["depth"].numpy(), rtol=1e-5)
    jpeg = tf.io.encode_jpeg(image)
    assert loaded.signatures[serving.ENCODED_SIGNATURE](encoded=jpeg[None])["depth"].shape == (1, 45, 81, 1)
    other = tf.io.encode_png(image[:40])
    with pytest.raises(tf.errors.InvalidArgumentError, match="same size"):
        loaded.signatures[serving.ENCODED_SIGNATURE](encoded=tf.stack([png, other]))


def _with_nan_pixel():
    images = np.full((1, 40, 40, 3), 0.5, np.float32)
    images[0, 7, 9, 1] = np.nan
    return images


@pytest.mark.parametrize("images, message", [
    (np.full((1, 40, 40, 3), 200.0, np.float32), r"\[0, 1\].*above 1"),
    (np.zeros((1, 40, 40, 4), np.float32), "3 channels"),
    (_with_nan_pixel(), "non-finite values"),  # not "values below 0": NaN fails every comparison
    (np.full((1, 40, 40, 3), np.inf, np.float32), "non-finite values"),
])
def test_saved_model_input_is_validated(saved_model, images, message):
    serve = tf.saved_model.load(str(saved_model)).signatures[serving.SERVING_SIGNATURE]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError), match=message):
        serve(images=tf.constant(images))


def test_saved_model_fixed_size_signature_refuses_another_size(saved_model):
    model_input = tf.saved_model.load(str(saved_model)).signatures[serving.MODEL_INPUT_SIGNATURE]
    out = model_input(images=tf.zeros([1, HEIGHT, WIDTH, 3]))["disparity"]
    assert out.shape == (1, HEIGHT // 2, WIDTH // 2, 1)
    for shape in ([1, HEIGHT + 32, WIDTH, 3], [1, HEIGHT, WIDTH - 64, 3]):
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[batch, {HEIGHT}, {WIDTH}, 3\] only"):
            model_input(images=tf.zeros(shape))


def test_saved_model_metadata(saved_model, keras_run):
    values = serving.read_metadata(saved_model)
    assert (values["input_height"], values["input_width"]) == (HEIGHT, WIDTH)
    assert values["min_depth"] == keras_run.model.config.min_depth
    assert values["max_depth"] == keras_run.model.config.max_depth
    assert values["intrinsics"]["normalised_fx_fy_cx_cy"] == [0.58, 1.92, 0.5, 0.5]
    assert values["model"] == "tripled" and values["step"] == 1


# ------------------------------------------------------------------------------------------------
# TFLite: every mode, GPU-delegate compatible, same depth within the mode's tolerance

# Median / max relative disparity error against the Keras float32 model. float32: the same arithmetic
# up to operation order. fp16 weights: ~2^-11 relative rounding per weight, averaged over the sums.
# dynamic / int8: 8-bit weights (and activations), a few percent at worst on a random-init network.
TOLERANCES = {"none": (1e-5, 1e-4), "fp16": (2e-3, 2e-2), "dynamic": (2e-2, 0.15), "int8": (4e-2, 0.3)}


@pytest.fixture(scope="module")
def network_saved_model(keras_run, module_tmp):
    return deploy.write_network_saved_model(keras_run, module_tmp("network") / "sm")


def _allow_list_decides():
    """The exporter's GPU check by the allow-list alone: tests/test_edge_gpu.py runs the accelerator's
    verdict (a GPU compilation in a process of its own, ~3.5 s a file) on every mode and network."""
    from tripled_edge import runtime

    return mock.patch.object(runtime, "gpu_verdict", lambda path: (False, []))


@pytest.fixture(scope="module")
def tflite_models(keras_run, network_saved_model, module_tmp):
    folder = module_tmp("tflite")
    calibration = deploy.calibration_frames(keras_run.config, HEIGHT, WIDTH, count=8)
    with _allow_list_decides():
        return {mode: deploy.export_tflite(keras_run, folder / f"depth_{mode}.tflite", mode,
                                           representative=calibration,
                                           saved_model_dir=network_saved_model)
                for mode in ("none", "fp16", "dynamic", "int8")}


@pytest.mark.parametrize("mode", ["none", "fp16", "dynamic", "int8"])
def test_tflite_modes_reproduce_the_keras_depth(mode, tflite_models, keras_run, test_frames):
    from tripled_edge import runtime

    result = tflite_models[mode]
    assert result["gpu_incompatible"] == []  # the default depth network is fully GPU-delegate compatible
    model = runtime.load(result["path"], num_threads=2)
    assert model.input_size == (HEIGHT, WIDTH)
    ours = np.stack([model.network(frame) for frame in test_frames])
    expected = _keras_disparity(keras_run, test_frames)
    relative = np.abs(ours - expected) / expected
    median_tolerance, max_tolerance = TOLERANCES[mode]
    assert np.median(relative) < median_tolerance, (mode, np.median(relative))
    assert relative.max() < max_tolerance, (mode, relative.max())


def test_tflite_metadata_and_float_head(tflite_models, keras_run):
    from tripled_edge import gpu_compat

    for mode, result in tflite_models.items():
        values = tflite_metadata.read_metadata(result["path"])
        assert values["quantize"] == mode and values["gpu_compatible"] is True
        assert (values["input_height"], values["input_width"]) == (HEIGHT, WIDTH)
        assert values["max_depth"] == keras_run.model.config.max_depth
    sizes = {mode: result["bytes"] for mode, result in tflite_models.items()}
    assert sizes["fp16"] < 0.6 * sizes["none"] and sizes["int8"] < 0.35 * sizes["none"]
    # int8: the disparity head (last conv, sigmoid, scaling) runs in float after one DEQUANTIZE.
    operators = gpu_compat.operator_list(pathlib.Path(tflite_models["int8"]["path"]).read_bytes())
    assert operators[-5:] == ["DEQUANTIZE", "CONV_2D", "LOGISTIC", "MUL", "ADD"]
    assert "MIRROR_PAD" not in operators  # exported as slices + concatenations (XNNPACK takes them)
    assert "RESIZE_NEAREST_NEIGHBOR" not in operators  # concatenation + depth-to-space (XNNPACK's)


@pytest.mark.parametrize("mode", ["none", "int8"])
def test_xnnpack_takes_the_whole_network_in_one_partition(mode, tflite_models):
    # Every operator XNNPACK does not take ends a partition (and runs a reference kernel): the
    # interpreter lists one DELEGATE node per XNNPACK partition after the model's own nodes.
    interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter(
        model_path=tflite_models[mode]["path"], num_threads=1)
    interpreter.allocate_tensors()
    nodes = [node["op_name"] for node in interpreter._get_ops_details()]
    assert nodes.count("DELEGATE") == 1, nodes.count("DELEGATE")


def test_int8_with_integer_io(keras_run, network_saved_model, tmp_path, test_frames):
    from tripled_edge import runtime

    calibration = deploy.calibration_frames(keras_run.config, HEIGHT, WIDTH, count=4)
    with _allow_list_decides():
        result = deploy.export_tflite(keras_run, tmp_path / "int8_io.tflite", "int8", integer_io=True,
                                      representative=calibration, saved_model_dir=network_saved_model)
    model = runtime.load(result["path"])
    assert model._input["dtype"] == np.uint8 and model._output["dtype"] == np.uint8
    ours = model.network(test_frames[0])
    expected = _keras_disparity(keras_run, test_frames[:1])[0]
    # uint8 output: 256 levels over the output range, so only a coarse agreement is possible.
    assert np.median(np.abs(ours - expected) / expected) < 0.25


def test_gpu_incompatible_export_fails_with_the_operator_list(keras_run, tflite_models, network_saved_model,
                                                             tmp_path, monkeypatch):
    from tripled_edge import convert, gpu_compat, runtime

    # The conversion itself is tested above: reuse its result, and pretend the gate found a GATHER
    # (the allow-list decides: no GPU adapter; tests/test_edge_gpu.py tests the accelerator's verdict).
    converted = pathlib.Path(tflite_models["none"]["path"]).read_bytes()
    monkeypatch.setattr(convert, "convert", lambda *args, **kwargs: converted)
    monkeypatch.setattr(runtime, "gpu_verdict", lambda path: (False, []))
    monkeypatch.setattr(gpu_compat, "gpu_incompatibilities",
                        lambda model: ["op 7 GATHER: not supported by the GPU delegate"])
    target = tmp_path / "refused.tflite"
    with pytest.raises(deploy.ExportError, match="op 7 GATHER"):
        deploy.export_tflite(keras_run, target, "none", saved_model_dir=network_saved_model)
    assert not target.exists()
    result = deploy.export_tflite(keras_run, target, "none", allow_cpu_ops=True,
                                  saved_model_dir=network_saved_model)
    assert result["gpu_incompatible"] and target.is_file()
    assert result["gpu_check"] == deploy.GPU_CHECK_ALLOW_LIST
    assert tflite_metadata.read_metadata(target)["gpu_compatible"] is False


# ------------------------------------------------------------------------------------------------
# The runtime without TensorFlow


NO_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, json, sys
    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow.") or name == "keras":
                raise ImportError("tensorflow is not installed here (test)")
    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    from tripled_edge import runtime
    model = runtime.load(sys.argv[1], num_threads=1)
    image = np.load(sys.argv[2])
    depth = model.predict(image)
    np.save(sys.argv[3], depth)
    print(json.dumps({"runtime": model.runtime, "shape": list(depth.shape), "dtype": str(depth.dtype),
                      "tensorflow_loaded": any(m.startswith("tensorflow") for m in sys.modules)}))
""")


def test_runtime_runs_without_tensorflow(tflite_models, tmp_path, keras_run):
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install -e .[dev])")
    image = (np.random.default_rng(5).random((75, 250, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "image.npy", image)
    script = tmp_path / "no_tf.py"
    script.write_text(NO_TENSORFLOW)
    proc = subprocess.run([sys.executable, str(script), tflite_models["none"]["path"],
                           str(tmp_path / "image.npy"), str(tmp_path / "depth.npy")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _last_json(proc.stdout)
    assert report == {"runtime": "ai-edge-litert", "shape": [75, 250], "dtype": "float32",
                      "tensorflow_loaded": False}
    depth = np.load(tmp_path / "depth.npy")
    # The same frame through TensorFlow: lanczos3 + clip, the Keras network, bilinear up, inverse.
    expected = 1.0 / _keras_at_input_size(keras_run, image[None].astype(np.float32) / 255.0)[0, ..., 0]
    np.testing.assert_allclose(depth, expected, rtol=2e-3)


# ------------------------------------------------------------------------------------------------
# Exported files through evaluate and predict


def test_evaluation_of_exported_models_matches_the_run(demo_run, saved_model, tflite_models):
    from tripled_tf import evaluation
    from tripled_tf.data import synthetic

    data = synthetic.make_triplets(3, HEIGHT, WIDTH, seed=0, split="test")
    depths = list(data["depth"][..., 0])
    results = {}
    for name, path in [("run", demo_run), ("saved_model", saved_model),
                       ("tflite", tflite_models["none"]["path"]), ("int8", tflite_models["int8"]["path"])]:
        depth_fn = inference.load_depth_fn(path)
        assert depth_fn.input_size == (HEIGHT, WIDTH)
        results[name] = evaluation.evaluate_depth(depth_fn, data["target"], depths)
    for name in ("saved_model", "tflite"):
        assert results[name]["abs_rel"] == pytest.approx(results["run"]["abs_rel"], rel=1e-4)
        assert results[name]["a1"] == pytest.approx(results["run"]["a1"], abs=1e-3)
    assert results["int8"]["abs_rel"] == pytest.approx(results["run"]["abs_rel"], rel=0.2)


def test_evaluate_cli_on_a_tflite_file(tflite_models, saved_model, tmp_path):
    proc = _module("tripled_tf.evaluate", [f"--checkpoint={tflite_models['int8']['path']}",
                                           "--dataset=synthetic", "--num_samples=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _last_json(proc.stdout)
    assert "abs_rel" in proc.stdout and "TFLite int8" in result["model"] and result["num_images"] == 2
    proc = _module("tripled_tf.evaluate", [f"--checkpoint={tflite_models['none']['path']}",
                                           "--dataset=synthetic", "--height=128"], tmp_path)
    assert proc.returncode == 2 and "drop --height/--width" in proc.stderr
    proc = _module("tripled_tf.evaluate", [f"--checkpoint={tflite_models['none']['path']}",
                                           "--task=pose", "--dataset=synthetic"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:")


def test_predict_accepts_a_tflite_file(tflite_models, tmp_path, keras_run):
    image = (np.random.default_rng(6).random((60, 90, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), image)
    out = tmp_path / "out"
    proc = _module("tripled_tf.predict", [f"--input={tmp_path / 'frame.png'}",
                                          f"--checkpoint={tflite_models['none']['path']}",
                                          f"--output_dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    depth = np.load(out / "frame_depth.npy")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32)[None] / 255.0
    expected = 1.0 / _keras_at_input_size(keras_run, rgb)[0, ..., 0]
    # predict resizes σ with OpenCV, the serving recipe with TensorFlow: equal to float rounding.
    np.testing.assert_allclose(depth, expected, rtol=2e-3)
    proc = _module("tripled_tf.predict", [f"--input={tmp_path / 'frame.png'}", "--height=128",
                                          f"--checkpoint={tflite_models['none']['path']}",
                                          f"--output_dir={tmp_path / 'out2'}"], tmp_path)
    assert proc.returncode == 2 and "drop --height/--width" in proc.stderr


def test_edge_bench_reports_latency_and_abs_rel_per_model(demo_run, tflite_models, tmp_path):
    proc = _module("tools.bench_edge", [f"--checkpoint={demo_run}", f"--model={tflite_models['int8']['path']}",
                                  "--num_samples=2", "--runs=2", "--threads=1", "--accelerator=auto"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _last_json(proc.stdout)
    models = result["models"]
    assert set(models) == {"keras fp32", "keras fp32 eager", "depth_int8.tflite"}
    for values in models.values():
        assert values["latency_median_s"] > 0 and values["latency_p90_s"] >= values["latency_median_s"]
        assert 0 < values["abs_rel"] < 10
    assert models["keras fp32"]["abs_rel_change"] == 0
    assert models["depth_int8.tflite"]["end_to_end_median_s"] > 0
    assert result["accelerator"] == "auto" and models["depth_int8.tflite"]["accelerator"] == "cpu"


# ------------------------------------------------------------------------------------------------
# Bad input (the ONNX export: tests/test_onnx.py)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint=/nonexistent/run", "--output=x"], "checkpoint not found"),
    (["--format=saved_model", "--quantize=int8", "--output=x"], "--format=tflite only"),
    (["--format=tflite", "--height=100", "--output=x.tflite"], "multiples of 32"),
])
def test_export_bad_input_is_one_error_line(demo_run, tmp_path, args, message):
    if not any(a.startswith("--checkpoint") for a in args):
        args = [f"--checkpoint={demo_run}", *args]
    proc = _module("tripled_tf.export", args, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1], proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# --output: export deletes nothing it did not write (issue 18, item 1)


def _tiny_archive():
    """An ExportArchive of a 4 -> 1 dense layer: what write_saved_model does with the folder does not
    depend on the network, and this one writes in a second."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x), input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    return archive


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*"))


def test_saved_model_export_refuses_a_foreign_folder_and_deletes_nothing(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "src" / "a.py").write_text("print(1)")
    before = _tree(tmp_path)
    monkeypatch.chdir(work)  # "." is a temporary folder here, never the real working directory
    for output in (".", "src/..", str(work), "notes.txt"):
        with pytest.raises(FileExistsError, match="deletes nothing"):
            serving.write_saved_model(_tiny_archive(), output, {"format_version": 1})
        with pytest.raises(FileExistsError):
            deploy.check_output(output, "saved_model")
    assert _tree(tmp_path) == before  # no staging folder left either
    assert (work / "notes.txt").read_text() == "mine"


def test_saved_model_export_into_a_serving_base_folder_is_refused_with_the_next_version(tmp_path):
    base = tmp_path / "export" / "depth"
    serving.write_saved_model(_tiny_archive(), base / "1", {"format_version": 1, "step": 1})
    serving.write_saved_model(_tiny_archive(), base / "2", {"format_version": 1, "step": 2})
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match=r"not a tripled_tf export.*depth/3"):
        serving.write_saved_model(_tiny_archive(), base, {"format_version": 1})
    assert _tree(tmp_path) == before
    assert serving.read_metadata(base / "1")["step"] == 1


def test_saved_model_export_replaces_only_its_own_previous_export(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()  # an empty folder is filled
    assert serving.write_saved_model(_tiny_archive(), out, {"format_version": 1, "step": 1}) == str(out)
    assert serving.write_saved_model(_tiny_archive(), out, {"format_version": 1, "step": 2}) == str(out)
    assert serving.read_metadata(out)["step"] == 2
    assert tf.saved_model.load(str(out)).signatures  # a complete SavedModel, not a mix of two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging / previous left
    (out / "README").write_text("the user's notes")  # no longer only what export wrote
    with pytest.raises(FileExistsError, match="README"):
        serving.write_saved_model(_tiny_archive(), out, {"format_version": 1, "step": 3})
    assert (out / "README").read_text() == "the user's notes" and serving.read_metadata(out)["step"] == 2


def test_file_exports_refuse_folders_and_foreign_files(tmp_path, tflite_models):
    (tmp_path / "depth.tflite").write_bytes(b"not a model")
    for output, format in [(tmp_path, "tflite"), (tmp_path, "onnx"), (tmp_path / "depth.tflite", "tflite")]:
        with pytest.raises(FileExistsError, match="--output"):
            deploy.check_output(output, format)
    assert (tmp_path / "depth.tflite").read_bytes() == b"not a model"
    ours = tflite_models["none"]["path"]
    assert deploy.check_output(ours, "tflite") == pathlib.Path(ours)  # a previous export: replaceable
    assert deploy.check_output(tmp_path / "new.tflite", "tflite") == tmp_path / "new.tflite"


def test_export_cli_output_dot_is_one_error_line_and_keeps_the_folder(demo_run, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    for format in ("saved_model", "tflite"):
        proc = _module("tripled_tf.export", [f"--checkpoint={demo_run}", f"--format={format}",
                                             "--output=."], tmp_path)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: --output=."), \
            proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == errors[0]
    assert _tree(tmp_path) == ["keep.txt"]
