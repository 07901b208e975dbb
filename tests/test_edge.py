"""edge/: numpy resampling, embedded metadata, the GPU-delegate gate, runtime fallback; export-only padding.

No trained model here (tests/test_export.py exports the demo checkpoint).
"""
import numpy as np
import pytest
import tensorflow as tf

from edge import convert, gpu_compat, metadata, resample, runtime
from tripled_tf.models import layers


def _tflite(function, *specs) -> bytes:
    concrete = tf.function(function).get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


# ------------------------------------------------------------------------------------------------
# Resampling


def test_bilinear_upsampling_weights_by_hand():
    # 2 -> 4 samples, half-pixel centres: output x samples input (x + 0.5) / 2 - 0.5 =
    # -0.25, 0.25, 0.75, 1.25 -> clamped / interpolated weights.
    weights = resample.resample_matrix(2, 4, "bilinear", antialias=False)
    np.testing.assert_allclose(weights, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-7)


def test_antialiased_halving_is_the_stretched_triangle():
    # 4 -> 2 with antialias: the triangle is stretched to radius 2; output 0 samples input 0.5, taps
    # at 0, 1, 2 with weights 1 - |j + 0.5 - 1| / 2 = 0.75, 0.75, 0.25 (tap -1 is outside), normalised.
    weights = resample.resample_matrix(4, 2, "bilinear", antialias=True)
    np.testing.assert_allclose(weights[0], np.array([0.75, 0.75, 0.25, 0]) / 1.75, atol=1e-7)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kernel", ["lanczos3", "bilinear"])
@pytest.mark.parametrize("size", [(64, 192), (24, 40), (61, 250)])
def test_resize_equals_tensorflow(kernel, size):
    image = np.random.default_rng(0).random((47, 157, 3)).astype(np.float32)
    ours = resample.resize(image, size, kernel, antialias=True)
    theirs = tf.image.resize(image, size, method=kernel, antialias=True).numpy()
    # TensorFlow computes the weights in float32: agreement to a few 1e-5 on [0, 1] data.
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_prepare_image_is_the_training_pipelines_resize():
    from tripled_tf.data import pipeline

    image = (np.random.default_rng(1).random((90, 300, 3)) * 255).astype(np.uint8)
    config = pipeline.PipelineConfig(height=64, width=192, batch_size=1)
    expected = pipeline._resize_in_tf(tf.constant(image), config).numpy()
    np.testing.assert_allclose(resample.prepare_image(image, (64, 192)), expected, atol=2e-4)
    with pytest.raises(ValueError, match="uint8"):
        resample.prepare_image(image.astype(np.float32), (64, 192))
    with pytest.raises(ValueError, match="RGB"):
        resample.prepare_image(image[..., :2], (64, 192))


# ------------------------------------------------------------------------------------------------
# Export-only reflection padding


@pytest.mark.parametrize("pad", [1, 2, 3])
def test_reflect_pad_by_concatenation_equals_mirror_pad(pad):
    x = tf.constant(np.random.default_rng(pad).random((2, 5, 7, 3)), tf.float32)
    expected = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    np.testing.assert_array_equal(layers.reflect_pad_by_concatenation(x, pad).numpy(), expected.numpy())


def test_reflect_padding_switch_changes_the_traced_ops_only_inside_the_context():
    conv = layers.Conv3x3(4)
    spec = tf.TensorSpec([1, 8, 8, 3], tf.float32)

    def op_types(function):
        return {op.type for op in tf.function(function).get_concrete_function(spec).graph.get_operations()}

    assert "MirrorPad" in op_types(lambda x: conv(x))
    with layers.reflect_padding_by_concatenation():
        assert "MirrorPad" not in op_types(lambda x: conv(x))
    assert "MirrorPad" in op_types(lambda x: conv(x))


# ------------------------------------------------------------------------------------------------
# Metadata and the GPU-delegate gate


def test_metadata_round_trip_without_tensorflow_parsing():
    model = _tflite(lambda x: tf.nn.relu(x) * 2.0, tf.TensorSpec([1, 4, 4, 3], tf.float32))
    assert metadata.read_metadata(model) is None
    values = {"input_height": 64, "min_depth": 0.1, "text": "ü"}
    tagged = convert.with_metadata(model, values)
    assert metadata.read_metadata(tagged) == values
    retagged = convert.with_metadata(tagged, {"input_height": 32})
    assert metadata.read_metadata(retagged) == {"input_height": 32}
    with pytest.raises(ValueError, match="TFL3"):
        metadata.read_metadata(b"not a model at all")


def test_gpu_gate_accepts_a_conv_net_with_reflect_padding():
    kernel = tf.constant(np.ones((3, 3, 3, 8), np.float32))

    def net(x):
        y = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], "REFLECT"), kernel, 1, "VALID")
        return tf.sigmoid(tf.image.resize(tf.nn.leaky_relu(y, 0.01), [16, 16], method="nearest"))

    assert gpu_compat.gpu_incompatibilities(_tflite(net, tf.TensorSpec([1, 8, 8, 3], tf.float32))) == []


def test_gpu_gate_names_every_offending_operator():
    def bad(x):
        y = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC")   # only REFLECT on the GPU
        y = tf.gather(y, [0, 2], axis=3)                                # no GATHER
        return tf.reshape(y, [1, 2, 3, 3, 2])                           # rank 5

    problems = gpu_compat.gpu_incompatibilities(_tflite(bad, tf.TensorSpec([1, 4, 1, 4], tf.float32)))
    text = "\n".join(problems)
    assert "MIRROR_PAD: SYMMETRIC" in text
    assert "GATHER: not supported" in text
    assert "rank 5" in text


def test_gpu_gate_rejects_dynamic_shapes():
    problems = gpu_compat.gpu_incompatibilities(
        _tflite(lambda x: tf.nn.relu(x), tf.TensorSpec([None, 4, 4, 3], tf.float32)))
    assert problems and all("dynamic shape" in p for p in problems)


# ------------------------------------------------------------------------------------------------
# Runtime selection


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
    monkeypatch.setattr(runtime, "RUNTIMES", (_fake_runtime("first", "import"),
                                              _fake_runtime("second", "create"),
                                              _fake_runtime("third", None)))
    _, name = runtime.make_interpreter(model)
    assert name == "third"
    monkeypatch.setattr(runtime, "RUNTIMES", (_fake_runtime("first", "import"),
                                              _fake_runtime("second", "create")))
    with pytest.raises(runtime.RuntimeUnavailableError) as error:
        runtime.make_interpreter(model)
    assert "first: No module named" in str(error.value) and "_ARRAY_API" in str(error.value)


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
