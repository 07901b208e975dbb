"""Published reference models: the checkpoint reader against torch.save, and the Monodepth2 converter
against Monodepth2's own code.

The fixtures under tests/fixtures/ were written by tools/make_reference_fixtures.py with PyTorch and
nianticlabs/monodepth2: the references' outputs for seeded weights (tools/reference_weights.py) at
64x96. Here the same weights are rebuilt from the seed with numpy, written as .pth files in both
serialisations without PyTorch (tests/torch_files.py), converted and compared.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from torch_files import save_torch
from tools.reference_weights import seeded_state
from tripled_tf import checkpoint, convert
from tripled_tf.models import pretrained, torch_checkpoint

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


# --------------------------------------------------------------------------------------------------
# Reader against files written by torch.save


@pytest.mark.parametrize("name", ["zip.pth", "legacy.pth"])
def test_torch_saved_files_read_exactly(name):
    obj = torch_checkpoint.read_checkpoint(FIXTURES / "torch_format" / name)
    sd = obj["state_dict"]
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert list(sd) == ["base", "transposed", "row", "half", "bf16", "counter", "param"]
    np.testing.assert_array_equal(sd["base"], base)
    np.testing.assert_array_equal(sd["transposed"], base.T)
    np.testing.assert_array_equal(sd["row"], base[1])
    assert sd["half"].dtype == np.float16 and sd["half"].tolist() == [0.5, -2.0]
    assert sd["bf16"].dtype == np.float32 and sd["bf16"].tolist() == [1.5, -3.0]
    assert sd["counter"].dtype == np.int64 and int(sd["counter"]) == 7
    np.testing.assert_array_equal(sd["param"], np.ones((2, 2), np.float32))
    assert obj["meta"] == {"epoch": 3, "names": ["a", "b"], "size": (64, 96)}
    assert obj["height"] == 64


@pytest.mark.parametrize("name", ["zip.pth", "legacy.pth"])
def test_half_downloaded_torch_file_is_one_line(tmp_path, name):
    data = (FIXTURES / "torch_format" / name).read_bytes()
    half = tmp_path / name
    half.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(pretrained.CheckpointError) as error:
        torch_checkpoint.read_checkpoint(half)
    assert str(error.value).startswith(f"{half}: truncated or corrupt"), str(error.value)


# --------------------------------------------------------------------------------------------------
# Monodepth2


def _layout(name):
    return json.loads((FIXTURES / name / "layout.json").read_text())


def write_monodepth2_folder(folder, name, legacy=False, pose=True, edit=None):
    """The fixture's seeded Monodepth2 model as the published folder layout (encoder.pth with the
    training size, depth.pth, pose files); ``edit(file name, state)`` may change a state first."""
    layout = _layout(name)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, entries in layout["files"].items():
        if not pose and file_name.startswith("pose"):
            continue
        state = seeded_state(layout["seed"], entries, layout["scales"])
        if file_name == "encoder.pth":
            state.update(height=layout["height"], width=layout["width"],
                         use_stereo=layout["use_stereo"])
        if edit is not None:
            edit(file_name, state)
        save_torch(state, folder / file_name, legacy=legacy)
    return folder


def assert_pose_matches(model, name):
    """The converted pose net's axis-angle and translation against the reference's (fixture ``name``)."""
    frames = np.load(FIXTURES / name / "pose_input.npy")
    axisangle, translation = model.pose_net((frames[:1], frames[1:]), training=False)
    for ours, ref in ((axisangle, "axisangle"), (translation, "translation")):
        expected = np.load(FIXTURES / name / f"{ref}.npy")
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-3,
                                   atol=1e-3 * np.abs(expected).max(), err_msg=ref)


def relative_depth_error(depth, reference):
    return np.abs(depth - reference) / reference


def _assert_matches_reference(model, name, legacy, disparity_atol):
    """The converted model's σ at every scale and its depth against the reference's own outputs for
    the fixture's input: the issue's bar, relative depth error median < 1e-4, max < 1e-3."""
    image = np.load(FIXTURES / name / "input.npy")
    for s, disp in enumerate(model(image, training=False)):
        np.testing.assert_allclose(disp.numpy(), np.load(FIXTURES / name / f"disp_{s}.npy"),
                                   rtol=0, atol=disparity_atol, err_msg=f"disp_{s}")
    _, depth = model.predict_depth(image)
    error = relative_depth_error(depth.numpy()[0, ..., 0], np.load(FIXTURES / name / "depth.npy"))
    print(f"{name} {'legacy' if legacy else 'zip'}: relative depth error median "
          f"{np.median(error):.2e} max {error.max():.2e}")
    assert np.median(error) < 1e-4 and error.max() < 1e-3


@pytest.mark.parametrize("name,legacy", [("monodepth2_r18", False), ("monodepth2_r18", True),
                                         ("monodepth2_r50", False)],
                         ids=["r18-zip", "r18-legacy", "r50-zip"])
def test_monodepth2_conversion_matches_monodepth2(tmp_path, name, legacy):
    layout = _layout(name)
    with_pose = "pose.pth" in layout["files"]
    source = write_monodepth2_folder(tmp_path / "md2", name, legacy=legacy)
    info = convert.convert("monodepth2", source, tmp_path / "run")
    assert (info["height"], info["width"]) == (64, 96)
    assert info["depth_layers"] == layout["depth_layers"]
    assert info["pose_layers"] == (18 if with_pose else None)

    model, config = checkpoint.load_model(tmp_path / "run")
    assert config["model"]["depth_decoder"] == "monodepth2"
    assert (config["train"]["height"], config["train"]["width"]) == (64, 96)
    _assert_matches_reference(model, name, legacy, disparity_atol=2e-5)

    if with_pose:
        assert_pose_matches(model, name)


def _run_convert(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tripled_tf.convert", "--from=monodepth2", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def _assert_one_error_line(result, *fragments):
    assert result.returncode != 0, result.stdout
    # TensorFlow's own start-up lines may precede it; the error is one line, without a traceback.
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_monodepth2_bad_inputs_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "out"

    def drop_head(file_name, state):
        if file_name == "depth.pth":
            del state["decoder.12.conv.weight"]
    missing = write_monodepth2_folder(tmp_path / "missing", "monodepth2_r18", pose=False,
                                      edit=drop_head)
    result = _run_convert(f"--input={missing}", f"--output={out}")
    _assert_one_error_line(result, str(missing / "depth.pth"), "Missing keys (1)",
                           "decoder.12.conv.weight")
    assert not out.exists()

    # The other failures in-process (the command prints str(error) as above).
    depth_only = write_monodepth2_folder(tmp_path / "depth_only", "monodepth2_r18", pose=False)
    with pytest.raises(pretrained.CheckpointError) as error:
        convert.convert("monodepth2", depth_only, out, pose=True)
    assert str(error.value).startswith(str(depth_only / "pose_encoder.pth"))
    assert "depth-only" in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()

    half = tmp_path / "half"
    half.mkdir()
    for file_name in ("encoder.pth", "depth.pth"):
        data = (depth_only / file_name).read_bytes()
        (half / file_name).write_bytes(data if file_name == "encoder.pth" else data[:len(data) // 2])
    with pytest.raises(pretrained.CheckpointError) as error:
        convert.convert("monodepth2", half, out)
    assert str(error.value).startswith(f"{half / 'depth.pth'}: truncated")
    assert "\n" not in str(error.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_monodepth2_wrong_model_zip_is_refused(tmp_path):
    """A zip of another model (a FeatDepth-style encoder under other names) names the file and what
    it holds instead."""
    import zipfile

    def rename(file_name, state):
        if file_name == "encoder.pth":
            for key in [k for k in state if k.startswith("encoder.")]:
                state["DepthEncoder." + key[len("encoder."):]] = state.pop(key)
    folder = write_monodepth2_folder(tmp_path / "other", "monodepth2_r18", pose=False, edit=rename)
    archive = tmp_path / "other_model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in folder.iterdir():
            z.write(path, f"other_model/{path.name}")
    with pytest.raises(pretrained.CheckpointError) as error:
        convert.convert("monodepth2", archive, tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"{archive}/encoder.pth: not the expected model"), message
    assert "'encoder.'" in message and "'DepthEncoder.'" in message, message
    assert not (tmp_path / "out").exists()


def test_converted_folder_is_not_overwritten_without_flag(tmp_path):
    folder = write_monodepth2_folder(tmp_path / "md2", "monodepth2_r18", pose=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(convert.ConversionError, match="already exists"):
        convert.convert("monodepth2", folder, out)
    assert (out / "keep.txt").read_text() == "x"
    data = {"dataset": "kitti", "data_path": "/data/kitti_raw", "splits_dir": "/data/splits"}
    convert.convert("monodepth2", folder, out, overwrite=True, data=data)
    assert not (out / "keep.txt").exists()
    config = checkpoint.read_config(out)
    assert {k: config["train"][k] for k in data} == data  # int8 calibration data, eval defaults
    assert config["train"]["model"] == "baseline" and config["converted_from"]["pose"] is False


# --------------------------------------------------------------------------------------------------
# FeatDepth


def write_featdepth_checkpoint(path, name="featdepth_r18", legacy=False, edit=None):
    """The fixture's seeded FeatDepth mono_fm model as its mmcv checkpoint {"meta", "state_dict"}."""
    layout = _layout(name)
    state = seeded_state(layout["seed"], layout["files"]["featdepth.pth"], layout["scales"],
                         layout["offsets"])
    if edit is not None:
        edit(state)
    save_torch({"meta": {"epoch": 40, "iter": 1000, "mmcv_version": "0.2.16"}, "state_dict": state},
               path, legacy=legacy)
    return path


