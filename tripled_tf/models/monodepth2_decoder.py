"""Monodepth2's depth decoder (Godard et al. 2019, ``networks/depth_decoder.py``): 4 sigmoid disparities,
finest at the input resolution.

Not part of TripleDNet (whose depth decoder is FeatDepth's, :mod:`depth_decoder`); it makes the plain
baseline the Monodepth2 network, for comparison with Monodepth2's published rows and its training speed
(``--depth_decoder=monodepth2``, configs/kitti_md2.cfg).

Decoder widths (16, 32, 64, 128, 256) for stages i = 0..4; from the deepest (i = 4) to the finest:
  x = ConvBlock(x)                     (upconv_i_0; x = level 5 at i = 4)
  x = concat[up2(x), level i]          (the encoder skip; none at i = 0)
  x = ConvBlock(x)                     (upconv_i_1)
  sigma_i = sigmoid(Conv3x3(x -> 1))   (i = 3 .. 0)
ConvBlock = reflection-padded 3x3 conv with bias + ELU; up2 = nearest x2. Stage i runs at H/2^i, so
sigma_i is [B, H/2^i, W/2^i, 1]: H, H/2, H/4, H/8.
"""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.models.layers import BuiltByFirstCall, Conv3x3, ConvBlock, upsample_nearest_2x

DECODER_CHANNELS = (16, 32, 64, 128, 256)
NUM_SCALES = 4


@keras.saving.register_keras_serializable(package="tripled_tf")
class Monodepth2Decoder(BuiltByFirstCall, keras.Model):
    """Monodepth2's U-Net depth decoder with 4 disparity heads.

    ``call(features, training=None)``:
      features: the 5 encoder levels ``[level1, .., level5]`` (level k: ``[B, H/2^k, W/2^k,
        num_ch_enc[k-1]]``); all are used (levels 1..4 as skips, level 5 as the input).
      returns ``[sigma_0, sigma_1, sigma_2, sigma_3]``: sigmoid disparities ``[B, H/2^s, W/2^s, 1]``
        in (0, 1); sigma_0 is at the input resolution (Monodepth2's ``("disp", 0)``).

    Args:
      num_ch_enc: channels of the 5 encoder levels (checked against the features at call time).
      name, dtype, trainable: as for ``keras.Model``.

    Sublayers carry Monodepth2's module names: ``upconv_{i}_{j}`` and ``dispconv_{s}``.
    """

    output_stride = 1  # sigma_0 is at the input resolution

    def __init__(self, num_ch_enc: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        num_ch_enc = [int(c) for c in num_ch_enc]
        if len(num_ch_enc) != 5:
            raise ValueError(f"num_ch_enc must list the channels of 5 encoder levels, got {num_ch_enc}")
        self.num_ch_enc = num_ch_enc
        # Stage i's two blocks; index 4 - i, deepest first (Monodepth2's construction order).
        self.upconv = [(ConvBlock(DECODER_CHANNELS[i], name=f"upconv_{i}_0"),
                        ConvBlock(DECODER_CHANNELS[i], name=f"upconv_{i}_1")) for i in range(4, -1, -1)]
        self.dispconv = [Conv3x3(1, name=f"dispconv_{s}") for s in range(NUM_SCALES)]

    def call(self, features, training=None):
        if not isinstance(features, (list, tuple)) or len(features) != 5:
            raise ValueError(f"Monodepth2Decoder: expected a list of 5 encoder features [level1 .. "
                             f"level5], got {type(features).__name__} of length "
                             f"{len(features) if isinstance(features, (list, tuple)) else '?'}")
        levels = [checks.as_float_tensor(feature, f"features[{index}] (level {index + 1})",
                                         shape=[None, None, None, channels])
                  for index, (feature, channels) in enumerate(zip(features, self.num_ch_enc))]
        x = levels[4]
        disparities = [None] * NUM_SCALES
        for i in range(4, -1, -1):
            first, second = self.upconv[4 - i]
            x = upsample_nearest_2x(first(x))
            if i > 0:
                x = tf.concat([x, levels[i - 1]], axis=-1)
            x = second(x)
            if i < NUM_SCALES:
                disparities[i] = tf.sigmoid(self.dispconv[i](x))
        return disparities

    def get_config(self):
        config = super().get_config()
        config.update(name=self.name, num_ch_enc=list(self.num_ch_enc))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
