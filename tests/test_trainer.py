"""The production trainer: exact resume (also after SIGKILL), the NaN/Inf guard, determinism,
distributed equivalence (two logical CPUs; two worker processes: identical weights on both, every
worker resumes the chief's checkpoint), mixed precision.

Tiny baseline models (ResNet-18, 64x64) keep each run to seconds; the TripleDNet configs are smoke-run
in test_configs.py.
"""
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import checkpoint, training
from tripled_tf.data import synthetic
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
from tripled_tf.training import NonFiniteLossError, TrainConfig, TrainingCallback

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = DepthModelConfig(depth_layers=18, pose_layers=18, pose_input_size=None)


def _config(tmp_path, name="run", **changes) -> TrainConfig:
    values = dict(model="baseline", dataset="synthetic", height=64, width=64, batch_size=2,
                  num_steps=4, num_train_samples=6, num_val_samples=0, num_preview=1,
                  learning_rate=1e-3, warmup_steps=0, verbose=0, run_eagerly=True,
                  image_summary_every=0, summary_every=1, log_dir=str(tmp_path / name))
    values.update(changes)
    return TrainConfig(**values)


def _weights(run_dir):
    model, _ = checkpoint.load_model(run_dir)
    return model.get_weights()


def _subprocess_env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


# ------------------------------------------------------------------------------------------------
# Resume.


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    model = MODEL  # with dropout: its RNG state is part of the checkpoint
    straight = training.train(_config(tmp_path, "straight", num_steps=4), model)
    training.train(_config(tmp_path, "split", num_steps=2), model)
    after_two = _weights(tmp_path / "split")
    with pytest.raises(checkpoint.RunFolderError, match="--resume"):
        training.train(_config(tmp_path, "split", num_steps=4), model)
    resumed = training.train(_config(tmp_path, "split", num_steps=4, resume=True), model)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == straight["steps"] == 4
    # Same weights as the uninterrupted run: optimiser moments, step count (learning rate), dropout
    # and automask-noise RNG states and data position all came back. Two more steps do change them.
    for a, b, c in zip(_weights(tmp_path / "straight"), _weights(tmp_path / "split"), after_two):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, c) for a, c in zip(_weights(tmp_path / "straight"), after_two))


def test_resume_refuses_another_model_configuration(tmp_path):
    training.train(_config(tmp_path, num_steps=1), MODEL)
    other = dataclasses.replace(MODEL, smoothness_weight=0.5)
    with pytest.raises(checkpoint.RunFolderError, match="another model configuration"):
        training.train(_config(tmp_path, num_steps=2, resume=True), other)


