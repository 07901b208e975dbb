"""Tests of TripleDNet's branches: feature split, appearance decoder, extractor, pretext heads.

Right answers come from first principles: channel slices written out by hand, the decoder strides
(H / 2^s), the algebra of an additive skip (adding c to a disparity adds exactly c to the stage
output), analytic normals of planes, and heads with hand-set weights whose output is known.
"""
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models.appearance_decoder import AppearanceDecoder
from tripled_tf.models.disentangle import FeatureAttention, FeatureSplit
from tripled_tf.models.extractor import ExtractorDecoder, FeatureExtractor
from tripled_tf.models.pretext_heads import (PretextHead, pretext_head_spec, pretext_inputs,
                                             surface_normals)
from tripled_tf.models.resnet import ResNetEncoder

RNG = np.random.default_rng(0)
RN50_CHANNELS = [64, 256, 512, 1024, 2048]


def fake_features(height, width, channels, batch=1):
    """Random stand-ins for the 5 encoder levels of an H x W input (level k at H/2^k)."""
    return [tf.constant(RNG.normal(size=(batch, height // 2 ** k, width // 2 ** k, c)), tf.float32)
            for k, c in zip(range(1, 6), channels)]


def fake_disparities(height, width, batch=1):
    """sigma_0..sigma_3 at H/2 .. H/16, values in (0, 1)."""
    return [tf.constant(RNG.uniform(0.1, 0.9, size=(batch, height // 2 ** (s + 1),
                                                     width // 2 ** (s + 1), 1)), tf.float32)
            for s in range(4)]


# ---------------------------------------------------------------------------------------------------
# FeatureSplit


def test_split_main_config_slices_level5_in_halves():
    features = fake_features(64, 64, RN50_CHANNELS)
    depth, appearance = FeatureSplit()(features)
    assert len(depth) == len(appearance) == 5
    np.testing.assert_array_equal(depth[4].numpy(), features[4].numpy()[..., :1024])
    np.testing.assert_array_equal(appearance[4].numpy(), features[4].numpy()[..., 1024:])
    assert depth[4].shape == (1, 2, 2, 1024) and appearance[4].shape == (1, 2, 2, 1024)
    for level in range(4):
        np.testing.assert_array_equal(depth[level].numpy(), features[level].numpy())
        np.testing.assert_array_equal(appearance[level].numpy(), features[level].numpy())


def test_split_all_levels_and_projection_channel_counts():
    features = fake_features(64, 64, RN50_CHANNELS)
    split = FeatureSplit([True] * 5, depth_split="conv1x1", color_split="conv1x1")
    depth, appearance = split(features, training=False)
    assert [d.shape[-1] for d in depth] == [32, 128, 256, 512, 1024]
    # color_split=conv1x1 projects levels 1-4 and feeds the full level 5 (reference behaviour).
    assert [a.shape[-1] for a in appearance] == [32, 128, 256, 512, 2048]
    np.testing.assert_array_equal(appearance[4].numpy(), features[4].numpy())
    # ELU output is > -1.
    assert all(float(tf.reduce_min(d)) > -1.0 for d in depth)


def test_split_first_half_on_every_level():
    features = fake_features(64, 64, [8, 8, 16, 16, 32])
    depth, appearance = FeatureSplit([True] * 5)(features)
    for feature, d, a in zip(features, depth, appearance):
        half = feature.shape[-1] // 2
        np.testing.assert_array_equal(d.numpy(), feature.numpy()[..., :half])
        np.testing.assert_array_equal(a.numpy(), feature.numpy()[..., half:])


def test_channel_attention_is_one_gate_per_channel():
    x = tf.constant(RNG.uniform(0.5, 1.5, size=(2, 4, 5, 32)), tf.float32)
    ca = FeatureAttention("ca")
    ratio = (ca(x) / x).numpy()
    # Channel attention scales each channel of each sample by one number in (0, 1).
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1], ratio.shape), rtol=1e-5)
    assert np.all((ratio > 0) & (ratio < 1))
    pa_ratio = (FeatureAttention("pa")(x) / x).numpy()
    assert pa_ratio.shape == x.shape and np.all((pa_ratio > 0) & (pa_ratio < 1))


def test_split_with_attention_keeps_channel_counts():
    features = fake_features(64, 64, [8, 8, 16, 16, 64])
    depth, appearance = FeatureSplit(attention="ca")(features)
    assert depth[4].shape == appearance[4].shape == (1, 2, 2, 32)


def test_split_rejects_bad_input():
    with pytest.raises(ValueError, match="5"):
        FeatureSplit([True, False])
    with pytest.raises(ValueError, match="depth_split"):
        FeatureSplit(depth_split="third")
    with pytest.raises(ValueError, match="list of 5"):
        FeatureSplit()(fake_features(64, 64, RN50_CHANNELS)[:4])
    odd = fake_features(64, 64, [8, 8, 16, 16, 33])
    with pytest.raises(ValueError, match="even"):
        FeatureSplit()(odd)


def test_split_config_round_trip():
    split = FeatureSplit([True, False, True, False, True], depth_split="conv1x1", attention="pa")
    clone = FeatureSplit.from_config(split.get_config())
    assert clone.get_config() == split.get_config()


# ---------------------------------------------------------------------------------------------------
# AppearanceDecoder


def test_appearance_decoder_output_scales():
    height, width = 64, 96
    features = fake_features(height, width, [8, 8, 8, 8, 16])
    outputs = AppearanceDecoder()(features, fake_disparities(height, width))
    assert [tuple(o.shape) for o in outputs] == [(1, 64, 96, 3), (1, 32, 48, 3), (1, 16, 24, 3),
                                                 (1, 8, 12, 3)]
    for o in outputs:
        assert float(tf.reduce_min(o)) > 0.0 and float(tf.reduce_max(o)) < 1.0


def test_appearance_decoder_with_encoder_skips():
    height, width = 64, 64
    features = fake_features(height, width, [4, 6, 8, 10, 16], batch=2)
    decoder = AppearanceDecoder(encoder_skips=[True] * 4)
    outputs = decoder(features, fake_disparities(height, width, batch=2))
    assert [tuple(o.shape) for o in outputs] == [(2, 64, 64, 3), (2, 32, 32, 3), (2, 16, 16, 3),
                                                 (2, 8, 8, 3)]
    # The skip convs exist and read each level's channel count (3x3 kernel, c_k inputs).
    assert [s.conv.conv.kernel.shape[2] for s in decoder.skip_conv] == [10, 8, 6, 4]


def test_disparity_is_added_to_every_channel_of_its_stage():
    height, width = 64, 96
    features = fake_features(height, width, [8, 8, 8, 8, 16])
    sigmas = fake_disparities(height, width)
    decoder = AppearanceDecoder(skip_multiplier=2.0)
    decoder(features, sigmas)

    # Record what enters stage 1's first conv: stage 0's output, i.e. ConvBlock(...) + 2 · sigma_3.
    recorded = []
    stage1_conv = decoder.upconv_in[1]

    def recording_conv(x):
        recorded.append(x)
        return stage1_conv(x)

    decoder.upconv_in[1] = recording_conv
    c = 0.25
    decoder(features, sigmas)
    decoder(features, sigmas[:3] + [sigmas[3] + c])
    decoder.upconv_in[1] = stage1_conv
    difference = (recorded[1] - recorded[0]).numpy()
    assert difference.shape == (1, 4, 6, 256)
    np.testing.assert_allclose(difference, 2.0 * c, atol=1e-5)


def test_appearance_gradient_reaches_every_disparity():
    height, width = 64, 64
    features = fake_features(height, width, [8, 8, 8, 8, 16])
    sigmas = [tf.Variable(s) for s in fake_disparities(height, width)]
    decoder = AppearanceDecoder()
    with tf.GradientTape() as tape:
        full_res = decoder(features, sigmas)[0]
        loss = tf.reduce_mean(full_res)
    gradients = tape.gradient(loss, sigmas)
    for s, g in enumerate(gradients):
        assert g is not None, f"no gradient to sigma_{s}"
        assert float(tf.reduce_max(tf.abs(g))) > 0.0, f"zero gradient to sigma_{s}"


def test_appearance_decoder_resizes_mismatched_disparities():
    # 72 x 72 is not a multiple of 32: level 5 is 2x2 (floor) while the depth decoder's sigma_s come
    # at other sizes; they are resized to each stage, so the output is still (1, 64, 64, 3).
    features = fake_features(64, 64, [8, 8, 8, 8, 16])
    sigmas = fake_disparities(72, 72)
    outputs = AppearanceDecoder()(features, sigmas)
    assert tuple(outputs[0].shape) == (1, 64, 64, 3)


def test_appearance_decoder_validation_and_config():
    features = fake_features(64, 64, [8, 8, 8, 8, 16])
    decoder = AppearanceDecoder(encoder_skips=[False, True, False, False], skip_multiplier=0.5)
    decoder(features, fake_disparities(64, 64))
    with pytest.raises(ValueError, match="length 3"):
        decoder(features, fake_disparities(64, 64)[:3])
    bad = fake_disparities(64, 64)
    bad[0] = tf.zeros([1, 32, 32, 3])
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        decoder(features, bad)
    clone = AppearanceDecoder.from_config(decoder.get_config())
    assert clone.encoder_skips == [False, True, False, False] and clone.skip_multiplier == 0.5


# ---------------------------------------------------------------------------------------------------
# Feature extractor and its decoder


def test_extractor_decoder_scales():
    level5 = tf.constant(RNG.normal(size=(2, 2, 3, 32)), tf.float32)
    decoder = ExtractorDecoder()
    outputs = decoder([None, None, None, None, level5])
    assert [tuple(o.shape) for o in outputs] == [(2, 64, 96, 3), (2, 32, 48, 3), (2, 16, 24, 3),
                                                 (2, 8, 12, 3)]
    for o in outputs:
        assert float(tf.reduce_min(o)) > 0.0 and float(tf.reduce_max(o)) < 1.0
    # Widths of FeatDepth's decoder: 256, 256, then 128/64/32/16 (twice each).
    widths = [(b.filters, c.filters) for b, c in zip(decoder.upconv_in, decoder.upconv_out)]
    assert widths == [(256, 256), (128, 128), (64, 64), (32, 32), (16, 16)]
    clone = ExtractorDecoder.from_config(decoder.get_config())
    assert isinstance(clone, ExtractorDecoder)


def test_feature_extractor_defaults_and_no_normalisation():
    extractor = FeatureExtractor()
    assert extractor.num_layers == 50 and not extractor.normalize_input
    assert extractor.num_ch_enc == RN50_CHANNELS

    raw = FeatureExtractor(num_layers=18)
    normalising = ResNetEncoder(num_layers=18, normalize_input=True)
    x = tf.constant(RNG.uniform(size=(1, 64, 64, 3)), tf.float32)
    raw(x)
    normalising(x)
    normalising.set_weights(raw.get_weights())
    # The normalising encoder sees (y - 0.45) / 0.225; feeding it y = 0.45 + 0.225 x gives it x,
    # i.e. exactly what the raw extractor sees.
    a = raw(x, training=False)
    b = normalising(0.45 + 0.225 * x, training=False)
    assert [tuple(f.shape) for f in a] == [(1, 32, 32, 64), (1, 16, 16, 64), (1, 8, 8, 128),
                                           (1, 4, 4, 256), (1, 2, 2, 512)]
    for fa, fb in zip(a, b):
        np.testing.assert_allclose(fa.numpy(), fb.numpy(), rtol=1e-4, atol=1e-4)
    clone = FeatureExtractor.from_config(raw.get_config())
    assert clone.num_layers == 18 and not clone.normalize_input


def test_extractor_can_stop_after_the_first_levels():
    extractor = FeatureExtractor(num_layers=18)
    x = tf.constant(RNG.uniform(size=(2, 64, 64, 3)), tf.float32)
    full = extractor(x, training=False)
    for levels in (1, 3):
        part = extractor(x, training=False, num_levels=levels)
        assert len(part) == levels
        for fa, fb in zip(part, full):
            np.testing.assert_array_equal(fa.numpy(), fb.numpy())
    with pytest.raises(ValueError, match="num_levels"):
        extractor(x, num_levels=0)


# ---------------------------------------------------------------------------------------------------
# Pretext heads


def _set_head_to_pass_through(head: PretextHead, c_in: int) -> None:
    """Zero conv2 and make the output a sum over the 32 channels, so head(x) = sum relu(bn2(0) + x)."""
    head(tf.zeros([1, 4, 4, c_in]))
    head.conv2.conv.kernel.assign(tf.zeros_like(head.conv2.conv.kernel))
    head.output_conv.kernel.assign(tf.ones_like(head.output_conv.kernel))
    head.output_conv.bias.assign(tf.zeros_like(head.output_conv.bias))


def test_pretext_head_residual_broadcasts_one_channel_over_32():
    head = PretextHead(1, residual=True)
    _set_head_to_pass_through(head, 1)
    x = tf.constant(RNG.normal(size=(2, 6, 7, 1)), tf.float32)
    # Inference-mode BN of a zero input with fresh statistics (mean 0, var 1, beta 0) is 0, so the
    # pre-ReLU tensor is x broadcast over 32 channels, and the 1x1 all-ones conv sums 32 copies.
    y = head(x, training=False)
    np.testing.assert_allclose(y.numpy(), 32.0 * np.maximum(x.numpy(), 0.0), rtol=1e-5, atol=1e-6)

    plain = PretextHead(1, residual=False)
    _set_head_to_pass_through(plain, 1)
    np.testing.assert_allclose(plain(x, training=False).numpy(), 0.0, atol=1e-6)


def test_pretext_head_shapes_and_config():
    head = PretextHead(2)
    y = head(tf.zeros([2, 16, 24, 4]), training=True)
    assert tuple(y.shape) == (2, 16, 24, 2)
    with pytest.raises(ValueError, match="residual"):
        PretextHead(1, residual=True)(tf.zeros([1, 8, 8, 2]))
    clone = PretextHead.from_config(PretextHead(2, residual=True, name="d2g_head").get_config())
    assert clone.c_out == 2 and clone.residual and clone.name == "d2g_head"


def test_surface_normals_of_fronto_parallel_plane():
    depth = tf.fill([2, 5, 7, 1], 3.0)
    normals = surface_normals(depth).numpy()
    assert normals.shape == (2, 5, 7, 3)
    np.testing.assert_allclose(normals, np.broadcast_to([0.5, 0.5, 1.0], normals.shape), atol=1e-6)


@pytest.mark.parametrize("slope", [0.5, -2.0])
def test_surface_normals_of_tilted_planes(slope):
    x = np.arange(7, dtype=np.float32)
    y = np.arange(5, dtype=np.float32)
    norm = np.sqrt(1.0 + slope ** 2)
    # D = slope · x + 4: dD/dx = slope everywhere (one-sided differences are exact on a line too).
    depth_x = np.broadcast_to(slope * x[None, :] + 4.0, (5, 7))[None, ..., None]
    expected = np.array([-slope / norm, 0.0, 1.0 / norm]) * 0.5 + 0.5
    normals = surface_normals(depth_x).numpy()
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=1e-6)
    # D = slope · y + 4 tilts about the x axis instead.
    depth_y = np.broadcast_to(slope * y[:, None] + 4.0, (5, 7))[None, ..., None]
    expected = np.array([0.0, -slope / norm, 1.0 / norm]) * 0.5 + 0.5
    normals = surface_normals(depth_y).numpy()
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=1e-6)


def test_surface_normals_use_central_inside_and_one_sided_at_borders():
    width = 6
    x = np.arange(width, dtype=np.float32)
    depth = np.broadcast_to(x ** 2, (3, width))[None, ..., None]
    # d(x²)/dx: central difference 2x inside; 1 - 0 = 1 at x = 0; 25 - 16 = 9 at x = 5.
    derivative = np.array([1.0, 2.0, 4.0, 6.0, 8.0, 9.0])
    expected_x = 0.5 * (-derivative / np.sqrt(1.0 + derivative ** 2) + 1.0)
    np.testing.assert_allclose(surface_normals(depth).numpy()[0, 1, :, 0], expected_x, atol=1e-6)


def test_pretext_inputs_channel_layouts():
    height, width = 8, 12
    disparity = tf.constant(RNG.uniform(size=(2, height, width, 1)), tf.float32)
    l_norm = tf.constant(RNG.uniform(-1, 1, size=(2, height, width, 1)), tf.float32)
    d2g = pretext_inputs("d2g", disparity)
    np.testing.assert_array_equal(d2g.numpy(), disparity.numpy())
    dg2c = pretext_inputs("dg2c", disparity, l_norm)
    np.testing.assert_array_equal(dg2c.numpy(), np.concatenate([disparity, l_norm], axis=-1))
    # A full normalised Lab image is accepted; its channel 0 is L_n.
    lab = tf.concat([l_norm, tf.ones([2, height, width, 2])], axis=-1)
    np.testing.assert_array_equal(pretext_inputs("dg2c", disparity, lab).numpy(), dg2c.numpy())
    assert pretext_inputs("d2c", disparity).shape == (2, height, width, 1)

    # Constant disparity -> fronto-parallel -> (n_x, n_y) = (0.5, 0.5).
    flat = tf.fill([2, height, width, 1], 0.3)
    d2g_normals = pretext_inputs("d2g", flat, use_normals=True)
    np.testing.assert_allclose(d2g_normals.numpy(), 0.5, atol=1e-6)
    dg2c_normals = pretext_inputs("dg2c", flat, l_norm, use_normals=True).numpy()
    np.testing.assert_allclose(dg2c_normals[..., 0], 0.3, atol=1e-7)
    np.testing.assert_allclose(dg2c_normals[..., 1:3], 0.5, atol=1e-6)
    np.testing.assert_array_equal(dg2c_normals[..., 3:], l_norm.numpy())
    for task in ("d2g", "dg2c", "d2c"):
        for use_normals in (False, True):
            c_in, _, _ = pretext_head_spec(task, use_normals)
            built = pretext_inputs(task, disparity, l_norm, use_normals=use_normals)
            assert built.shape[-1] == c_in
    assert pretext_head_spec("d2g") == (1, 1, True)
    assert pretext_head_spec("dg2c") == (2, 2, False)


def test_pretext_inputs_mask_multiplication():
    height, width = 8, 12
    disparity = tf.constant(RNG.uniform(size=(1, height, width, 1)), tf.float32)
    l_norm = tf.constant(RNG.uniform(-1, 1, size=(1, height, width, 1)), tf.float32)
    mask = np.ones((1, height, width, 3), np.float32)
    mask[:, 2:5, 3:9] = 0.0
    masked = pretext_inputs("dg2c", disparity, l_norm, mask=mask).numpy()
    expected = np.concatenate([disparity, l_norm], axis=-1) * mask[..., :1]
    np.testing.assert_array_equal(masked, expected)
    assert np.all(masked[:, 2:5, 3:9] == 0.0)
    masked_d2g = pretext_inputs("d2g", disparity, mask=mask[..., :1]).numpy()
    np.testing.assert_array_equal(masked_d2g, disparity.numpy() * mask[..., :1])


def test_pretext_inputs_validation():
    disparity = tf.zeros([1, 8, 8, 1])
    with pytest.raises(ValueError, match="task"):
        pretext_inputs("rotation", disparity)
    with pytest.raises(ValueError, match="lab_norm"):
        pretext_inputs("dg2c", disparity)
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        pretext_inputs("d2g", tf.zeros([1, 3, 8, 8]))
    with pytest.raises(ValueError, match="mask"):
        pretext_inputs("d2g", disparity, mask=tf.zeros([1, 8, 8, 2]))
    with pytest.raises(ValueError, match="same"):
        pretext_inputs("d2g", disparity, mask=tf.zeros([1, 4, 4, 1]))