@pytest.mark.parametrize("legacy", [False], ids=["zip"])  # legacy: Monodepth2's r18-legacy case
def test_featdepth_conversion_matches_featdepth(tmp_path, legacy):
    name = "featdepth_r18"
    path = write_featdepth_checkpoint(tmp_path / "fm.pth", legacy=legacy)
    info = convert.convert("featdepth", path, tmp_path / "run", size=(64, 96))
    assert (info["depth_layers"], info["pose_layers"]) == (18, 18)
    extractor = sum(1 for key, _, _ in _layout(name)["files"]["featdepth.pth"]
                    if key.startswith("extractor.") and not key.endswith("num_batches_tracked"))
    assert info["skipped"] == extractor > 0

    model, config = checkpoint.load_model(tmp_path / "run")
    assert config["model"]["depth_decoder"] == "featdepth"
    assert config["converted_from"]["format"] == "featdepth"
    # FeatDepth's own float32 result differs from its float64 one by up to 4.3e-5 in σ_0 with these
    # weights (the chained residual pooling's long sums), so σ is compared at 1e-4.
    _assert_matches_reference(model, name, legacy, disparity_atol=1e-4)

    assert_pose_matches(model, name)


def test_featdepth_bad_checkpoints(tmp_path):
    def drop(state):
        del state["DepthDecoder.crp2.0.3_pointwise.conv.weight"]
    missing = write_featdepth_checkpoint(tmp_path / "missing.pth", edit=drop)
    with pytest.raises(pretrained.CheckpointError, match=r"Missing keys \(1\): crp2.0.3_pointwise"):
        convert.convert("featdepth", missing, tmp_path / "out", size=(64, 96))

    def extra(state):
        state["Discriminator.fc.weight"] = np.ones((2, 2), np.float32)
    foreign = write_featdepth_checkpoint(tmp_path / "foreign.pth", edit=extra)
    with pytest.raises(pretrained.CheckpointError, match="Discriminator.fc.weight"):
        convert.convert("featdepth", foreign, tmp_path / "out", size=(64, 96))

    autoencoder = tmp_path / "autoencoder.pth"
    save_torch({"state_dict": {"Encoder.encoder.conv1.weight": np.ones((64, 3, 7, 7), np.float32),
                               "Decoder.convs.0.weight": np.ones((2, 2), np.float32)}}, autoencoder)
    with pytest.raises(pretrained.CheckpointError, match="feature autoencoder"):
        convert.convert("featdepth", autoencoder, tmp_path / "out")

    def no_pose(state):
        for key in [k for k in state if k.startswith("Pose")]:
            del state[key]
    depth_only = write_featdepth_checkpoint(tmp_path / "depth_only.pth", edit=no_pose)
    with pytest.raises(pretrained.CheckpointError, match="no pose network"):
        convert.convert("featdepth", depth_only, tmp_path / "out", pose=True, size=(64, 96))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# tripled_tf.load


