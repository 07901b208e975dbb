"""The baseline model, its train step and the training entry point."""
import json
import os
import pathlib
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import checkpoint, evaluation
from tripled_tf.data import synthetic
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
from tripled_tf.schedules import WarmupStepDecay

HEIGHT, WIDTH = 64, 128


@pytest.fixture(scope="module")
def batch():
    data = synthetic.make_triplets(2, HEIGHT, WIDTH, seed=3, split="train")
    return {k: tf.constant(v) for k, v in data.items()}


def _model():
    model = MonoDepthModel(DepthModelConfig(pose_input_size=None))
    model.build_for_size(HEIGHT, WIDTH)
    return model


def test_warmup_step_decay_matches_reference_formula():
    schedule = WarmupStepDecay(1e-4, warmup_steps=500, warmup_ratio=1 / 3, decay_steps=[1000],
                               decay_factor=0.5)
    # lr_it = lr·(1 − (1 − it/500)·(2/3)): it=0 -> lr/3, it=250 -> 2/3·lr, it>=500 -> lr
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 250, 500, 999, 1000, 5000)],
                               [1e-4 / 3, 2e-4 / 3, 1e-4, 1e-4, 5e-5, 5e-5], rtol=1e-5)


def test_outputs_and_predict_depth_range():
    model = _model()
    images = tf.random.uniform([2, HEIGHT, WIDTH, 3])
    disps = model(images, training=False)
    assert [tuple(d.shape) for d in disps] == [(2, HEIGHT // 2 ** (s + 1), WIDTH // 2 ** (s + 1), 1)
                                               for s in range(4)]
    disp, depth = model.predict_depth(images)
    assert disp.shape == (2, HEIGHT, WIDTH, 1)
    assert float(tf.reduce_min(depth)) >= 0.1 - 1e-6 and float(tf.reduce_max(depth)) <= 100.0 + 1e-3


def test_loss_gradients_reach_every_network(batch):
    model = _model()
    with tf.GradientTape() as tape:
        values = model.compute_losses(batch, training=True)
    grads = tape.gradient(values["loss"], model.trainable_variables)
    names = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not names, f"no gradient for {names[:5]}"
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    for part in ("depth_encoder", "depth_decoder", "pose_net"):
        norm = tf.linalg.global_norm([g for v, g in zip(model.trainable_variables, grads)
                                      if v.path.startswith(part)])
        assert float(norm) > 0, part
    assert 0.0 <= float(values["automask_fraction"]) <= 1.0
    # total = photometric + 1e-3 · smoothness
    np.testing.assert_allclose(float(values["loss"]),
                               float(values["photometric"]) + 1e-3 * float(values["smoothness"]),
                               rtol=1e-5)


@pytest.mark.parametrize("decoder", ["featdepth", "monodepth2"])
def test_reprojection_loss_equals_its_per_scale_definition(batch, decoder):
    """The batched loss (scales stacked along the batch axis) = METHOD.md §4 written scale by scale:
    mean over scales of mean(min(identity errors, warped errors)) + 1e-3 · Σ_s S_s / 2^s / 4."""
    from tripled_tf import geometry, losses

    model = MonoDepthModel(DepthModelConfig(pose_input_size=None, depth_decoder=decoder,
                                            identity_noise=0.0))
    model.build_for_size(HEIGHT, WIDTH)
    disparities = model(batch["target"], training=False)
    if decoder == "monodepth2":
        assert disparities[0].shape[1:3] == (HEIGHT, WIDTH) and model.output_stride == 1
    poses = model.predict_poses(batch, training=False)
    values = model._reprojection_losses(batch, disparities, poses)

    target, K = batch["target"], batch["K"]
    inv_K = tf.linalg.inv(K)
    sources = {"source_prev": batch["source_prev"], "source_next": batch["source_next"]}
    identity = [losses.photometric_error(s, target) for s in sources.values()]
    photometric = smoothness = 0.0
    for scale, disp in enumerate(disparities):
        _, depth = geometry.disp_to_depth(geometry.resize_bilinear(disp, [HEIGHT, WIDTH]), 0.1, 100.0)
        warped = [losses.photometric_error(geometry.warp(s, depth, poses[k], K, inv_K), target)
                  for k, s in sources.items()]
        errors = tf.concat(identity + warped, axis=-1)
        photometric += float(tf.reduce_mean(tf.reduce_min(errors, axis=-1))) / 4
        smoothness += float(losses.smoothness_loss(losses.normalize_disparity(disp), target)) / 2 ** scale / 4
    np.testing.assert_allclose(float(values["photometric"]), photometric, rtol=1e-5)
    np.testing.assert_allclose(float(values["smoothness"]), smoothness, rtol=1e-5)
    np.testing.assert_allclose(float(values["loss"]), photometric + 1e-3 * smoothness, rtol=1e-5)


def test_decoder_choice_and_dropout_defaults():
    from tripled_tf.models.tripled_net import TripleDConfig

    assert DepthModelConfig().dropout == 0.5  # FeatDepth's decoder: 0.5 on levels 4 and 5
    assert DepthModelConfig(depth_decoder="monodepth2").dropout == 0.0  # Monodepth2 has none
    assert DepthModelConfig(dropout=0.2).dropout == 0.2
    with pytest.raises(ValueError, match="no dropout"):
        DepthModelConfig(depth_decoder="monodepth2", dropout=0.5)
    with pytest.raises(ValueError, match="depth_decoder must be one of"):
        DepthModelConfig(depth_decoder="hrdepth")
    with pytest.raises(ValueError, match="FeatDepth's depth decoder"):
        TripleDConfig(depth_decoder="monodepth2")
    restored = DepthModelConfig.from_dict(DepthModelConfig(depth_decoder="monodepth2").to_dict())
    assert restored.depth_decoder == "monodepth2" and restored.dropout == 0.0


def test_train_step_fits_a_fixed_batch(batch):
    # A few Adam steps on one batch must lower its photometric loss: the gradients point downhill.
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(5e-4, global_clipnorm=35.0))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    before = float(model.compute_losses(batch, training=False)["photometric"])
    model.fit(data, steps_per_epoch=12, epochs=1, verbose=0, shuffle=False)
    after = float(model.compute_losses(batch, training=False)["photometric"])
    assert after < before * 0.95, (before, after)


