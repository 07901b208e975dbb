"""Helpers of the trainer tests (test_training.py, test_train_distribution.py): the weights of a run
folder's last checkpoint, and Python snippets run in a fresh process with the repository importable."""
import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]


def weights(run_dir):
    """The model weights of the run folder's last checkpoint (a list of arrays)."""
    from tripled_tf import checkpoint

    model, _ = checkpoint.load_model(run_dir)
    return model.get_weights()


def subprocess_env():
    """This process's environment with the repository first on PYTHONPATH."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


# Put before a script's own code: Grappler off, as in the test processes (tests/conftest.py).
GRAPPLER_OFF = ("import tensorflow as tf\n"
                "tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})\n"
                if os.environ.get("TRIPLED_TEST_GRAPPLER", "0") != "1" else "")


def script(code: str) -> str:
    """``code`` dedented, after GRAPPLER_OFF."""
    return GRAPPLER_OFF + textwrap.dedent(code)


def run_script(code: str, timeout=600, env=None) -> subprocess.CompletedProcess:
    """``python -c code`` (see :func:`script`) in the repository root; stdout and stderr captured."""
    return subprocess.run([sys.executable, "-c", script(code)], cwd=REPO,
                          env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
