"""The ResNet encoders (tripled_tf.models.resnet): torchvision's layouts, parameter counts and key
names, PyTorch's padding and batch-norm semantics, checked against a numpy re-implementation and delta
kernels whose outputs can be written down by hand.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models.depth_decoder import DepthDecoder
from tripled_tf.models.resnet import (BasicBlock, Bottleneck, ResNetEncoder, max_pool_3x3_stride2,
                                      torchvision_key_map)

RNG = np.random.default_rng(0)

# torchvision ResNet layouts: blocks per stage and whether the block is a Bottleneck (expansion 4).
TORCHVISION_LAYOUT = {10: ((1, 1, 1, 1), False), 18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}
# torchvision resnet18 / resnet50 parameter counts (11,689,512 / 25,557,032) minus the fc layer
# (512·1000 + 1000 = 513,000 / 2048·1000 + 1000 = 2,049,000).
# ResNet-10 (not a torchvision model: one BasicBlock per stage), counted by hand: stem 7·7·3·64 + BN 2·64
# = 9,536; layer1 2·(3·3·64·64) + 2 BN 2·64 = 73,984; layer2..4 (c_in -> c): 3·3·c_in·c + 3·3·c·c +
# 1x1 projection c_in·c + 3 BN 2·c = 230,144 (64 -> 128), 919,040 (128 -> 256), 3,673,088 (256 -> 512).
TORCHVISION_PARAMS_WITHOUT_FC = {10: 4_905_792, 18: 11_176_512, 50: 23_508_032}
CHANNELS = {10: [64, 64, 128, 256, 512], 18: [64, 64, 128, 256, 512], 50: [64, 256, 512, 1024, 2048]}


def random_images(*shape):
    return RNG.random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def rn18():
    encoder = ResNetEncoder(18)
    encoder(random_images(1, 64, 96, 3))
    return encoder


@pytest.fixture(scope="module")
def rn10():
    encoder = ResNetEncoder(10)
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


@pytest.mark.parametrize("num_layers, size", [(10, (64, 96)), (18, (64, 96)), (50, (32, 64))])
def test_encoder_feature_shapes(num_layers, size, rn10, rn18, rn50):
    encoder = {10: rn10, 18: rn18, 50: rn50}[num_layers]
    h, w = size
    features = encoder(random_images(2, h, w, 3))
    assert encoder.num_ch_enc == CHANNELS[num_layers]
    assert len(features) == 5
    for level, (feature, channels) in enumerate(zip(features, CHANNELS[num_layers]), start=1):
        assert tuple(feature.shape) == (2, h // 2 ** level, w // 2 ** level, channels)


@pytest.mark.parametrize("num_layers", [10, 18, 50])
def test_encoder_trainable_parameter_count_matches_torchvision(num_layers, rn10, rn18, rn50):
    encoder = {10: rn10, 18: rn18, 50: rn50}[num_layers]
    count = sum(int(np.prod(v.shape)) for v in encoder.trainable_weights)
    assert count == TORCHVISION_PARAMS_WITHOUT_FC[num_layers]


@pytest.mark.parametrize("num_layers, expected_count", [(10, 60), (18, 100), (50, 265)])
def test_torchvision_key_map_covers_exactly_the_state_dict(num_layers, expected_count, rn10, rn18,
                                                           rn50):
    # 10: conv1 + bn1 (5) + 4 blocks · (2 conv + 2 BN · 4) (40) + 3 downsample · 5 (15) = 60.
    # 18: conv1 + bn1 (5) + 8 blocks · (2 conv + 2 BN · 4) (80) + 3 downsample · 5 (15) = 100.
    # 50: 5 + 16 blocks · (3 + 3 · 4) (240) + 4 downsample · 5 (20) = 265.
    encoder = {10: rn10, 18: rn18, 50: rn50}[num_layers]
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
