"""Shared pytest fixtures."""
import os
import pathlib

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

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("TRIPLED_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The small real data in ../shared/data (KITTI raw snippet, splits, samples); skips if absent."""
    if not (SHARED_DATA / "kitti_raw").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set TRIPLED_SHARED_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


# pyproject runs the suite in 2 xdist processes with --dist loadgroup: tests of one group go to one
# process. Each file is a group (its module fixtures are then built once), except the two longest
# files, whose tests are spread one by one so that neither process waits on a single file.
SPREAD_FILES = {"test_trainer.py", "test_configs.py"}
# Handed out first, in this order (the longest work first), the rest after them in collection order
# (pyproject turns off xdist's own reordering, which puts the groups with the most tests first and
# so left the multi-minute single tests and the distributed group for the end, where one process
# could wait alone on them).
LONGEST_FIRST = ("one_replica", "test_trainer.py", "test_real_data.py", "test_export.py",
                 "test_configs.py", "test_training.py")


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
