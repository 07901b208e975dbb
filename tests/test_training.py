"""The trainer (tripled_tf.training): exact resume (also after SIGKILL), the NaN/Inf guard, determinism,
mixed precision, TensorBoard summaries.

Tiny baseline models (ResNet-10, 64x64) keep each run to seconds; the TripleDNet configs are smoke-run
in test_configs.py, distribution is in test_train_distribution.py.
"""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import checkpoint, training
from tripled_tf.data import synthetic
from tripled_tf.data.records import SettingError
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
from tripled_tf.train_callbacks import NonFiniteLossError, TrainingCallback
from tripled_tf.train_config import TrainConfig, schedule_in_steps
from training_runs import run_script, subprocess_env, weights

MODEL = DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None)


def _config(tmp_path, name="run", **changes) -> TrainConfig:
    values = dict(model="baseline", dataset="synthetic", height=64, width=64, batch_size=2,
                  num_steps=4, num_train_samples=6, num_val_samples=0, num_preview=1,
                  learning_rate=1e-3, warmup_steps=0, verbose=0, run_eagerly=True,
                  image_summary_every=0, summary_every=1, log_dir=str(tmp_path / name))
    values.update(changes)
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------------
# Resume.


@pytest.fixture(scope="module")
def resume_runs(module_tmp):
    """One run of 4 steps ("straight") and the same run stopped after step 3 and resumed to step 4
    ("split"), TensorBoard scalars every 2 steps: {"straight", "first", "resumed": train results,
    "after_three": the split run's weights at its stop, "root": their folder}."""
    root = module_tmp("resume")
    model = MODEL  # with dropout: its RNG state is part of the checkpoint
    runs = {"root": root}
    runs["straight"] = training.train(_config(root, "straight", num_steps=4, summary_every=2), model)
    runs["first"] = training.train(_config(root, "split", num_steps=3, summary_every=2), model)
    runs["after_three"] = weights(root / "split")
    with pytest.raises(checkpoint.RunFolderError, match="--resume"):
        training.train(_config(root, "split", num_steps=4, summary_every=2), model)
    runs["resumed"] = training.train(_config(root, "split", num_steps=4, summary_every=2, resume=True),
                                     model)
    return runs


