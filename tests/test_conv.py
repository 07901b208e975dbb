"""The convolution with the matrix-product kernel gradient (tripled_tf/models/conv.py)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models import conv


def _kernel_gradient_by_definition(x_padded, output_gradient, kernel_size):
    """dW[i, j, c, o] = Σ_{b, h, w} x[b, h + i, w + j, c] · dy[b, h, w, o], in float64."""
    x = np.asarray(x_padded, np.float64)
    dy = np.asarray(output_gradient, np.float64)
    kh, kw = kernel_size
    _, out_h, out_w, _ = dy.shape
    result = np.zeros((kh, kw, x.shape[-1], dy.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            result[i, j] = np.einsum("bhwc,bhwo->co", x[:, i:i + out_h, j:j + out_w], dy)
    return result


# (batch, padded height, padded width, in channels, out channels, kernel): the first has
# >= MIN_OUTPUT_PIXELS output pixels per image (shifted rows), the second is 1x1 (one product), the
# last two have fewer (im2col).
SHAPES = [(2, 50, 42, 5, 3, (3, 3)), (1, 44, 52, 3, 4, (1, 1)), (2, 8, 9, 6, 2, (3, 3)),
          (3, 7, 11, 2, 5, (3, 1))]


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_gradient_equals_the_definition(shape):
    batch, height, width, c_in, c_out, (kh, kw) = shape
    assert ((height - kh + 1) * (width - kw + 1) >= conv.MIN_OUTPUT_PIXELS) == (shape in SHAPES[:2])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, height, width, c_in)).astype(np.float32)
    dy = rng.standard_normal((batch, height - kh + 1, width - kw + 1, c_out)).astype(np.float32)
    expected = _kernel_gradient_by_definition(x, dy, (kh, kw))
    eager = conv.kernel_gradient(tf.constant(x), tf.constant(dy), (kh, kw)).numpy()
    traced = tf.function(lambda a, b: conv.kernel_gradient(a, b, (kh, kw)))(x, dy).numpy()
    for result in (eager, traced):
        assert result.shape == expected.shape
        np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _gradients(padding, strides, x, kernel, upstream, enabled):
    with conv.matmul_kernel_gradients(enabled):
        @tf.function
        def run(x, kernel):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = conv.conv2d(x, kernel, strides, padding)
                loss = tf.reduce_sum(y * upstream)
            return (y,) + tuple(tape.gradient(loss, [x, kernel]))
        graph = run.get_concrete_function(x, kernel).graph
        return [t.numpy() for t in run(x, kernel)], {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_gradients_equal_tensorflows_and_use_matrix_products(padding):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, 46, 44, conv.MIN_INPUT_CHANNELS)), tf.float32)
    kernel = tf.constant(rng.standard_normal((3, 3, conv.MIN_INPUT_CHANNELS, 4)) * 0.1, tf.float32)
    out_size = (46, 44) if padding == "same" else (44, 42)
    upstream = tf.constant(rng.standard_normal((2,) + out_size + (4,)), tf.float32)
    (y, dx, dk), ops = _gradients(padding, (1, 1), x, kernel, upstream, enabled=True)
    (y_ref, dx_ref, dk_ref), ops_ref = _gradients(padding, (1, 1), x, kernel, upstream, enabled=False)
    # Forward and input gradient are TensorFlow's own kernels; the kernel gradient is the new part.
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-4 * np.abs(dk_ref).max())
    assert "Conv2DBackpropFilter" in ops_ref and "Conv2DBackpropFilter" not in ops
    assert "MatMul" in ops


@pytest.mark.parametrize("case", ["stride 2", "few channels"])
def test_conv2d_keeps_tensorflows_gradient_where_matrix_products_do_not_pay(case):
    rng = np.random.default_rng(2)
    channels = conv.MIN_INPUT_CHANNELS if case == "stride 2" else conv.MIN_INPUT_CHANNELS - 1
    strides = (2, 2) if case == "stride 2" else (1, 1)
    x = tf.constant(rng.standard_normal((1, 12, 12, channels)), tf.float32)
    kernel = tf.constant(rng.standard_normal((3, 3, channels, 2)), tf.float32)
    upstream = tf.ones((1, 12 // strides[0], 12 // strides[1], 2))
    _, ops = _gradients("same", strides, x, kernel, upstream, enabled=True)
    assert "Conv2DBackpropFilter" in ops and "MatMul" not in ops


def test_layer_is_keras_conv2d_with_the_same_weights_and_config():
    layer = conv.Conv2D(8, 3, padding="same", name="c")
    x = tf.random.uniform((1, 48, 48, conv.MIN_INPUT_CHANNELS))
    y = layer(x)
    assert isinstance(layer, keras.layers.Conv2D)
    assert [w.path for w in layer.weights] == ["c/kernel", "c/bias"]
    plain = keras.layers.Conv2D.from_config(layer.get_config())
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(y.numpy(), plain(x).numpy(), rtol=1e-6, atol=1e-6)
    clone = conv.Conv2D.from_config(layer.get_config())
    assert type(clone) is conv.Conv2D and clone.get_config() == layer.get_config()


def test_no_custom_gradient_without_a_tape():
    """Inference and export graphs keep the plain convolution (no IdentityN blocking fusions)."""
    x = tf.random.uniform((1, 48, 48, conv.MIN_INPUT_CHANNELS))
    kernel = tf.random.uniform((3, 3, conv.MIN_INPUT_CHANNELS, 4))
    with conv.matmul_kernel_gradients(True):
        graph = tf.function(lambda a: conv.conv2d(a, kernel, padding="same")).get_concrete_function(
            x).graph
        assert "IdentityN" not in {op.type for op in graph.get_operations()}

        @tf.function
        def with_tape(a):
            with tf.GradientTape() as tape:
                tape.watch(a)
                y = conv.conv2d(a, kernel, padding="same")
            return tape.gradient(y, a)
        ops = {op.type for op in with_tape.get_concrete_function(x).graph.get_operations()}
        assert "IdentityN" in ops
