"""Monodepth2's depth decoder (tripled_tf.models.monodepth2_decoder): scales, parameter count and skip
wiring.
"""

import numpy as np
import tensorflow as tf

from tripled_tf.models.monodepth2_decoder import Monodepth2Decoder

RNG = np.random.default_rng(0)

CHANNELS = {18: [64, 64, 128, 256, 512], 50: [64, 256, 512, 1024, 2048]}


def random_images(*shape):
    return RNG.random(shape, dtype=np.float32)

def decoder_features(channels, batch, h, w):
    return [random_images(batch, h // 2 ** (k + 1), w // 2 ** (k + 1), c) for k, c in enumerate(channels)]


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
