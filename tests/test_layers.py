"""The shared layers (tripled_tf.models.layers): batch norm as torch's, reflection-padded 3x3 conv, ELU
block, nearest 2x upsampling, PyTorch's default init; every building block's config round trip; networks
built by their first call (no symbolic pass).
"""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_edge import gpu_compat
from tripled_tf.models import layers
from tripled_tf.models.depth_decoder import ChainedResidualPooling, DepthDecoder
from tripled_tf.models.monodepth2_decoder import Monodepth2Decoder
from tripled_tf.models.layers import (BatchNorm2D, Conv3x3, ConvBlock, TorchInitConv2D,
                                      Upsample2x, upsample_nearest_2x)
from tripled_tf.models.pose_net import PoseNet
from tripled_tf.models.resnet import BasicBlock, Bottleneck, ResNetEncoder

RNG = np.random.default_rng(0)


def _tflite(function, *specs) -> bytes:
    concrete = tf.function(function).get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def test_batch_norm_2d_trains_like_torch_batch_norm():
    """Training: normalise with the biased batch variance; running variance moves towards the
    unbiased one, n / (n - 1) times larger (torch.nn.BatchNorm2d); gradients equal Keras' BN."""
    x = RNG.normal(2.0, 3.0, size=(2, 5, 6, 3)).astype(np.float32)
    n = 2 * 5 * 6
    fused = BatchNorm2D(epsilon=1e-5, momentum=0.9)
    plain = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
    fused.build(x.shape)
    plain.build(x.shape)
    gamma, beta = np.array([1.5, 0.5, -1.0], np.float32), np.array([0.1, -0.2, 0.3], np.float32)
    for layer in (fused, plain):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        layer.moving_mean.assign([1.0, 2.0, 3.0])
        layer.moving_variance.assign([4.0, 5.0, 6.0])
    xt = tf.constant(x)
    outputs, grads = [], []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            weighted = tf.reduce_sum(y * tf.constant(np.arange(y.shape[-1]) + 1.0, tf.float32) * y)
        outputs.append(y.numpy())
        grads.append(tape.gradient(weighted, [xt, layer.gamma, layer.beta]))
    mean = x.astype(np.float64).mean(axis=(0, 1, 2))
    variance = x.astype(np.float64).var(axis=(0, 1, 2))
    expected = (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for fused_grad, plain_grad in zip(*grads):
        np.testing.assert_allclose(fused_grad.numpy(), plain_grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean.numpy(), 0.9 * np.array([1.0, 2.0, 3.0]) + 0.1 * mean,
                               rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(),
                               0.9 * np.array([4.0, 5.0, 6.0]) + 0.1 * variance * n / (n - 1),
                               rtol=1e-5)
    # Inference uses the moving statistics, like Keras' layer with the same statistics.
    plain.moving_mean.assign(fused.moving_mean)
    plain.moving_variance.assign(fused.moving_variance)
    np.testing.assert_allclose(fused(xt, training=False).numpy(), plain(xt, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- shared layers


def test_conv3x3_reflection_padding():
    # Delta at the top-left tap: out[i, j] = padded[i, j] = x[reflect(i - 1), reflect(j - 1)],
    # where reflection maps -1 to 1 (edge not repeated), e.g. out[0, 0] = x[1, 1].
    x = RNG.random((1, 5, 6, 1)).astype(np.float32)
    for mode in ("reflect", "zero"):
        layer = Conv3x3(1, padding_mode=mode)
        layer(x)
        kernel = np.zeros((3, 3, 1, 1), np.float32)
        kernel[0, 0, 0, 0] = 1.0
        layer.conv.kernel.assign(kernel)
        layer.conv.bias.assign([0.5])
        out = layer(x).numpy()[0, :, :, 0]
        rows = np.abs(np.arange(-1, 4))  # reflect(i - 1) for i = 0..4
        cols = np.abs(np.arange(-1, 5))
        if mode == "reflect":
            expected = x[0, rows][:, cols, 0] + 0.5
        else:
            expected = np.full((5, 6), 0.5, np.float32)
            expected[1:, 1:] += x[0, :4, :5, 0]
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_conv_block_is_conv3x3_then_elu():
    x = RNG.normal(size=(1, 4, 4, 2)).astype(np.float32)
    block = ConvBlock(3)
    out = block(x).numpy()
    linear = block.conv(x).numpy()
    np.testing.assert_allclose(out, np.where(linear > 0, linear, np.expm1(linear)), atol=1e-6)


def test_upsample_nearest_2x_replicates_pixels():
    x = RNG.random((2, 3, 5, 4)).astype(np.float32)
    expected = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(upsample_nearest_2x(x).numpy(), expected)
    np.testing.assert_array_equal(Upsample2x()(x).numpy(), expected)


def test_decoder_convs_use_pytorch_default_init():
    # PyTorch Conv2d default: kernel and bias ~ U(±1/sqrt(fan_in)), fan_in = 3 · 3 · 64 = 576.
    conv = TorchInitConv2D(256, 3)
    conv(np.zeros((1, 3, 3, 64), np.float32))
    bound = 1.0 / math.sqrt(576)
    kernel, bias = conv.kernel.numpy(), conv.bias.numpy()
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    # A uniform on ±b has std b/sqrt(3) and its extremes near ±b (147,456 kernel draws, 256 biases).
    assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert np.abs(kernel).max() > 0.99 * bound and np.abs(bias).max() > 0.9 * bound


# ------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("make", [
    lambda: ResNetEncoder(50, num_input_images=2, normalize_input=False, name="extractor"),
    lambda: DepthDecoder([64, 256, 512, 1024, 1024], dropout=0.3, name="depth_decoder"),
    lambda: PoseNet(num_layers=18, input_size=(96, 320), name="pose"),
    lambda: PoseNet(input_size=None),
    lambda: BasicBlock(128, stride=2, downsample=True, name="layer2.0"),
    lambda: Bottleneck(64, stride=1, downsample=True, name="layer1.0"),
    lambda: Conv3x3(16, padding_mode="zero", use_bias=False),
    lambda: ConvBlock(32),
    lambda: TorchInitConv2D(8, 1, use_bias=False),
    lambda: ChainedResidualPooling(32, num_stages=3),
    lambda: Monodepth2Decoder([64, 64, 128, 256, 512]),
])
def test_get_config_round_trip(make):
    original = make()
    config = original.get_config()
    clone = type(original).from_config(config)
    assert clone.get_config() == config
    # Registered classes also survive Keras' own (de)serialisation.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(restored) is type(original) and restored.get_config() == config



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


@pytest.mark.parametrize("shape", [(1, 3, 5, 2), (2, 4, 4, 7)])
def test_upsampling_by_depth_to_space_equals_nearest_resize(shape):
    x = tf.constant(np.random.default_rng(shape[-1]).random(shape), tf.float32)
    expected = layers.upsample_nearest_2x(x).numpy()
    # By hand: out[b, 2i + a, 2j + c] = x[b, i, j].
    np.testing.assert_array_equal(expected, np.repeat(np.repeat(x.numpy(), 2, axis=1), 2, axis=2))
    with layers.upsampling_by_depth_to_space():
        ours = layers.upsample_nearest_2x(x)
    assert ours.shape == expected.shape
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_upsampling_switch_changes_the_traced_ops_only_inside_the_context():
    spec = tf.TensorSpec([1, 8, 8, 4], tf.float32)

    def tflite_ops():
        return set(gpu_compat.operator_list(_tflite(layers.upsample_nearest_2x, spec)))

    assert "RESIZE_NEAREST_NEIGHBOR" in tflite_ops()
    with layers.upsampling_by_depth_to_space():
        assert tflite_ops() == {"CONCATENATION", "DEPTH_TO_SPACE"}
    assert "RESIZE_NEAREST_NEIGHBOR" in tflite_ops()


@pytest.mark.parametrize("padding_mode", ["reflect", "zero"])
def test_convolution_over_parts_equals_the_convolution_of_their_concatenation(padding_mode):
    rng = np.random.default_rng(3)
    parts = [tf.constant(rng.normal(size=(2, 5, 6, c)), tf.float32) for c in (3, 4, 1)]
    conv = layers.Conv3x3(6, padding_mode=padding_mode)
    whole = conv(tf.concat(parts, axis=-1)).numpy()
    # Outside the context: the layer on the concatenation, the same ops, so the same bits.
    np.testing.assert_array_equal(conv.of_concatenation(parts).numpy(), whole)
    # By hand, from the definition: the sum over input channels splits into a sum over the parts.
    kernel, bias = conv.conv.kernel.numpy(), conv.conv.bias.numpy()
    padded = np.concatenate([np.pad(p.numpy(), [(0, 0), (1, 1), (1, 1), (0, 0)],
                                    mode="reflect" if padding_mode == "reflect" else "constant")
                             for p in parts], axis=-1)
    by_hand = np.zeros(whole.shape, np.float64) + bias
    for dy in range(3):
        for dx in range(3):
            by_hand += padded[:, dy:dy + 5, dx:dx + 6, :] @ kernel[dy, dx].astype(np.float64)
    np.testing.assert_allclose(whole, by_hand, rtol=1e-5, atol=1e-5)
    with layers.convolutions_over_parts():
        split = conv.of_concatenation(parts).numpy()
        ops = {op.type for op in tf.function(conv.of_concatenation).get_concrete_function(
            [tf.TensorSpec(p.shape, tf.float32) for p in parts]).graph.get_operations()}
    assert "ConcatV2" not in ops and len([t for t in ops if t.startswith("Conv2D")]) == 1, ops
    np.testing.assert_allclose(split, by_hand, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="parts have 7 channels"), layers.convolutions_over_parts():
        conv.of_concatenation(parts[:2])


def test_networks_build_in_their_first_call_without_a_symbolic_pass(monkeypatch):
    # Without a build method, Keras traces a composite layer's whole call symbolically just to build
    # its sub-layers (layers.BuiltByFirstCall). Building every network of a TripleDNet (appearance
    # decoder, extractor, pretext head, pose net, split with attention) must need no such pass.
    from keras.src import backend

    from tripled_tf.models.tripled_net import TripleDConfig, TripleDNet

    traced = []
    trace = backend.compute_output_spec
    monkeypatch.setattr(backend, "compute_output_spec",
                        lambda fn, *args, **kwargs: traced.append(fn) or trace(fn, *args, **kwargs))
    model = TripleDNet(TripleDConfig(depth_layers=10, extractor_layers=10, pose_layers=10,
                                     pose_input_size=None, attention="ca", pretext_task="dg2c"))
    model.build_for_size(64, 64)
    assert traced == []
    unbuilt = [layer.name for layer in model._flatten_layers() if not layer.built]
    assert unbuilt == []
    assert model.count_params() > 0
