"""Checkpoint files: one copy of the optimiser state, fsync before every rename, and a full disk that
leaves no temporary file and the previous checkpoint the latest.

A tiny baseline model (ResNet-10, 64x64) with a built Adam optimiser; no training needed.
"""
import errno
import json
import os
import pathlib
import resource
import signal

import h5py
import numpy as np
import pytest

from tripled_tf import atomic_files, checkpoint, training
from tripled_tf.train_config import TrainConfig
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel


@pytest.fixture(scope="module")
def model():
    model = MonoDepthModel(DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None))
    model.build_for_size(64, 64)
    model.compile(optimizer=training.make_optimizer(TrainConfig(model="baseline")))
    model.optimizer.build(model.trainable_variables)
    # Non-zero moments, as after training: zeros would compress to nothing in any format.
    for variable in model.optimizer.variables:
        if "float" in str(variable.dtype):
            variable.assign(np.full(variable.shape, 0.5, np.float32))
    return model


def _h5_dataset_names(path):
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names


def test_checkpoint_holds_the_optimiser_state_once(model, tmp_path):
    checkpoint.save_checkpoint(model, tmp_path, 1)
    info = checkpoint.latest_checkpoint(tmp_path)
    model_bytes = sum(np.asarray(w.numpy()).nbytes for w in model.weights)
    trainable_bytes = sum(np.asarray(w.numpy()).nbytes for w in model.trainable_weights)
    files = os.path.getsize(info["weights"]) + os.path.getsize(info["state"])
    # Weights + Adam's two moments (one per trainable weight) + headers: 3x, not 5x.
    assert model_bytes + 2 * trainable_bytes <= files <= 3.3 * model_bytes, (files, model_bytes)
    assert not any("optimizer" in name for name in _h5_dataset_names(info["weights"]))
    # The weights file alone rebuilds the model for inference (what predict / export load).
    loaded = MonoDepthModel(model.config)
    loaded.build_for_size(64, 64)
    checkpoint.load_model_weights(loaded, info["weights"])
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_every_file_is_fsynced_before_its_rename(model, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(pathlib.Path(src).resolve()), str(pathlib.Path(dst).resolve())))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_files.os, "fsync", fsync)
    monkeypatch.setattr(atomic_files.os, "replace", replace)
    checkpoint.save_checkpoint(model, tmp_path, 3)
    renames = [e for e in events if e[0] == "replace"]
    # weights, state, latest.json
    assert [pathlib.Path(e[2]).name for e in renames] == [
        "ckpt-00000003.weights.h5", "ckpt-00000003.state.npz", "latest.json"]
    for rename in renames:
        at = events.index(rename)
        assert ("fsync", rename[1]) in events[:at], rename  # the data reached the disk first
        assert ("fsync", str(pathlib.Path(rename[2]).parent)) in events[at:], rename  # then the entry


def _fail_midway(path_arg):
    """A writer that writes part of its output to its argument ``path_arg`` (a path or an open file)
    and then finds the disk full."""
    def writer(*args, **kwargs):
        target = args[path_arg]
        if hasattr(target, "write"):
            target.write(b"\0" * 4096)
        else:
            pathlib.Path(target).write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return writer


