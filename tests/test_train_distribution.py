"""Distributed training (tripled_tf.train_distribution, tripled_tf.training): two logical CPUs equal one
replica with the global gradient clipped; two worker processes end with identical weights and every
worker resumes the chief's checkpoint; workers at different positions refuse to train.
"""
import json
import pathlib
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import checkpoint, train_distribution
from training_runs import REPO, run_script, script, subprocess_env, weights


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
    from tripled_tf.train_config import TrainConfig
    CLIP = {clip}
    # No dropout: its masks are drawn per replica, so they could not match one replica's. Eager
    # steps: the same train_step and cross-replica code without tracing a two-replica step (~40 s
    # here); the multi-worker tests below run the compiled step.
    model = DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None, dropout=0.0)
    results = {{}}
    for strategy in {strategies}:
        config = TrainConfig(model="baseline", height=64, width=64, batch_size=2, num_steps=2,
                             num_train_samples=6, num_val_samples=0, num_preview=1,
                             learning_rate=1e-3, warmup_steps=0, verbose=0, run_eagerly=True,
                             image_summary_every=0, strategy=strategy, grad_clip_norm=CLIP,
                             log_dir=os.path.join({run_root!r}, strategy))
        results[strategy] = training.train(config, model)
    print(json.dumps(results))
