"""tripled_edge.runtime: refusal of files without our metadata, a missing GPU delegate library, and the
device package importing without TensorFlow. (The GPU accelerator: test_edge_gpu.py; the runtime
fall-back: test_interpreter.py.)
"""
import pytest
import tensorflow as tf

from tripled_edge import convert, runtime


def _tflite(function, *specs) -> bytes:
    concrete = tf.function(function).get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def test_runtime_refuses_files_without_our_metadata(tmp_path):
    path = tmp_path / "plain.tflite"
    path.write_bytes(_tflite(lambda x: x + 1.0, tf.TensorSpec([1, 4, 4, 3], tf.float32)))
    with pytest.raises(ValueError, match="no tripled_tf metadata"):
        runtime.load(path)
    with pytest.raises(FileNotFoundError):
        runtime.load(tmp_path / "missing.tflite")


# ai-edge-litert's Delegate.__del__ trips over its own failed construction (a warning, not our error).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unknown_gpu_delegate_library_is_a_clear_error(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")
    path = tmp_path / "m.tflite"
    path.write_bytes(convert.with_metadata(
        _tflite(lambda x: x * 0.5 + 0.01, tf.TensorSpec([1, 4, 4, 3], tf.float32)),
        {"min_depth": 0.1, "max_depth": 100.0}))
    with pytest.raises(runtime.RuntimeUnavailableError, match="could not be loaded"):
        runtime.load(path, delegate=str(tmp_path / "libnot_a_delegate.so"))
    assert runtime.available_runtimes()[0] == "ai-edge-litert"  # the preferred runtime comes first


# ------------------------------------------------------------------------------------------------
# The device package imports no TensorFlow


# Run first in the subprocess: any import of tensorflow (or keras, which needs it) fails.
BLOCK_TENSORFLOW = """
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tensorflow_core"):
            raise ImportError(f"{name} is not installed here (test)")
sys.meta_path.insert(0, NoTensorFlow())
"""


def test_device_package_imports_without_tensorflow(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    check = ("import importlib, json, pkgutil, sys\n"
             "import tripled_edge\n"
             "names = [m.name for m in pkgutil.iter_modules(tripled_edge.__path__)]\n"
             "for name in names: importlib.import_module('tripled_edge.' + name)\n"
             "try:\n    import tensorflow\n    blocked = False\nexcept ImportError:\n    blocked = True\n"
             "print(json.dumps({'modules': sorted(names), 'blocked': blocked,\n"
             "    'loaded': sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tripled_tf'))}))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(repo)]))
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["blocked"], "the blocker did not take effect (sitecustomize not loaded)"
    assert {"runtime", "resample", "metadata", "convert", "gpu_compat"} <= set(report["modules"])
    assert "bench" not in report["modules"]  # needs the training package: tools/bench_edge.py
    assert report["loaded"] == []
