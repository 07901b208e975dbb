"""The appearance decoder with distillation skips (tripled_tf.models.appearance_decoder): the decoder
strides (H / 2^s), the algebra of an additive skip (adding c to a disparity adds exactly c to the stage
output), gradients to every disparity, resizing and config.
"""
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models.appearance_decoder import AppearanceDecoder

RNG = np.random.default_rng(0)


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
