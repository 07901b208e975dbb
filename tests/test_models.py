"""Tests of the network building blocks: ResNet encoders, shared layers, depth decoder, pose net.

Right answers come from first principles: torchvision's published layouts and parameter counts,
hand-derived shapes, a plain numpy re-implementation of PyTorch's zero-padded convolution, and
delta kernels whose outputs can be written down by hand.
"""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models.depth_decoder import ChainedResidualPooling, DepthDecoder
from tripled_tf.models.monodepth2_decoder import Monodepth2Decoder
from tripled_tf.models.layers import (BatchNorm2D, Conv3x3, ConvBlock, TorchInitConv2D,
                                      Upsample2x, upsample_nearest_2x)
from tripled_tf.models.pose_net import PoseNet
from tripled_tf.models.resnet import (BasicBlock, Bottleneck, ResNetEncoder, max_pool_3x3_stride2,
                                      torchvision_key_map)

RNG = np.random.default_rng(0)

# torchvision ResNet layouts: blocks per stage and whether the block is a Bottleneck (expansion 4).
TORCHVISION_LAYOUT = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}
# torchvision resnet18 / resnet50 parameter counts (11,689,512 / 25,557,032) minus the fc layer
# (512·1000 + 1000 = 513,000 / 2048·1000 + 1000 = 2,049,000).
TORCHVISION_PARAMS_WITHOUT_FC = {18: 11_176_512, 50: 23_508_032}
CHANNELS = {18: [64, 64, 128, 256, 512], 50: [64, 256, 512, 1024, 2048]}


def random_images(*shape):
    return RNG.random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def rn18():
    encoder = ResNetEncoder(18)
    encoder(random_images(1, 64, 96, 3))
    return encoder


@pytest.fixture(scope="module")
def rn50():
    encoder = ResNetEncoder(50)
    encoder(random_images(1, 32, 64, 3))
    return encoder


def expected_torchvision_keys(num_layers):
    """The torchvision state_dict keys without fc and num_batches_tracked, built from the layout."""
    blocks_per_stage, bottleneck = TORCHVISION_LAYOUT[num_layers]
    bn_suffixes = ("weight", "bias", "running_mean", "running_var")
    keys = {"conv1.weight"} | {f"bn1.{s}" for s in bn_suffixes}
    in_channels = 64
    for stage, num_blocks in enumerate(blocks_per_stage):
        out_channels = 64 * 2 ** stage * (4 if bottleneck else 1)
        for block in range(num_blocks):
            prefix = f"layer{stage + 1}.{block}"
            for i in range(1, 4 if bottleneck else 3):
                keys.add(f"{prefix}.conv{i}.weight")
                keys |= {f"{prefix}.bn{i}.{s}" for s in bn_suffixes}
            stride = 2 if (block == 0 and stage > 0) else 1
            if stride != 1 or in_channels != out_channels:
                keys.add(f"{prefix}.downsample.0.weight")
                keys |= {f"{prefix}.downsample.1.{s}" for s in bn_suffixes}
            in_channels = out_channels
    return keys


