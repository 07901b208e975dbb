"""FeatDepth's depth decoder (tripled_tf.models.depth_decoder): chained residual pooling by its
definition, output scales, parameter count, dropout and input checks.
"""

import numpy as np
import pytest

from tripled_tf.models.depth_decoder import ChainedResidualPooling, DepthDecoder

RNG = np.random.default_rng(0)

CHANNELS = {18: [64, 64, 128, 256, 512], 50: [64, 256, 512, 1024, 2048]}


def random_images(*shape):
    return RNG.random(shape, dtype=np.float32)

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


def test_depth_decoder_rejects_wrong_features(main_decoder):
    features = decoder_features([64, 256, 512, 1024, 1024], 1, 64, 64)
    with pytest.raises(ValueError, match="5 encoder features"):
        main_decoder(features[1:])
    with pytest.raises(ValueError, match="1024"):
        main_decoder(features[:4] + [random_images(1, 2, 2, 2048)])
    with pytest.raises(ValueError, match="multiples of 32"):
        main_decoder(features[:4] + [random_images(1, 3, 2, 1024)])