@pytest.mark.xdist_group("resume_runs")  # share the module fixture
def test_resume_continues_exactly_where_the_run_stopped(resume_runs):
    root, straight, resumed = resume_runs["root"], resume_runs["straight"], resume_runs["resumed"]
    assert resumed["resumed_from"] == 3 and resumed["steps"] == straight["steps"] == 4
    # Same weights as the uninterrupted run: optimiser moments, step count (learning rate), dropout
    # and automask-noise RNG states and data position all came back. The last step does change them.
    for a, b in zip(weights(root / "straight"), weights(root / "split")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, c) for a, c in zip(weights(root / "straight"),
                                                      resume_runs["after_three"]))
    # The lean copy (depth.weights.h5) is the resumed run's final depth network, not step 3's.
    assert resumed["depth_weights"] == str(root / "split" / checkpoint.DEPTH_WEIGHTS_FILE)
    lean, _ = checkpoint.load_model(root / "split", depth_only=True)
    full, _ = checkpoint.load_model(root / "split")
    for a, b in zip(lean.depth_branch().get_weights(), full.depth_branch().get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.xdist_group("resume_runs")  # share the module fixture
def test_resume_refuses_a_folder_without_checkpoint_and_another_data_order(tmp_path, resume_runs):
    # A typo in --log_dir: nothing to resume, nothing created.
    with pytest.raises(checkpoint.RunFolderError, match=r"--resume: .*typo holds no checkpoint"):
        training.train(_config(tmp_path, "typo", num_steps=1, resume=True), MODEL)
    assert not (tmp_path / "typo").exists()
    root = resume_runs["root"]
    saved = (root / "straight" / checkpoint.CONFIG_FILE).read_text()
    # Another batch size or seed would continue at another data position: refused, naming both.
    with pytest.raises(checkpoint.RunFolderError,
                       match=r"--batch_size=2 \(now 3\), --seed=1024 \(now 7\).*data order"):
        training.train(_config(root, "straight", num_steps=6, summary_every=2, resume=True,
                               batch_size=3, seed=7), MODEL)
    assert (root / "straight" / checkpoint.CONFIG_FILE).read_text() == saved


def test_epoch_options_resolve_in_updates():
    config = TrainConfig(num_steps=0, num_epochs=3, decay_epochs=(2,), batch_size=2,
                         accumulate_steps=2, eval_every_epoch=True)
    # 21 triplets: 10 batches of 2 (one dropped), 5 updates of 2 batches per epoch.
    resolved = schedule_in_steps(config, num_samples=21)
    assert (resolved.num_steps, resolved.decay_steps, resolved.eval_every) == (15, (10,), 5)
    with pytest.raises(ValueError, match="needs --dataset=kitti"):
        TrainConfig(num_val_samples=-1)


def test_accumulate_steps_counts_updates(tmp_path):
    # Two updates of two accumulated batches each: four batches, checkpoints at updates only.
    result = training.train(_config(tmp_path, num_steps=2, accumulate_steps=2, checkpoint_every=1,
                                    num_preview=0), MODEL)
    assert result["steps"] == 2 and result["batches"] == 4
    latest = checkpoint.latest_checkpoint(tmp_path / "run")
    assert latest["step"] == 2 and latest["batches"] == 4
    # (num_preview=0: no preview, where an empty one crashed the end of the run.)
    assert result["preview"] is None and not (tmp_path / "run" / "preview.png").exists()


@pytest.mark.xdist_group("resume_runs")  # share the module fixture
def test_resume_refuses_another_model_configuration(resume_runs):
    other = dataclasses.replace(MODEL, smoothness_weight=0.5)
    with pytest.raises(checkpoint.RunFolderError, match="another model configuration"):
        training.train(_config(resume_runs["root"], "straight", num_steps=6, summary_every=2,
                               resume=True), other)


def test_sigkill_mid_run_leaves_a_checkpoint_the_resumed_run_continues(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "tripled_tf.train", "--model=baseline", "--dataset=synthetic",
            "--height=64", "--width=64", "--batch_size=2", "--num_train_samples=6",
            "--num_val_samples=0", "--num_preview=1", "--depth_layers=10", "--pose_layers=10", "--pose_height=0",
            "--pose_width=0", "--encoder_weights=none", "--checkpoint_every=1", "--verbose=0",
            "--run_eagerly", "--image_summary_every=0", f"--log_dir={run_dir}"]
    proc = subprocess.Popen(args + ["--num_steps=500"], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            info = checkpoint.latest_checkpoint(run_dir)
            if info is not None and info["step"] >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGKILL)  # at an arbitrary moment, possibly mid-checkpoint
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    info = checkpoint.latest_checkpoint(run_dir)
    assert info["step"] >= 3 and os.path.isfile(info["weights"]) and os.path.isfile(info["state"])
    killed_at = info["step"]
    done = subprocess.run(args + [f"--num_steps={killed_at + 1}", "--resume"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] == killed_at and result["steps"] == killed_at + 1
    assert all(np.isfinite(v) for v in result["final_losses"].values())


# ------------------------------------------------------------------------------------------------
# Non-finite losses.


def _fit_setup(tmp_path, kinds, optimizer=None, **changes):
    """(model, callback, dataset) for model.fit: the tiny model (eager), a TrainingCallback that
    checkpoints every step into tmp_path/run, and one batch per entry of ``kinds``: "good", or "bad"
    (one NaN pixel: the networks spread it, every loss term turns NaN)."""
    config = _config(tmp_path, checkpoint_every=1, summary_every=0, **changes)
    data = synthetic.make_triplets(2, 64, 64, seed=1, split="train")
    good = {k: tf.constant(data[k]) for k in ("target", "source_prev", "source_next", "K")}
    poisoned = data["target"].copy()
    poisoned[0, 10, 10] = np.nan
    bad = dict(good, target=tf.constant(poisoned))
    dataset = tf.data.Dataset.from_tensors(good if kinds[0] == "good" else bad)
    for kind in kinds[1:]:
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(good if kind == "good" else bad))
    keras.utils.set_random_seed(1)
    model = MonoDepthModel(MODEL)
    model.build_for_size(64, 64)
    model.compile(optimizer=optimizer or training.make_optimizer(config), run_eagerly=True)
    model.optimizer.build(model.trainable_variables)
    callback = TrainingCallback(config.log_dir, config, 0)
    return model, callback, dataset


def _nan_fit(tmp_path, skip: bool):
    return _fit_setup(tmp_path, ["good", "bad", "good"], skip_nonfinite=skip)


def test_nonfinite_loss_stops_naming_step_and_term_without_a_poisoned_checkpoint(tmp_path):
    model, callback, dataset = _nan_fit(tmp_path, skip=False)
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(batch 2\).*photometric.*step 1\) is intact"):
        model.fit(dataset, epochs=1, steps_per_epoch=3, callbacks=[callback], verbose=0)
    info = checkpoint.latest_checkpoint(tmp_path / "run")
    assert info["step"] == 1  # written after the good step only
    # The NaN step was not applied: the weights in memory are still those of the checkpoint.
    saved = MonoDepthModel(MODEL)
    saved.build_for_size(64, 64)
    saved.load_weights(info["weights"])
    for a, b in zip(model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_skip_nonfinite_skips_the_batch_and_goes_on(tmp_path):
    model, callback, dataset = _nan_fit(tmp_path, skip=True)
    model.fit(dataset, epochs=1, steps_per_epoch=3, callbacks=[callback], verbose=0)
    assert callback.skipped == 1 and callback.batches == 3
    assert int(model.optimizer.iterations.numpy()) == 2
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_skip_nonfinite_gives_up_after_max_consecutive_nonfinite_batches(tmp_path):
    kinds = ["good", "bad", "good", "bad", "bad", "good"]
    model, callback, dataset = _fit_setup(tmp_path, kinds, skip_nonfinite=True,
                                          max_consecutive_nonfinite=2)
    # Batch 2 alone is skipped; batches 4 and 5 are two in a row: stop there, at step 3.
    with pytest.raises(NonFiniteLossError, match=r"2 batches in a row.*step 3 \(batch 5\).*"
                                                 r"max_consecutive_nonfinite=2.*\(step 2\) is intact"):
        model.fit(dataset, epochs=1, steps_per_epoch=len(kinds), callbacks=[callback], verbose=0)
    assert callback.skipped == 3 and checkpoint.latest_checkpoint(tmp_path / "run")["step"] == 2


class _NanAfterFirstStep(keras.optimizers.schedules.LearningRateSchedule):
    """1e-3 for the first update, NaN from the second on: the second update poisons every weight,
    although its loss (computed with the first step's weights) is finite."""

    def __call__(self, step):
        return tf.where(step < 1, 1e-3, float("nan"))


class _HugeAfterFirstStep(keras.optimizers.schedules.LearningRateSchedule):
    """1e-3, then 1e6 (a learning rate far too high): finite weights whose forward pass overflows."""

    def __call__(self, step):
        return tf.where(step < 1, 1e-3, 1e6)


def test_a_nonfinite_loss_on_finite_data_does_not_call_the_diverged_checkpoint_intact(tmp_path):
    model, callback, dataset = _fit_setup(tmp_path, ["good"] * 4,
                                          optimizer=keras.optimizers.Adam(_HugeAfterFirstStep()))
    with pytest.raises(NonFiniteLossError) as raised:
        model.fit(dataset, epochs=1, steps_per_epoch=4, callbacks=[callback], verbose=0)
    message = str(raised.value)
    # The weights of the last checkpoint are the ones whose forward pass just gave NaN/Inf.
    step = checkpoint.latest_checkpoint(tmp_path / "run")["step"]
    assert step >= 2 and f"at step {step + 1} " in message, message
    assert "on a finite batch: the model diverged" in message, message
    assert f"(step {step}) holds these same weights" in message and "intact" not in message


def test_an_update_that_poisons_the_weights_stops_before_they_are_saved(tmp_path):
    model, callback, dataset = _fit_setup(tmp_path, ["good"] * 3,
                                          optimizer=keras.optimizers.Adam(_NanAfterFirstStep()),
                                          skip_nonfinite=True)  # cannot be skipped: it is applied
    with pytest.raises(NonFiniteLossError,
                       match=r"weights after update at step 2 \(batch 2\).*\(step 1\) is intact"):
        model.fit(dataset, epochs=1, steps_per_epoch=3, callbacks=[callback], verbose=0)
    info = checkpoint.latest_checkpoint(tmp_path / "run")
    assert info["step"] == 1
    restored = MonoDepthModel(MODEL)
    restored.build_for_size(64, 64)
    checkpoint.load_model_weights(restored, info["weights"])
    assert all(np.all(np.isfinite(w)) for w in restored.get_weights())
    with np.load(info["state"]) as state:
        assert all(np.all(np.isfinite(state[k])) for k in state.files if state[k].dtype.kind == "f")


# ------------------------------------------------------------------------------------------------
# Determinism, mixed precision, TensorBoard.


def test_deterministic_runs_give_identical_losses_and_weights(tmp_path):
    # A subprocess: op determinism is process-wide and would constrain the other tests.
    proc = run_script(f"""
        import json, numpy as np
        from tripled_tf import checkpoint, training
        from tripled_tf.models.depth_model import DepthModelConfig
        from tripled_tf.train_config import TrainConfig
        model = DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None)
        out = []
        for name in ("a", "b"):
            config = TrainConfig(model="baseline", height=64, width=64, batch_size=2, num_steps=2,
                                 num_train_samples=6, num_val_samples=0, num_preview=1,
                                 learning_rate=1e-3, warmup_steps=0, verbose=0, run_eagerly=True,
                                 image_summary_every=0, deterministic=True,
                                 log_dir="{tmp_path}/" + name)
            result = training.train(config, model)
            weights = checkpoint.load_model(config.log_dir)[0].get_weights()
            out.append((result["final_losses"], weights))
        same = all(np.array_equal(x, y) for x, y in zip(out[0][1], out[1][1]))
        print(json.dumps({{"losses": [out[0][0], out[1][0]], "same_weights": same}}))
        """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["losses"][0] == report["losses"][1]
    assert report["same_weights"]


def test_mixed_precision_trains_with_finite_losses_and_restores_the_policy(tmp_path):
    # One batch: float16 kernels are slow on CPU (one eager step ~5 s here).
    result = training.train(_config(tmp_path, num_steps=1, mixed_precision=True), MODEL)
    # Dynamic loss scaling starts at 2^15 and skips (halving the scale) while float16 gradients
    # overflow, so a step may be skipped by design: 1 batch, 0 or 1 optimiser step.
    assert result["batches"] == 1 and result["steps"] in (0, 1)
    assert all(np.isfinite(v) for v in result["final_losses"].values()), result["final_losses"]
    assert keras.config.dtype_policy().name == "float32"


def test_tensorboard_logs_every_term_learning_rate_throughput_images_and_held_out(tmp_path):
    config = _config(tmp_path, num_steps=2, summary_every=1, image_summary_every=2,
                     num_val_samples=2, eval_every=1)
    result = training.train(config, MODEL)
    # --eval_every=1: a held-out evaluation after each step; the last one is the run's final figure.
    assert [step for step, _ in result["held_out_curve"]] == [1, 2]
    assert result["held_out_curve"][-1][1] == pytest.approx(result["abs_rel_after"], abs=1e-6)
    tags = set()
    for path in (tmp_path / "run" / "logs").rglob("events.out.tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    for tag in ("loss", "loss/photometric", "loss/smoothness", "loss/grad_norm", "learning_rate",
                "images_per_s", "images/input", "images/disparity", "held_out/abs_rel", "held_out/a1"):
        assert tag in tags, sorted(tags)
    # The best of the evaluations is kept as a run folder of its own, and reloads to its figure.
    curve = dict(result["held_out_curve"])
    best_step = min(curve, key=curve.get)
    assert (result["best_step"], result["best_abs_rel"]) == (best_step, curve[best_step])
    assert checkpoint.best_checkpoint(tmp_path / "run")["step"] == best_step
    model, config = checkpoint.load_model(result["best_checkpoint"])
    val = synthetic.make_triplets(2, 64, 64, seed=config["train"]["seed"], split="val")
    from tripled_tf import evaluation
    reloaded = evaluation.evaluate_depth(model, val["target"], val["depth"])
    assert reloaded["abs_rel"] == pytest.approx(result["best_abs_rel"], rel=1e-4)


def _tensorboard_scalars(run_dir) -> dict:
    """{step: {tag: value}} of every TensorBoard scalar a run folder holds."""
    values = {}
    for path in (pathlib.Path(run_dir) / "logs").rglob("events.out.tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values.setdefault(event.step, {})[value.tag] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.xdist_group("resume_runs")  # share the module fixture
def test_tensorboard_losses_are_interval_means_that_a_resume_continues(resume_runs):
    root, straight = resume_runs["root"], resume_runs["straight"]
    first, resumed = resume_runs["first"], resume_runs["resumed"]
    once, split = _tensorboard_scalars(root / "straight"), _tensorboard_scalars(root / "split")
    assert sorted(once) == sorted(split) == [2, 4]
    # final_losses are the running means of one fit: steps 1-4, steps 1-3, and step 4 alone.
    loss_3 = 3 * first["final_losses"]["loss"] - 2 * once[2]["loss"]
    loss_4 = resumed["final_losses"]["loss"]
    # Step 4 shows the mean of steps 3 and 4 (not of 1-4), the same in the resumed run.
    assert once[4]["loss"] == pytest.approx((loss_3 + loss_4) / 2, abs=3e-5)
    assert (once[2]["loss"] + once[4]["loss"]) / 2 == pytest.approx(straight["final_losses"]["loss"],
                                                                    abs=2e-6)
    for step in (2, 4):
        for tag, value in once[step].items():
            if tag.startswith("loss"):
                assert split[step][tag] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, tag)


def test_missing_tensorboard_is_refused_before_any_setup(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(SettingError, match=r"pip install tensorboard.*--summary_every=0"):
        training.train(_config(tmp_path, num_steps=1), MODEL)
    assert not (tmp_path / "run").exists()