def numpy_conv(x, kernel, stride, pad):
    """PyTorch Conv2d semantics in NHWC: symmetric zero padding, out = floor((H + 2p - k) / s) + 1."""
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (x.shape[1] + 2 * pad - kh) // stride + 1
    out_w = (x.shape[2] + 2 * pad - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
            out += window @ kernel[i, j]
    return out


def randomize_batch_norm(bn):
    c = bn.gamma.shape[0]
    bn.gamma.assign(RNG.uniform(0.5, 1.5, c).astype(np.float32))
    bn.beta.assign(RNG.normal(0, 0.1, c).astype(np.float32))
    bn.moving_mean.assign(RNG.normal(0, 0.1, c).astype(np.float32))
    bn.moving_variance.assign(RNG.uniform(0.5, 2.0, c).astype(np.float32))


def numpy_bn(x, bn):
    gamma, beta, mean, var = (v.numpy().astype(np.float64) for v in
                              (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def relu(x):
    return np.maximum(x, 0.0)


# ------------------------------------------------------------------------------------ ResNet encoder
@pytest.mark.parametrize("num_layers, size", [(18, (64, 96)), (50, (32, 64))])
def test_encoder_feature_shapes(num_layers, size, rn18, rn50):
    encoder = rn18 if num_layers == 18 else rn50
    h, w = size
    features = encoder(random_images(2, h, w, 3))
    assert encoder.num_ch_enc == CHANNELS[num_layers]
    assert len(features) == 5
    for level, (feature, channels) in enumerate(zip(features, CHANNELS[num_layers]), start=1):
        assert tuple(feature.shape) == (2, h // 2 ** level, w // 2 ** level, channels)


@pytest.mark.parametrize("num_layers", [18, 50])
def test_encoder_trainable_parameter_count_matches_torchvision(num_layers, rn18, rn50):
    encoder = rn18 if num_layers == 18 else rn50
    count = sum(int(np.prod(v.shape)) for v in encoder.trainable_weights)
    assert count == TORCHVISION_PARAMS_WITHOUT_FC[num_layers]


@pytest.mark.parametrize("num_layers, expected_count", [(18, 100), (50, 265)])
def test_torchvision_key_map_covers_exactly_the_state_dict(num_layers, expected_count, rn18, rn50):
    # 18: conv1 + bn1 (5) + 8 blocks · (2 conv + 2 BN · 4) (80) + 3 downsample · 5 (15) = 100.
    # 50: 5 + 16 blocks · (3 + 3 · 4) (240) + 4 downsample · 5 (20) = 265.
    encoder = rn18 if num_layers == 18 else rn50
    key_map = torchvision_key_map(encoder)
    expected = expected_torchvision_keys(num_layers)
    assert len(expected) == expected_count
    assert set(key_map) == expected
    # Every Keras variable is the target of exactly one key: nothing unloaded, nothing loaded twice.
    mapped_ids = [id(v) for v in key_map.values()]
    assert len(set(mapped_ids)) == len(mapped_ids)
    assert set(mapped_ids) == {id(v) for v in encoder.weights}
    # Layers are named after their torchvision modules, so the map is a pure name translation.
    for layer in encoder.torchvision_layers():
        assert f"{layer.name}.weight" in key_map


def test_torchvision_key_map_shapes_are_torch_shapes_transposed(rn18, rn50):
    # torch conv weight [out, in, kh, kw] <-> Keras kernel [kh, kw, in, out]; BN vectors [C].
    map18, map50 = torchvision_key_map(rn18), torchvision_key_map(rn50)
    assert tuple(map18["conv1.weight"].shape) == (7, 7, 3, 64)
    assert tuple(map18["layer2.0.conv1.weight"].shape) == (3, 3, 64, 128)
    assert tuple(map18["layer2.0.downsample.0.weight"].shape) == (1, 1, 64, 128)
    assert tuple(map18["layer4.1.bn2.running_var"].shape) == (512,)
    assert tuple(map50["layer1.0.downsample.0.weight"].shape) == (1, 1, 64, 256)
    assert tuple(map50["layer3.0.conv2.weight"].shape) == (3, 3, 256, 256)
    assert tuple(map50["layer4.2.conv3.weight"].shape) == (1, 1, 512, 2048)


def test_key_map_builds_an_unbuilt_encoder_with_six_channels():
    encoder = ResNetEncoder(18, num_input_images=2)
    key_map = torchvision_key_map(encoder)
    assert set(key_map) == expected_torchvision_keys(18)
    assert tuple(key_map["conv1.weight"].shape) == (7, 7, 6, 64)


def test_batch_norm_settings_and_bias_free_convs(rn50):
    bns = [l for l in rn50.torchvision_layers() if isinstance(l, keras.layers.BatchNormalization)]
    convs = [l for l in rn50.torchvision_layers() if isinstance(l, keras.layers.Conv2D)]
    assert len(bns) == len(convs) == 53  # 1 stem + 16 blocks · 3 + 4 downsample
    for bn in bns:
        assert bn.epsilon == 1e-5 and bn.momentum == 0.9  # PyTorch eps, momentum 0.1
    for conv in convs:
        assert not conv.use_bias


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


def test_stem_padding_is_symmetric():
    # conv1 = delta at its centre tap (3, 3) copying channel c to c: with PyTorch's symmetric pad 3,
    # level1[i, j] = x[2i, 2j]. TF "same" padding (2 before, 3 after) would give x[2i+1, 2j+1].
    encoder = ResNetEncoder(18, normalize_input=False)
    x = random_images(2, 64, 96, 3)
    encoder(x)
    kernel = np.zeros((7, 7, 3, 64), np.float32)
    for c in range(3):
        kernel[3, 3, c, c] = 1.0
    encoder.conv1.kernel.assign(kernel)
    level1 = encoder(x, training=False)[0].numpy()
    expected = x[:, ::2, ::2, :] / np.sqrt(1.0 + 1e-5)  # fresh BN: mean 0, var 1, gamma 1, beta 0
    np.testing.assert_allclose(level1[..., :3], expected, atol=1e-6)
    np.testing.assert_array_equal(level1[..., 3:], 0.0)


def test_max_pool_matches_torch_definition():
    x = RNG.random((1, 7, 8, 2)).astype(np.float32)
    out = max_pool_3x3_stride2(x).numpy()
    assert out.shape == (1, 4, 4, 2)  # floor((7 + 2 - 3) / 2) + 1 = 4, floor((8 + 2 - 3) / 2) + 1 = 4
    for i in range(4):
        for j in range(4):
            window = x[0, max(2 * i - 1, 0):2 * i + 2, max(2 * j - 1, 0):2 * j + 2]
            np.testing.assert_array_equal(out[0, i, j], window.max(axis=(0, 1)))


@pytest.mark.parametrize("block_class", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("size", [(7, 10), (8, 6)])
@pytest.mark.parametrize("stride", [1, 2])
def test_strided_blocks_match_numpy_pytorch_semantics(block_class, size, stride):
    """A block with projection shortcut against a numpy PyTorch-semantics reference (every 3x3 conv
    pads 1 on each side: explicitly at stride 2, by "same" inside the conv at stride 1)."""
    block = block_class(4, stride=stride, downsample=True)
    x = RNG.normal(size=(2, *size, 8)).astype(np.float32)
    block(x)
    for layer in block.torchvision_layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            randomize_batch_norm(layer)
    out = block(x, training=False).numpy()

    def conv(inp, layer, stride, pad):
        return numpy_conv(inp, layer.kernel.numpy().astype(np.float64), stride, pad)

    xd = x.astype(np.float64)
    if block_class is BasicBlock:
        y = relu(numpy_bn(conv(xd, block.conv1, stride, 1), block.bn1))
        y = numpy_bn(conv(y, block.conv2, 1, 1), block.bn2)
    else:  # v1.5: the stride sits in the 3x3 conv
        y = relu(numpy_bn(conv(xd, block.conv1, 1, 0), block.bn1))
        y = relu(numpy_bn(conv(y, block.conv2, stride, 1), block.bn2))
        y = numpy_bn(conv(y, block.conv3, 1, 0), block.bn3)
    shortcut = numpy_bn(conv(xd, block.downsample_conv, stride, 0), block.downsample_bn)
    expected = relu(y + shortcut)
    assert out.shape == expected.shape == (2, (size[0] + stride - 1) // stride,
                                           (size[1] + stride - 1) // stride,
                                           4 * block_class.expansion)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_input_normalization_is_applied_inside(rn18):
    raw = ResNetEncoder(18, normalize_input=False)
    x = random_images(1, 64, 96, 3)
    raw(x)
    raw.set_weights(rn18.get_weights())
    normalized = rn18(x, training=False)
    manual = raw((x - 0.45) / 0.225, training=False)
    for a, b in zip(normalized, manual):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_encoder_rejects_wrong_layouts(rn18):
    with pytest.raises(ValueError, match="NHWC"):
        rn18(random_images(1, 3, 64, 96))  # NCHW
    with pytest.raises(ValueError, match="float32"):
        rn18(np.zeros((1, 64, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="6"):
        ResNetEncoder(18, num_input_images=2)(random_images(1, 64, 96, 3))
    with pytest.raises(ValueError, match="num_layers"):
        ResNetEncoder(20)


def test_encoder_and_decoder_accept_dynamic_shapes(rn18):
    decoder = DepthDecoder(rn18.num_ch_enc)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def depth(images):
        return decoder(rn18(images, training=False), training=False)

    for batch, h, w in [(2, 64, 96), (1, 64, 128)]:
        disparities = depth(tf.constant(random_images(batch, h, w, 3)))
        assert [tuple(d.shape) for d in disparities] == [
            (batch, h // 2 ** (s + 1), w // 2 ** (s + 1), 1) for s in range(4)]


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


# ------------------------------------------------------------------------------------- depth decoder
def test_chained_residual_pooling_definition_and_minus_inf_padding():
    # Identity 1x1 convs: t_k = maxpool^k(x) (a (4k+1)x(4k+1) window max), out = x + t_1 + .. + t_4.
    # Background -5 with a -1 spike at (5, 5): t_k = -1 within Chebyshev distance 2k of the spike,
    # else -5; zero padding (instead of -inf) would put 0 at the borders.
    crp = ChainedResidualPooling(channels=1, num_stages=4)
    x = np.full((1, 11, 12, 1), -5.0, np.float32)
    x[0, 5, 5, 0] = -1.0
    crp(x)
    for conv in crp.pointwise:
        conv.kernel.assign(np.ones((1, 1, 1, 1), np.float32))
    out = crp(x).numpy()[0, :, :, 0]
    rows, cols = np.meshgrid(np.arange(11), np.arange(12), indexing="ij")
    distance = np.maximum(np.abs(rows - 5), np.abs(cols - 5))
    expected = x[0, :, :, 0].copy()
    for k in range(1, 5):
        expected += np.where(distance <= 2 * k, -1.0, -5.0)
    np.testing.assert_array_equal(out, expected)


@pytest.fixture(scope="module")
def main_decoder():
    """Decoder with the main model's channels: RN50 levels with the depth half of level 5."""
    return DepthDecoder([64, 256, 512, 1024, 1024])


def decoder_features(channels, batch, h, w):
    return [random_images(batch, h // 2 ** (k + 1), w // 2 ** (k + 1), c) for k, c in enumerate(channels)]


def test_depth_decoder_outputs(main_decoder):
    features = decoder_features([64, 256, 512, 1024, 1024], 2, 64, 96)
    disparities = main_decoder(features)
    assert [tuple(d.shape) for d in disparities] == [(2, 32, 48, 1), (2, 16, 24, 1), (2, 8, 12, 1),
                                                     (2, 4, 6, 1)]
    for d in disparities:
        assert np.all((d.numpy() > 0.0) & (d.numpy() < 1.0))
    # Dropout is inactive at inference (also the default): repeated calls are identical.
    again = main_decoder(features, training=False)
    for a, b in zip(disparities, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    trained = main_decoder(features, training=True)
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(disparities, trained))


def test_depth_decoder_without_dropout_trains_like_inference():
    # The decoder has no batch norm, so with dropout 0 training mode changes nothing.
    decoder = DepthDecoder(CHANNELS[18], dropout=0.0)
    features = decoder_features(CHANNELS[18], 1, 64, 64)
    for a, b in zip(decoder(features, training=False), decoder(features, training=True)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_depth_decoder_parameter_count():
    decoder = DepthDecoder(CHANNELS[18])
    decoder(decoder_features(CHANNELS[18], 1, 64, 64))
    reduce = 512 * 512 + (256 + 128 + 64) * 256          # Conv1x1, no bias
    iconv = (9 * 512 * 256 + 256) + 3 * (9 * 513 * 256 + 256)
    crp = 4 * 4 * 256 * 256                              # 4 stages of Conv1x1 256->256, no bias
    merge = 4 * (9 * 256 * 256 + 256)
    disp = 4 * (9 * 256 + 1)
    count = sum(int(np.prod(v.shape)) for v in decoder.trainable_weights)
    assert count == reduce + iconv + crp + merge + disp == 8_521_476


def test_monodepth2_decoder_scales_and_parameter_count():
    decoder = Monodepth2Decoder(CHANNELS[18])
    disparities = decoder(decoder_features(CHANNELS[18], 2, 64, 96))
    # sigma_s at H/2^s: 64x96, 32x48, 16x24, 8x12; sigmoid outputs.
    assert [tuple(d.shape) for d in disparities] == [(2, 64 // 2 ** s, 96 // 2 ** s, 1) for s in range(4)]
    assert all(0.0 < float(tf.reduce_min(d)) and float(tf.reduce_max(d)) < 1.0 for d in disparities)
    # Monodepth2: widths (16, 32, 64, 128, 256); stage i: upconv_i_0 (c_in -> w_i), upconv_i_1
    # (w_i + skip_i -> w_i), 3x3 convs with bias; dispconv_s (w_s -> 1) for s = 0..3.
    widths, encoder = (16, 32, 64, 128, 256), CHANNELS[18]
    count = 0
    for i in range(4, -1, -1):
        c_in = encoder[4] if i == 4 else widths[i + 1]
        count += 9 * c_in * widths[i] + widths[i]
        count += 9 * (widths[i] + (encoder[i - 1] if i > 0 else 0)) * widths[i] + widths[i]
    count += sum(9 * widths[s] + 1 for s in range(4))
    assert decoder.count_params() == count == 3_152_724  # Monodepth2's ResNet-18 depth decoder


def test_monodepth2_decoder_skip_wiring():
    # Level k feeds stage k+1's skip, so it reaches sigma_s only for s <= k (level 5 is the input).
    decoder = Monodepth2Decoder(CHANNELS[18])
    features = decoder_features(CHANNELS[18], 1, 64, 64)
    base = [d.numpy() for d in decoder(features)]
    for level in range(1, 5):
        changed = list(features)
        changed[level - 1] = features[level - 1] + 1.0
        moved = [not np.allclose(a, b.numpy()) for a, b in zip(base, decoder(changed))]
        assert moved == [s <= level for s in range(4)], level


def test_depth_decoder_rejects_wrong_features(main_decoder):
    features = decoder_features([64, 256, 512, 1024, 1024], 1, 64, 64)
    with pytest.raises(ValueError, match="5 encoder features"):
        main_decoder(features[1:])
    with pytest.raises(ValueError, match="1024"):
        main_decoder(features[:4] + [random_images(1, 2, 2, 2048)])
    with pytest.raises(ValueError, match="multiples of 32"):
        main_decoder(features[:4] + [random_images(1, 3, 2, 1024)])


# ------------------------------------------------------------------------------------------ pose net
@pytest.fixture(scope="module")
def pose_net():
    net = PoseNet(input_size=None)
    net((random_images(2, 64, 64, 3), random_images(2, 64, 64, 3)))
    return net


def test_pose_net_shapes_and_reference_input_size(pose_net):
    axisangle, translation = pose_net((random_images(3, 64, 96, 3), random_images(3, 64, 96, 3)))
    assert tuple(axisangle.shape) == (3, 3) and tuple(translation.shape) == (3, 3)
    assert PoseNet().input_size == (192, 640)
    assert pose_net.encoder.input_channels == 6


def test_pose_outputs_are_mean_of_last_conv_times_0_01(pose_net):
    last = pose_net.pose_2
    saved = [w.numpy() for w in (last.kernel, last.bias)]
    try:
        last.kernel.assign(np.zeros_like(saved[0]))
        last.bias.assign(np.arange(1, 7, dtype=np.float32))
        axisangle, translation = pose_net((random_images(2, 64, 64, 3), random_images(2, 64, 64, 3)))
        np.testing.assert_allclose(axisangle.numpy(), [[0.01, 0.02, 0.03]] * 2, rtol=1e-6)
        np.testing.assert_allclose(translation.numpy(), [[0.04, 0.05, 0.06]] * 2, rtol=1e-6)
    finally:
        last.kernel.assign(saved[0])
        last.bias.assign(saved[1])


def test_pose_net_resizes_frames_to_input_size(pose_net):
    # Bilinear resizing keeps a constant image constant, so constant 32x48 frames resized to 64x96
    # must give the pose of constant 64x96 frames through the same weights.
    resizing = PoseNet(input_size=(64, 96))
    small = (np.full((1, 32, 48, 3), 0.3, np.float32), np.full((1, 32, 48, 3), 0.7, np.float32))
    resizing(small)
    resizing.set_weights(pose_net.get_weights())
    large = (np.full((1, 64, 96, 3), 0.3, np.float32), np.full((1, 64, 96, 3), 0.7, np.float32))
    for a, b in zip(resizing(small, training=False), pose_net(large, training=False)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-8)


def test_pose_net_rejects_bad_inputs(pose_net):
    with pytest.raises(ValueError, match="frame_a, frame_b"):
        pose_net(random_images(1, 64, 64, 3))
    with pytest.raises(ValueError, match="same batch, height and width"):
        pose_net((random_images(1, 64, 64, 3), random_images(1, 32, 64, 3)))
    with pytest.raises(ValueError, match="input_size"):
        PoseNet(input_size=(192,))


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
