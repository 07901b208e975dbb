"""What installing and importing tripled_tf does to the outside world: the packages setup.py installs,
and the environment of a program that imports the library."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_only_the_projects_own_top_level_packages_are_installed():
    from distutils.core import run_setup

    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # setup.py reads README.md relative to the working folder
        packages = run_setup(str(ROOT / "setup.py"), stop_after="config").packages
    finally:
        os.chdir(cwd)
    assert {name.split(".")[0] for name in packages} == {"tripled_tf", "tripled_edge"}, packages
    assert "tripled_tf.data" in packages and "tripled_tf.models" in packages


def test_importing_the_library_changes_no_environment_variable():
    # TensorFlow and OpenCV set variables of their own on import (TF2_BEHAVIOR, LD_LIBRARY_PATH, ...):
    # they are imported before the snapshot. The library's modules, TensorFlow ones included (the
    # command-line modules set TensorFlow's log level on import: they are programs, not library).
    probe = ("import json, os, cv2, tensorflow; before = dict(os.environ); import tripled_tf, "
             "tripled_tf.api, tripled_tf.prediction, tripled_tf.data.pipeline, tripled_tf.geometry; "
             "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_entry_points_turn_onednn_on_unless_the_environment_says_otherwise():
    from tripled_tf import cli

    saved = os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
    try:
        cli.use_onednn_by_default()
        assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        cli.use_onednn_by_default()
        assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    finally:
        os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
        if saved is not None:
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = saved