def test_sigkill_mid_run_leaves_a_checkpoint_the_resumed_run_continues(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "tripled_tf.train", "--model=baseline", "--dataset=synthetic",
            "--height=64", "--width=64", "--batch_size=2", "--num_train_samples=6",
            "--num_val_samples=0", "--num_preview=1", "--depth_layers=18", "--pose_height=0",
            "--pose_width=0", "--encoder_weights=none", "--checkpoint_every=1", "--verbose=0",
            "--run_eagerly", "--image_summary_every=0", f"--log_dir={run_dir}"]
    proc = subprocess.Popen(args + ["--num_steps=500"], cwd=tmp_path, env=_subprocess_env(),
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
    done = subprocess.run(args + [f"--num_steps={killed_at + 2}", "--resume"], cwd=tmp_path,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] == killed_at and result["steps"] == killed_at + 2
    assert all(np.isfinite(v) for v in result["final_losses"].values())


# ------------------------------------------------------------------------------------------------
# Non-finite losses.


def _nan_fit(tmp_path, skip: bool):
    config = _config(tmp_path, skip_nonfinite=skip, checkpoint_every=1, summary_every=0)
    data = synthetic.make_triplets(2, 64, 64, seed=1, split="train")
    good = {k: tf.constant(data[k]) for k in ("target", "source_prev", "source_next", "K")}
    poisoned = data["target"].copy()
    poisoned[0, 10, 10] = np.nan  # one pixel: the networks spread it, every loss term turns NaN
    bad = dict(good, target=tf.constant(poisoned))
    dataset = tf.data.Dataset.from_tensors(good).concatenate(
        tf.data.Dataset.from_tensors(bad)).concatenate(tf.data.Dataset.from_tensors(good))
    keras.utils.set_random_seed(1)
    model = MonoDepthModel(MODEL)
    model.build_for_size(64, 64)
    model.compile(optimizer=training.make_optimizer(config), run_eagerly=True)
    model.optimizer.build(model.trainable_variables)
    callback = TrainingCallback(config.log_dir, config, 0)
    return model, callback, dataset


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


# ------------------------------------------------------------------------------------------------
# Determinism, mixed precision, TensorBoard.


def _run_script(code: str, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env=env or _subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_deterministic_runs_give_identical_losses_and_weights(tmp_path):
    # A subprocess: op determinism is process-wide and would constrain the other tests.
    proc = _run_script(f"""
        import json, numpy as np
        from tripled_tf import checkpoint, training
        from tripled_tf.models.depth_model import DepthModelConfig
        from tripled_tf.training import TrainConfig
        model = DepthModelConfig(depth_layers=18, pose_layers=18, pose_input_size=None)
        out = []
        for name in ("a", "b"):
            config = TrainConfig(model="baseline", height=64, width=64, batch_size=2, num_steps=3,
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
    result = training.train(_config(tmp_path, num_steps=2, mixed_precision=True), MODEL)
    # Dynamic loss scaling starts at 2^15 and skips (halving the scale) while float16 gradients
    # overflow, so a step may be skipped by design: 2 batches, 1 or 2 optimiser steps.
    assert result["batches"] == 2 and result["steps"] in (1, 2)
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


# ------------------------------------------------------------------------------------------------
# Distribution: the loss of a 2-replica run equals the 1-replica run on the same global batch.

_DISTRIBUTED_RUN = """
    import json, os, sys
    import tensorflow as tf
    if {logical_cpus} > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * {logical_cpus})
    from tripled_tf import checkpoint, training
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.training import TrainConfig
    # No dropout: its masks are drawn per replica, so they could not match one replica's.
    model = DepthModelConfig(depth_layers=18, pose_layers=18, pose_input_size=None, dropout=0.0)
    results = {{}}
    for strategy in {strategies}:
        config = TrainConfig(model="baseline", height=64, width=64, batch_size=2, num_steps=2,
                             num_train_samples=6, num_val_samples=0, num_preview=1,
                             learning_rate=1e-3, warmup_steps=0, verbose=0,
                             image_summary_every=0, strategy=strategy,
                             log_dir=os.path.join({run_root!r}, strategy))
        results[strategy] = training.train(config, model)
    print(json.dumps(results))
"""


def _losses(result):
    return {k: v for k, v in result["final_losses"].items() if k != "grad_norm"}


def _assert_same_losses(one, two):
    for name, value in _losses(one).items():
        # automask_fraction counts pixels whose winner is decided by the 1e-5 tie-breaking noise,
        # which each replica draws for its own half of the batch: a few pixels may flip.
        tolerance = dict(abs=1e-3) if name == "automask_fraction" else dict(rel=2e-4, abs=1e-6)
        assert two["final_losses"][name] == pytest.approx(value, **tolerance), name


@pytest.fixture(scope="module")
def one_replica_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_replica")
    proc = _run_script(_DISTRIBUTED_RUN.format(logical_cpus=2, strategies=["default", "mirrored"],
                                               run_root=str(root)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.xdist_group("one_replica")  # share the module fixture
def test_mirrored_two_logical_cpus_equals_one_replica(one_replica_result):
    default, mirrored = one_replica_result["default"], one_replica_result["mirrored"]
    assert default["replicas"] == 1 and mirrored["replicas"] == 2
    _assert_same_losses(default, mirrored)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# One worker process of a two-machine run (README: Training on several machines). The chief keeps a
# copy of its run folder as it is after the step-2 checkpoint, i.e. the folder a run stopped there
# leaves: the resume test continues it, and the same launch's step-4 weights are the uninterrupted
# reference.
_WORKER_RUN = """
    import json, shutil
    from tripled_tf import checkpoint, training
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.training import TrainConfig
    model = DepthModelConfig(depth_layers=18, pose_layers=18, pose_input_size=None, dropout=0.0)
    config = TrainConfig(model="baseline", height=64, width=64, batch_size=2, num_steps=4,
                         num_train_samples=6, num_val_samples=0, num_preview=1,
                         learning_rate=1e-3, warmup_steps=0, verbose=0, image_summary_every=0,
                         summary_every=1, checkpoint_every=2, strategy="multi_worker",
                         resume={resume}, log_dir={log_dir!r})
    if {snapshot!r}:
        save = checkpoint.save_checkpoint
        def save_and_copy(model, run_dir, step, *args, **kwargs):
            path = save(model, run_dir, step, *args, **kwargs)
            if step == 2:
                shutil.copytree(run_dir, {snapshot!r})
            return path
        checkpoint.save_checkpoint = save_and_copy
    print(json.dumps(training.train(config, model)))
"""


def _run_workers(codes):
    """Runs one process per script with the TF_CONFIG of a cluster on 127.0.0.1 (worker i runs
    codes[i]); returns their result dicts (the last line each prints)."""
    ports = _free_ports(len(codes))
    workers = []
    for index, code in enumerate(codes):
        env = _subprocess_env()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}})
        # Files, not pipes: a worker blocked on a full pipe would stall the others' collectives.
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        workers.append((subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                                         env=env, stdout=out, stderr=err, text=True), out, err))
    outputs = []
    try:
        for proc, out, err in workers:
            proc.wait(timeout=600)
            out.seek(0)
            err.seek(0)
            assert proc.returncode == 0, err.read()[-4000:]
            outputs.append(json.loads(out.read().strip().splitlines()[-1]))
    finally:
        for proc, out, err in workers:  # a failed worker leaves the others waiting on a collective
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err.close()
    return outputs


def _scalars_at(run_dir, step) -> dict:
    """{tag: value} of the TensorBoard scalars a run wrote at ``step``."""
    values = {}
    for path in (pathlib.Path(run_dir) / "logs").rglob("events.out.tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if event.step == step:
                values.update({v.tag: float(tf.make_ndarray(v.tensor)) for v in event.summary.value})
    return values


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
    """Four steps on two worker processes, each with its own --log_dir (machines without shared
    storage); the chief's folder after step 2 is kept as "stopped"."""
    root = tmp_path_factory.mktemp("two_workers")
    outputs = _run_workers([_WORKER_RUN.format(resume=False, log_dir=str(root / f"worker{i}"),
                                               snapshot=str(root / "stopped") if i == 0 else "")
                            for i in range(2)])
    return root, outputs


@pytest.mark.xdist_group("one_replica")  # share the module fixtures
def test_two_worker_processes_equal_one_replica_and_end_with_identical_weights(
        one_replica_result, two_worker_run):
    root, (chief, worker) = two_worker_run
    assert chief["replicas"] == 2 and chief["steps"] == 4
    # Bit-identical weights, BatchNorm statistics and optimiser state on both workers, not merely
    # close: the initial values are broadcast from the chief, and every step applies the same
    # all-reduced gradients (and synchronised BatchNorm statistics) to the same values.
    assert worker == {"steps": 4, "chief": False, "weights_sha256": chief["weights_sha256"]}
    assert (root / "worker0" / "checkpoints" / "latest.json").is_file()
    assert not (root / "worker1").exists()  # only the chief writes
    # The loss of step 2 (TensorBoard; running mean over the epoch) equals the one-replica run's.
    scalars = _scalars_at(root / "worker0", 2)
    step_two = {name: scalars["loss" if name == "loss" else f"loss/{name}"]
                for name in _losses(one_replica_result["default"])}
    _assert_same_losses(one_replica_result["default"], {"final_losses": step_two})


@pytest.mark.xdist_group("one_replica")  # share the module fixture
def test_every_worker_resumes_the_chiefs_checkpoint(two_worker_run):
    root, _ = two_worker_run
    stopped = root / "stopped"
    assert checkpoint.latest_checkpoint(stopped)["step"] == 2
    # Both workers at the same --log_dir (shared storage): the chief writes, every worker reads.
    chief, worker = _run_workers([_WORKER_RUN.format(resume=True, log_dir=str(stopped), snapshot="")
                                  for _ in range(2)])
    assert chief["resumed_from"] == 2 and chief["steps"] == worker["steps"] == 4
    assert worker["weights_sha256"] == chief["weights_sha256"]
    # The same weights as the uninterrupted run. They came out bit-identical here (equal
    # weights_sha256), but separate processes need not run the CPU kernels bit for bit alike: the
    # tolerance of the single-process resume test.
    for a, b in zip(_weights(root / "worker0"), _weights(stopped)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_workers_at_different_positions_refuse_to_train():
    class TwoWorkers:  # the all-gather of a cluster whose worker 1 found no checkpoint
        def experimental_distribute_values_from_function(self, fn):
            return fn(None)

        def gather(self, value, axis):
            return tf.concat([value, tf.zeros_like(value)], axis)

    training.check_workers_agree(TwoWorkers(), 0, 0)
    with pytest.raises(checkpoint.RunFolderError, match=r"\[\[2, 2\], \[0, 0\]\].*--log_dir"):
        training.check_workers_agree(TwoWorkers(), 2, 2)


# ------------------------------------------------------------------------------------------------
# Encoder initialisation by name.


def test_init_names_resolve_per_encoder_and_pose_falls_back_from_swav(tmp_path):
    from tripled_tf.models.pretrained import CheckpointError
    from tripled_tf.models.tripled_net import TripleDConfig, TripleDNet

    for name in ("swav_resnet18.npz", "supervised_resnet18.npz"):
        (tmp_path / name).write_bytes(b"")
    model = TripleDNet(TripleDConfig(depth_layers=18, extractor_layers=18, pose_input_size=None))
    config = TrainConfig(height=64, width=64, encoder_weights="swav", weights_dir=str(tmp_path))
    chosen = {flag: pathlib.Path(path).name
              for _, path, flag in training.pretrained_encoders(config, model)}
    # SwAV published no ResNet-18: the pose net takes the supervised one; the extractor follows.
    assert chosen == {"encoder_weights": "swav_resnet18.npz",
                      "pose_encoder_weights": "supervised_resnet18.npz",
                      "extractor_weights": "swav_resnet18.npz"}
    none = dataclasses.replace(config, encoder_weights="none")
    assert training.pretrained_encoders(none, model) == []
    missing = dataclasses.replace(config, encoder_weights="moco")
    with pytest.raises(CheckpointError, match=r"moco_resnet18.npz does not exist.*convert_resnet_weights"):
        training.pretrained_encoders(missing, model)
