"""Shared pytest fixtures."""
import os
import pathlib
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One compute and one scheduling thread per TensorFlow process (the test processes and the
# subprocesses some tests start, which inherit the environment): two xdist processes on CI's 2
# cores with TensorFlow's default pools oversubscribe the machine, and a single scheduling thread
# runs a graph's independent ops in one fixed order, so a missing control dependency (a check that
# must run before the op it guards) fails every time instead of now and then. The tests' tensors
# are tiny, so no op gains from a second thread (the suite ran 1112 s instead of 1148 s, together
# with a faster pipeline build; one run each).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
# As the entry points do (tripled_tf.cli.use_onednn_by_default): importing tripled_tf no longer sets
# it, and without it TensorFlow runs its slower Eigen kernels on CPUs without AVX-512 VNNI (AVX2
# machines, e.g. the AMD EPYC CI machines), for the tests and the subprocesses they start.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# No test touches the internet: downloads (presets, encoder weights) are off unless a test serving
# files from 127.0.0.1 turns them on (monkeypatch.delenv), here and in the subprocesses tests start.
os.environ["TRIPLED_TF_OFFLINE"] = "1"

import pytest

if os.environ.get("TRIPLED_TEST_GRAPPLER", "0") != "1":
    # Grappler, TensorFlow's graph optimiser, spends ~7 s on each traced training step of the
    # ResNet-18 models (24k graph nodes: Keras' Adam is unrolled per variable) before its first run,
    # to speed up steps that here run a handful of times on tiny tensors (a step ran 0.44 s without
    # it, 0.72 s with it). Its rewrites (fusions, pruning) compute the same values; users' runs keep
    # it, and TRIPLED_TEST_GRAPPLER=1 runs the tests with it. Subprocesses (the CLI tests) keep it.
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("TRIPLED_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The small real data in ../shared/data (KITTI raw snippet, splits, samples); skips if absent."""
    if not (SHARED_DATA / "kitti_raw").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set TRIPLED_SHARED_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture
def restore_flags():
    """Leaves absl's global flag values (and their parsed / unparsed state) as they were."""
    import keras
    from absl import flags
    from absl.testing import flagsaver

    was_parsed = flags.FLAGS.is_parsed()
    saved = flagsaver.save_flag_values(flags.FLAGS)
    try:
        yield
    finally:
        flagsaver.restore_flag_values(saved, flags.FLAGS)
        if not was_parsed:
            flags.FLAGS.unparse_flags()
        keras.backend.clear_session()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``module_tmp(name)`` -> a new folder, removed when the module's tests are done.

    For module fixtures (training runs, exports): a run folder holds hundreds of MB (a ResNet-18
    TripleDNet checkpoint is ~570 MB with Adam's state), kept to the session's end they add up to
    ~15 GB, more than a CI machine's disk may have free. pyproject removes each test's own tmp_path
    when the test passes (tmp_path_retention_policy).
    """
    made = []

    def mktemp(name: str) -> pathlib.Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]
    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def poisoned_copy():
    """copy(run_dir, dest) -> dest: a copy of a run folder whose checkpoint's weights are all NaN
    (what a diverged run leaves), written into the .h5 directly, whatever saving would refuse."""
    def copy(run_dir, dest):
        import shutil

        import h5py
        import numpy as np

        from tripled_tf import checkpoint

        shutil.copytree(run_dir, dest)
        with h5py.File(checkpoint.latest_checkpoint(dest)["weights"], "r+") as weights:
            def poison(_, item):
                if isinstance(item, h5py.Dataset) and np.issubdtype(item.dtype, np.floating):
                    item[...] = np.nan
            weights.visititems(poison)
        return pathlib.Path(dest)
    return copy


@pytest.fixture(scope="session")
def untrained_run():
    """``untrained_run(folder, network, height=64, width=96, step=0)`` -> a run folder (config.json +
    checkpoint at ``step``) of an untrained "tripled" or "baseline" network with ResNet-10 encoders
    on the synthetic scene, without training: for the export checks, which must reproduce a network
    whatever its weights."""
    def make(folder: pathlib.Path, network: str, height=64, width=96, step=0) -> pathlib.Path:
        import dataclasses

        from tripled_tf import checkpoint, train_config, train_sources
        from tripled_tf.models.depth_model import DepthModelConfig
        from tripled_tf.models.tripled_net import TripleDConfig

        train = train_config.TrainConfig(model=network, dataset="synthetic", height=height, width=width,
                                     num_train_samples=4, num_val_samples=0, encoder_weights="none")
        model_config = (TripleDConfig(depth_layers=10, extractor_layers=10, pose_layers=10)
                        if network == "tripled" else DepthModelConfig(depth_layers=10, pose_layers=10))
        model = train_sources.build_model(train, model_config, load_pretrained=False)
        checkpoint.save_checkpoint(model, folder, step, with_state=False)
        checkpoint.write_json(folder / checkpoint.CONFIG_FILE,
                              {"train": dataclasses.asdict(train), "model": model_config.to_dict()})
        return folder
    return make


# pyproject runs the suite in 2 xdist processes with --dist loadgroup: tests of one group go to one
# process. Each file is a group (its module fixtures are then built once), except the two longest
# files, whose tests are spread one by one so that neither process waits on a single file.
SPREAD_FILES = {"test_training.py", "test_configs.py"}
# Handed out first, in this order (the longest work first), the rest after them in collection order
# (pyproject turns off xdist's own reordering, which puts the groups with the most tests first and
# so left the multi-minute single tests and the distributed group for the end, where one process
# could wait alone on them).
LONGEST_FIRST = ("one_replica", "test_training.py", "test_real_data.py", "test_export.py",
                 "test_edge_gpu.py", "test_configs.py", "test_train.py")


def _group(item) -> str:
    marker = item.get_closest_marker("xdist_group")
    if marker is None:
        return ""
    return marker.args[0] if marker.args else marker.kwargs.get("name", "")


def _rank(item) -> int:
    for key in (_group(item), item.path.name):
        if key in LONGEST_FIRST:
            return LONGEST_FIRST.index(key)
    return len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name not in SPREAD_FILES and not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    items.sort(key=_rank)  # stable: collection order within a rank
