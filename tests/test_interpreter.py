"""tripled_edge.interpreter: the TFLite runtime fall-back (LiteRT, tflite-runtime, tf.lite), through fake
runtimes that fail where the real ones do.
"""
import pytest

from tripled_edge import interpreter


def _fake_runtime(name, fail_at):
    class Interpreter:
        def __init__(self, model_path, num_threads=None, experimental_delegates=None):
            if fail_at == "create":
                raise ValueError(f"{name}: _ARRAY_API not found")  # tflite-runtime under numpy 2

        def allocate_tensors(self):
            pass

    def importer():
        if fail_at == "import":
            raise ImportError(f"No module named {name!r}")
        return Interpreter, lambda library, options: None
    return name, importer


def test_runtime_falls_back_when_import_or_interpreter_creation_fails(monkeypatch, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    monkeypatch.setattr(interpreter, "RUNTIMES", (_fake_runtime("first", "import"),
                                                  _fake_runtime("second", "create"),
                                                  _fake_runtime("third", None)))
    _, name = interpreter.make_interpreter(model)
    assert name == "third"
    monkeypatch.setattr(interpreter, "RUNTIMES", (_fake_runtime("first", "import"),
                                                  _fake_runtime("second", "create")))
    with pytest.raises(interpreter.RuntimeUnavailableError) as error:
        interpreter.make_interpreter(model)
    assert "first: No module named" in str(error.value) and "_ARRAY_API" in str(error.value)