@pytest.fixture(scope="module")
def converted_r18(module_tmp):
    root = module_tmp("md2_r18")
    source = write_monodepth2_folder(root / "md2", "monodepth2_r18", pose=False)
    convert.convert("monodepth2", source, root / "run")
    return root / "run"


def test_load_predicts_the_networks_depth_at_any_size(converted_r18, tmp_path):
    import cv2
    import tripled_tf
    from tripled_tf import frame_sources, prediction

    estimator = tripled_tf.load(converted_r18)
    assert estimator.input_size == (64, 96) and estimator.format == "run_folder"
    assert (estimator.min_depth, estimator.max_depth) == (0.1, 100.0)
    rng = np.random.default_rng(0)

    # At the model's own size the resampling is the identity: the network's depth on image / 255.
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    model, _ = checkpoint.load_model(converted_r18)
    _, expected = model.predict_depth(image[None].astype(np.float32) / 255.0)
    depth = estimator.predict(image)
    assert depth.shape == (64, 96) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, expected.numpy()[0, ..., 0], rtol=1e-4)

    # Any size, a path, a batch: the same numbers as predict's <stem>_depth.npy / _sigmoid.npy.
    photo = rng.integers(0, 256, (75, 130, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    out = tmp_path / "predicted"
    prediction.predict_source(frame_sources.FrameSource(path), estimator.depth_fn, out, progress=False)
    from_cli = np.load(out / "photo_depth.npy")
    assert from_cli.shape == (75, 130)
    np.testing.assert_array_equal(estimator.predict(photo), from_cli)
    np.testing.assert_array_equal(estimator.predict(path), from_cli)
    np.testing.assert_array_equal(estimator.predict_sigmoid(photo), np.load(out / "photo_sigmoid.npy"))
    batch = estimator.predict_batch([photo, photo[:, ::-1].copy()])
    assert batch.shape == (2, 75, 130)
    np.testing.assert_allclose(batch[0], from_cli, rtol=1e-5)
    np.testing.assert_allclose(batch[1], estimator.predict(photo[:, ::-1].copy()), rtol=1e-5)
    with pytest.raises(ValueError, match="different sizes"):
        estimator.predict_batch([photo, image])
    with pytest.raises(ValueError, match="uint8 RGB"):
        estimator.predict(photo.astype(np.float32))
    with pytest.raises(ValueError, match="camera_height"):
        estimator.predict(photo, camera_height=-1.0)


def test_load_names_a_bad_path(tmp_path):
    import tripled_tf

    with pytest.raises(ValueError, match="nothing_here"):
        tripled_tf.load(tmp_path / "nothing_here")


def test_load_metric_scale_from_camera_height():
    """A network that sees a flat ground one unit below the camera: camera_height=1.65 gives depth
    1.65 times the relative one, as predict --camera_height does."""
    from tripled_tf import frame_sources, ground_plane, inference
    from tripled_tf.api import DepthEstimator

    height, width, min_depth, max_depth = 64, 96, 0.1, 100.0
    K = frame_sources.Intrinsics().matrix(width, height)
    rows = np.arange(height, dtype=np.float64)[:, None] + 0.0 * np.arange(width)[None]
    below = rows - K[1, 2]
    depth = np.where(below > 0.5, K[1, 1] * 1.0 / np.maximum(below, 0.5), max_depth)
    sigma = ((1 / depth - 1 / max_depth) / (1 / min_depth - 1 / max_depth)).astype(np.float32)
    ground = inference.DepthFunction(lambda images: np.repeat(sigma[None], len(images), 0),
                                     (height, width), min_depth, max_depth, "ground plane")
    estimator = DepthEstimator(ground)
    image = np.zeros((height, width, 3), np.uint8)
    relative = estimator.predict(image)
    metric = estimator.predict(image, camera_height=1.65)
    expected_scale = ground_plane.scale_from_camera_height(relative, K, 1.65).scale
    np.testing.assert_allclose(metric, relative * np.float32(expected_scale), rtol=1e-6)
    assert abs(expected_scale - 1.65) < 0.05 * 1.65
    np.testing.assert_allclose(estimator.predict_batch([image, image], camera_height=1.65)[1],
                               metric, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Console scripts


def test_console_scripts_in_setup_resolve():
    import importlib
    import re

    setup = (pathlib.Path(__file__).parent.parent / "setup.py").read_text()
    scripts = dict(re.findall(r'"(tripled-[a-z]+)=([\w.:]+)"', setup))
    from tripled_tf import console
    assert set(scripts) == set(console.SCRIPTS)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        assert function == console.SCRIPTS[name]


@pytest.mark.parametrize("script,flag", [("convert", "--from"), ("predict", "--checkpoint")])
def test_console_script_runs(script, flag):
    code = (f"import sys; sys.argv = ['tripled-{script}', '--helpshort']; "
            f"from tripled_tf import console; console.{script}()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    # absl's help exits with status 1.
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{flag}:" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Training from a converted model


def test_training_starts_from_a_converted_model(converted_r18, tmp_path):
    from tripled_tf import training
    from tripled_tf.train_config import TrainConfig
    from tripled_tf.models.depth_model import DepthModelConfig

    converted, _ = checkpoint.load_model(converted_r18)
    config = TrainConfig(model="baseline", height=64, width=96, batch_size=1, num_steps=1,
                                  num_train_samples=2, num_val_samples=0, num_preview=1,
                                  learning_rate=1e-10, warmup_steps=0, verbose=0,
                                  image_summary_every=0, run_eagerly=True,
                                  init_checkpoint=str(converted_r18), log_dir=str(tmp_path / "ft"))
    with pytest.raises(checkpoint.RunFolderError, match="--depth_decoder=monodepth2"):
        training.train(config, DepthModelConfig(depth_decoder="featdepth"))
    assert not (tmp_path / "ft").exists()

    # Pose at the frames' size (as Monodepth2), which keeps this one step small.
    training.train(config, DepthModelConfig(depth_decoder="monodepth2", pose_input_size=None))
    tuned, _ = checkpoint.load_model(tmp_path / "ft")
    # One Adam step at lr 1e-10 moves a weight by at most ~1e-10: every trainable weight is still the
    # converted one (a random initialisation would be off by ~0.1).
    for ours, theirs in zip(tuned.trainable_weights, converted.trainable_weights):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-8,
                                   err_msg=ours.path)


# --------------------------------------------------------------------------------------------------
# Presets, served from 127.0.0.1


def test_presets_download_verify_cache_and_offline(tmp_path, monkeypatch):
    import hashlib
    import http.server
    import threading
    import zipfile

    import tripled_tf
    from tripled_tf import presets

    folder = write_monodepth2_folder(tmp_path / "src", "monodepth2_r18", pose=False)
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "tiny.zip", "w") as z:
        for path in folder.iterdir():
            z.write(path, path.name)
    md5 = hashlib.md5((served / "tiny.zip").read_bytes()).hexdigest()

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/tiny.zip"
    monkeypatch.setitem(presets.PRESETS, "monodepth2:tiny", presets.Preset(url, "monodepth2", md5))
    monkeypatch.setitem(presets.PRESETS, "monodepth2:tiny_bad", presets.Preset(
        url.replace("tiny.zip", "tiny.zip?bad"), "monodepth2", "0" * 32))
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    try:
        monkeypatch.setenv(presets.OFFLINE_ENV, "1")
        with pytest.raises(presets.PresetError) as error:
            tripled_tf.load("monodepth2:tiny")
        message = str(error.value)
        assert url in message and str(tmp_path / "cache" / "downloads" / "tiny.zip") in message
        assert "\n" not in message

        monkeypatch.delenv(presets.OFFLINE_ENV)
        estimator = tripled_tf.load("monodepth2:tiny")
        assert estimator.input_size == (64, 96)
        depth = estimator.predict(np.zeros((30, 40, 3), np.uint8))
        assert depth.shape == (30, 40) and np.isfinite(depth).all()

        with pytest.raises(presets.PresetError, match="download failed|MD5"):
            tripled_tf.load("monodepth2:tiny_bad")
    finally:
        server.shutdown()
    # Cached: no server and downloads forbidden, still loads.
    monkeypatch.setenv(presets.OFFLINE_ENV, "1")
    assert tripled_tf.load("monodepth2:tiny").input_size == (64, 96)