"""


# Gradient clipping is active on every step of the distributed runs: a fresh network's gradient norm
# is far above 1e-5. The clipped gradient's elements (~1e-5 / sqrt(2e7 parameters)) are then below
# Adam's epsilon, so the update is nearly proportional to the clipped gradient, and a clip at R x the
# norm (Keras clipping each replica's part before the cross-replica sum) shows in weights, moments
# and the logged norm.
CLIP = 1e-5


def _losses(result):
    return dict(result["final_losses"])


def _assert_same_losses(one, two):
    for name, value in _losses(one).items():
        # automask_fraction counts pixels whose winner is decided by the 1e-5 tie-breaking noise,
        # which each replica draws for its own half of the batch: a few pixels may flip.
        # Those pixels move the gradient's norm more than the loss: 0.333045 vs 0.332657 seen; a norm
        # of one replica's part, or clipped at R x the norm, would be off by tens of percent.
        tolerance = {"automask_fraction": dict(abs=1e-3), "grad_norm": dict(rel=5e-3)}.get(
            name, dict(rel=2e-4, abs=1e-6))
        assert two["final_losses"][name] == pytest.approx(value, **tolerance), name


@pytest.fixture(scope="module")
def one_replica_result(module_tmp):
    root = module_tmp("one_replica")
    proc = run_script(_DISTRIBUTED_RUN.format(logical_cpus=2, strategies=["default", "mirrored"],
                                               run_root=str(root), clip=CLIP))
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for strategy in results:
        results[strategy]["run_dir"] = str(root / strategy)
    return results


def _adam_moments(run_dir, kind):
    """Adam's first ("momentum") or second ("velocity") moments of every variable in the last
    checkpoint, as one flat vector."""
    with np.load(checkpoint.latest_checkpoint(run_dir)["state"]) as state:
        paths = [str(path) for path in state["paths"]]
        moments = [state[f"{i:04d}"].ravel() for i, path in enumerate(paths)
                   if path.endswith(f"_{kind}")]
    assert moments, paths[:5]
    return np.concatenate(moments)


@pytest.mark.xdist_group("one_replica")  # share the module fixture
def test_mirrored_two_logical_cpus_equals_one_replica(one_replica_result):
    default, mirrored = one_replica_result["default"], one_replica_result["mirrored"]
    assert default["replicas"] == 1 and mirrored["replicas"] == 2
    # Losses and the logged gradient norm (of the global gradient, clipped at CLIP on both).
    _assert_same_losses(default, mirrored)
    assert default["final_losses"]["grad_norm"] > 100 * CLIP
    # The same clipped gradients: Adam's moments are running sums of them (and of their squares), so
    # a clip at twice the norm would double the first and quadruple the second. Seen: norm ratios
    # 1.0011 / 1.0024, cosines 0.9983 / 0.99999 (the automask flips above move single elements).
    for kind in ("momentum", "velocity"):
        a, b = _adam_moments(default["run_dir"], kind), _adam_moments(mirrored["run_dir"], kind)
        assert np.linalg.norm(b) == pytest.approx(np.linalg.norm(a), rel=1e-2), kind
        assert np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99, kind


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
# reference. The first launch runs the compiled step; the resumed launch runs its steps eagerly (the
# same train_step, without tracing it again in both processes: ~40 s of the suite).
_WORKER_RUN = """
    import json, shutil
    from tripled_tf import checkpoint, training
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.train_config import TrainConfig
    model = DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None, dropout=0.0)
    config = TrainConfig(model="baseline", height=64, width=64, batch_size=2, num_steps=4,
                         num_train_samples=6, num_val_samples=0, num_preview=1,
                         learning_rate=1e-3, warmup_steps=0, verbose=0, image_summary_every=0,
                         summary_every=1, checkpoint_every=2, strategy="multi_worker",
                         grad_clip_norm={clip}, run_eagerly={resume},
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
        env = subprocess_env()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}})
        # Files, not pipes: a worker blocked on a full pipe would stall the others' collectives.
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        workers.append((subprocess.Popen([sys.executable, "-c", script(code)], cwd=REPO,
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
def two_worker_run(module_tmp):
    """Four steps on two worker processes, each with its own --log_dir (machines without shared
    storage); the chief's folder after step 2 is kept as "stopped"."""
    root = module_tmp("two_workers")
    outputs = _run_workers([_WORKER_RUN.format(resume=False, log_dir=str(root / f"worker{i}"),
                                               clip=CLIP,
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
    # The mean loss of steps 1-2 (TensorBoard, one point per step with summary_every=1) equals the
    # one-replica run's (final_losses: the running mean over its two steps).
    steps = [_scalars_at(root / "worker0", step) for step in (1, 2)]
    mean_two = {name: np.mean([s["loss" if name == "loss" else f"loss/{name}"] for s in steps])
                for name in _losses(one_replica_result["default"])}
    _assert_same_losses(one_replica_result["default"], {"final_losses": mean_two})


@pytest.mark.xdist_group("one_replica")  # share the module fixture
def test_every_worker_resumes_the_chiefs_checkpoint(two_worker_run):
    root, _ = two_worker_run
    stopped = root / "stopped"
    assert checkpoint.latest_checkpoint(stopped)["step"] == 2
    # Both workers at the same --log_dir (shared storage): the chief writes, every worker reads.
    chief, worker = _run_workers([_WORKER_RUN.format(resume=True, log_dir=str(stopped), snapshot="",
                                                      clip=CLIP)
                                  for _ in range(2)])
    assert chief["resumed_from"] == 2 and chief["steps"] == worker["steps"] == 4
    assert worker["weights_sha256"] == chief["weights_sha256"]
    # The same weights as the uninterrupted (compiled) run, up to the rounding by which eager and
    # compiled steps differ (3.1e-7 seen). A resume from the wrong position, or without Adam's state,
    # would differ by a whole update: with the gradient clipped at CLIP, Adam moves every weight by
    # ~lr * g / eps ~ 2e-5 per step.
    for a, b in zip(weights(root / "worker0"), weights(stopped)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


def test_workers_at_different_positions_refuse_to_train():
    class TwoWorkers:  # the all-gather of a cluster whose worker 1 found no checkpoint
        def experimental_distribute_values_from_function(self, fn):
            return fn(None)

        def gather(self, value, axis):
            return tf.concat([value, tf.zeros_like(value)], axis)

    train_distribution.check_workers_agree(TwoWorkers(), 0, 0)
    with pytest.raises(checkpoint.RunFolderError, match=r"\[\[2, 2\], \[0, 0\]\].*--log_dir"):
        train_distribution.check_workers_agree(TwoWorkers(), 2, 2)
