"""The disentangling feature split (tripled_tf.models.disentangle): channel slices written out by hand,
projection channel counts, the channel-attention gate, input checks and config.
"""
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models.disentangle import FeatureAttention, FeatureSplit

RNG = np.random.default_rng(0)
RN50_CHANNELS = [64, 256, 512, 1024, 2048]


def fake_features(height, width, channels, batch=1):
    """Random stand-ins for the 5 encoder levels of an H x W input (level k at H/2^k)."""
    return [tf.constant(RNG.normal(size=(batch, height // 2 ** k, width // 2 ** k, c)), tf.float32)
            for k, c in zip(range(1, 6), channels)]


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
