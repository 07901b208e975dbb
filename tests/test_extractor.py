"""The feature extractor and its decoder (tripled_tf.models.extractor): scales, defaults, no input
normalisation, stopping after the first levels.
"""
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models.extractor import ExtractorDecoder, FeatureExtractor
from tripled_tf.models.resnet import ResNetEncoder

RNG = np.random.default_rng(0)
RN50_CHANNELS = [64, 256, 512, 1024, 2048]


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