def _fsync_failing_for(suffix):
    """os.fsync that reports a full disk for the file whose path ends with ``suffix`` (delayed
    allocation: a full disk often surfaces only at fsync)."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    return fsync


@pytest.mark.parametrize("failing", ["weights", "state", "index"])
def test_a_full_disk_leaves_no_temporary_file_and_the_previous_checkpoint_latest(
        model, tmp_path, monkeypatch, failing):
    checkpoint.save_checkpoint(model, tmp_path, 1)
    before = checkpoint.latest_checkpoint(tmp_path)
    if failing == "weights":
        monkeypatch.setattr(checkpoint, "save_model_weights", _fail_midway(1))
    elif failing == "state":
        monkeypatch.setattr(checkpoint.np, "savez", _fail_midway(0))
    else:
        monkeypatch.setattr(atomic_files.os, "fsync", _fsync_failing_for("latest.json.tmp"))
    with pytest.raises(checkpoint.CheckpointWriteError,
                       match=r"step-2 checkpoint.*No space left on device.*still step 1"):
        checkpoint.save_checkpoint(model, tmp_path, 2)
    files = sorted(p.name for p in (tmp_path / checkpoint.CHECKPOINT_DIR).iterdir())
    assert files == ["ckpt-00000001.state.npz", "ckpt-00000001.weights.h5", "latest.json"]
    assert checkpoint.latest_checkpoint(tmp_path) == before


def test_write_json_leaves_the_old_file_and_no_temporary_one_on_a_full_disk(tmp_path, monkeypatch):
    checkpoint.write_json(tmp_path / "a.json", {"v": 1})
    monkeypatch.setattr(atomic_files.os, "fsync", _fsync_failing_for("a.json.tmp"))
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write_json(tmp_path / "a.json", {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}


def test_a_real_write_failure_inside_h5py_is_one_line_and_leaves_nothing(model, tmp_path):
    # RLIMIT_FSIZE makes every write past 1 MB fail (EFBIG, SIGXFSZ ignored) inside h5py's C code,
    # where a full disk fails with ENOSPC: the real error path, not a Python stand-in.
    checkpoint.save_checkpoint(model, tmp_path, 1)
    before = checkpoint.latest_checkpoint(tmp_path)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))
    try:
        with pytest.raises(checkpoint.CheckpointWriteError) as raised:
            checkpoint.save_checkpoint(model, tmp_path, 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    message = str(raised.value)
    assert "\n" not in message and "File too large" in message and "still step 1" in message, message
    files = sorted(p.name for p in (tmp_path / checkpoint.CHECKPOINT_DIR).iterdir())
    assert files == ["ckpt-00000001.state.npz", "ckpt-00000001.weights.h5", "latest.json"]
    assert checkpoint.latest_checkpoint(tmp_path) == before


def test_a_checkpoint_with_a_nan_variable_is_refused_and_nothing_written(model, tmp_path):
    moment = [v for v in model.optimizer.variables if "velocity" in v.path][0]
    value = np.asarray(moment.numpy())
    poisoned = value.copy()
    poisoned.flat[0] = np.nan
    moment.assign(poisoned)
    try:
        with pytest.raises(checkpoint.NonFiniteStateError, match=r"step-1 checkpoint: 1 variables"):
            checkpoint.save_checkpoint(model, tmp_path, 1)
    finally:
        moment.assign(value)
    assert not (tmp_path / checkpoint.CHECKPOINT_DIR).exists()


def test_a_lean_folder_is_the_config_and_the_depth_network_alone(untrained_run, tmp_path):
    from tripled_tf import inference
    from tripled_tf.data.records import BadInputError

    run = untrained_run(tmp_path / "run", "tripled", 64, 64, step=2)
    full, config = checkpoint.load_model(run)
    lean = tmp_path / "lean"
    lean.mkdir()
    checkpoint.write_json(lean / checkpoint.CONFIG_FILE, config)
    path = checkpoint.save_depth_weights(full, lean)
    assert path == str(lean / checkpoint.DEPTH_WEIGHTS_FILE) and checkpoint.depth_weights(lean) == path
    assert not list(lean.glob("tmp-*"))
    # Only the layers inference runs, under the same entries as in the full weights file.
    roots = {name.split("/")[0] for name in _h5_dataset_names(path)}
    # (The feature split of this configuration slices channels: no weights, no entry.)
    assert roots == {"encoder", "depth_decoder"} | (
        {"feature_split"} if full.feature_split.weights else set()), roots
    full_names = set(_h5_dataset_names(checkpoint.latest_checkpoint(run)["weights"]))
    assert set(_h5_dataset_names(path)) < full_names
    depth_bytes = sum(np.asarray(w.numpy()).nbytes for w in full.depth_branch().weights)
    assert depth_bytes <= os.path.getsize(path) < 0.6 * os.path.getsize(
        checkpoint.latest_checkpoint(run)["weights"])

    loaded, _ = checkpoint.load_model(lean)  # no checkpoints/: the depth weights
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    for a, b in zip(full(images, training=False), loaded(images, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert inference.check_run_folder(lean) == lean
    # What needs the pose network says the folder holds the depth network alone.
    with pytest.raises(FileNotFoundError, match="depth network alone"):
        checkpoint.load_model(lean, depth_only=False)
    with pytest.raises(BadInputError, match="depth network alone"):
        inference.check_run_folder(lean, depth_only_ok=False)
    with pytest.raises(checkpoint.RunFolderError, match="depth network alone"):
        checkpoint.check_init_checkpoint(lean, full.config)
    with pytest.raises(FileNotFoundError, match="no depth.weights.h5"):
        checkpoint.load_model(run, depth_only=True)