def test_missing_batch_key_is_a_clear_error(batch):
    model = _model()
    broken = {k: v for k, v in batch.items() if k != "K"}
    with pytest.raises(ValueError, match="missing 'K'"):
        model.compute_losses(broken)


def test_config_round_trip():
    model = MonoDepthModel(DepthModelConfig(depth_layers=50, pose_input_size=(64, 96)))
    clone = MonoDepthModel.from_config(model.get_config())
    assert clone.config == model.config
    with pytest.raises(ValueError, match="sampling"):
        DepthModelConfig(sampling="nearest")


def _run_train(args, tmp_path):
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "tripled_tf.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_cli_smoke_run_leaves_a_complete_run_folder(tmp_path, repo_root):
    run_dir = tmp_path / "run"
    proc = _run_train([f"--flagfile={repo_root / 'configs' / 'demo_baseline.cfg'}", "--height=64",
                       "--width=128", "--batch_size=1", "--num_steps=2", "--num_train_samples=2",
                       "--num_val_samples=2", "--num_preview=2", "--verbose=0",
                       f"--log_dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("abs_rel_before", "abs_rel_after", "checkpoint", "preview"):
        assert key in result
    assert result["steps"] == 2
    assert pathlib.Path(result["checkpoint"]).is_file()
    preview = cv2.imread(result["preview"])
    assert preview.shape == (2 * 64, 3 * 128, 3)  # 2 rows of input | prediction | ground truth
    assert checkpoint.latest_checkpoint(run_dir)["step"] == 2
    # Reloading the checkpoint reproduces the reported held-out AbsRel exactly.
    model, config = checkpoint.load_model(run_dir)
    val = synthetic.make_triplets(2, 64, 128, seed=config["train"]["seed"], split="val")
    reloaded = evaluation.evaluate_depth(model, val["target"], val["depth"])
    assert reloaded["abs_rel"] == pytest.approx(result["abs_rel_after"], rel=1e-4)


def test_train_cli_rejects_bad_size(tmp_path):
    proc = _run_train(["--height=100", "--num_steps=1", f"--log_dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0
    assert "multiples of 32" in proc.stderr
    assert not (tmp_path / "r").exists()


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def test_train_cli_on_the_shared_kitti_snippet(tmp_path, shared_data):
    drive = "2011_09_26/2011_09_26_drive_0000_sync"
    split = tmp_path / "train.txt"
    split.write_text("".join(f"{drive} {i} l\n" for i in range(12)))
    val = tmp_path / "val.txt"
    val.write_text(f"{drive} 5 l\n")
    proc = _run_train(["--dataset=kitti", f"--data_path={shared_data / 'kitti_raw'}",
                       f"--split={split}", f"--val_split={val}", "--height=64", "--width=192",
                       "--model=baseline", "--depth_layers=18", "--run_eagerly",
                       "--batch_size=2", "--num_steps=2", "--pose_height=0", "--pose_width=0",
                       "--num_preview=1", "--verbose=0", f"--log_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # frames 0 and 11 have no neighbour on one side: skipped and reported, not crashed on
    assert "kitti: 10 training triplets (skipped 2" in proc.stdout
    result = _last_json(proc.stdout)
    assert result["metrics_before"]["num_images"] == 1  # frame 5, ground truth from its Velodyne scan
    assert 0 < result["abs_rel_after"] < 1
    assert cv2.imread(result["preview"]).shape == (64, 3 * 192, 3)


def test_train_cli_stops_on_a_truncated_frame_naming_it(tmp_path):
    frames = synthetic.make_triplets(2, 64, 192, seed=1)["target"]
    folder = tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync" / "image_02" / "data"
    folder.mkdir(parents=True)
    for i in range(4):
        ok, png = cv2.imencode(".png", (frames[i % 2] * 255).astype(np.uint8))
        data = png.tobytes()
        (folder / f"{i:010d}.png").write_bytes(data[:len(data) // 2] if i == 2 else data)
    split = tmp_path / "split.txt"
    split.write_text("2011_09_26/2011_09_26_drive_0001_sync 1 l\n2011_09_26/2011_09_26_drive_0001_sync 2 l\n")
    proc = _run_train(["--dataset=kitti", f"--data_path={tmp_path}", f"--split={split}",
                       "--height=64", "--width=192", "--batch_size=2", "--num_steps=2",
                       "--pose_height=0", "--pose_width=0", "--verbose=0", "--model=baseline",
                       "--depth_layers=18", "--run_eagerly", f"--log_dir={tmp_path / 'run'}"],
                      tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "0000000002.png" in last and "truncated PNG" in last


def test_train_cli_video_that_cannot_be_opened(tmp_path):
    video = tmp_path / "drive.mp4"
    video.write_bytes(b"not a video at all")
    proc = _run_train(["--dataset=video", f"--data_path={video}", "--fx=100", "--fy=100", "--cx=50",
                       "--cy=30", "--num_steps=1", "--model=baseline", f"--log_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(video) in last


def test_build_model_loads_converted_encoder_weights(tmp_path):
    from tripled_tf.models import pretrained
    from tripled_tf.models.resnet import ResNetEncoder, torchvision_key_map
    from tripled_tf.training import TrainConfig, build_model

    # A torchvision-layout state (OIHW kernels) from a differently initialised encoder.
    source = ResNetEncoder(18)
    state = {}
    for key, variable in torchvision_key_map(source).items():
        value = variable.numpy() + 0.5
        state[key] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    path = tmp_path / "rn18.npz"
    pretrained.save_state_npz(state, path)
    config = TrainConfig(model="baseline", height=64, width=64, encoder_weights=str(path),
                         pose_encoder_weights=str(path))
    model = build_model(config, DepthModelConfig(pose_input_size=None))
    loaded = torchvision_key_map(model.encoder)
    np.testing.assert_array_equal(loaded["layer3.1.bn2.weight"].numpy(), state["layer3.1.bn2.weight"])
    np.testing.assert_array_equal(loaded["conv1.weight"].numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))
    # The pose encoder's 6-channel conv1 = the 3-channel kernel repeated for both frames, halved.
    pose_conv1 = torchvision_key_map(model.pose_net.encoder)["conv1.weight"].numpy()
    expected = np.concatenate([state["conv1.weight"]] * 2, axis=1).transpose(2, 3, 1, 0) / 2
    np.testing.assert_allclose(pose_conv1, expected, rtol=1e-6)
