"""FeatDepth's RefineNet-lite depth decoder (docs/method.md 2.3): 4 sigmoid disparities, finest at H/2.

Per stage, from the deepest (H/32) to the finest:
  y = Conv1x1(skip)                        (no bias; 512 ch for the deepest stage, else 256)
  x = concat[y, x_prev, sigma_prev]        (513 ch; not for the deepest stage)
  x = LReLU(Conv3x3(x)); x = CRP(x); x = LReLU(Conv3x3(x)); x = up2(x)
  sigma = sigmoid(Conv3x3(256 -> 1)(x))
with skips = levels 5, 4, 3, 2 of the encoder (level 1 is unused), LReLU slope 0.01 (PyTorch's
default, not TF's 0.2), reflection-padded Conv3x3 with bias and dropout (training only) on the level-4
and level-5 inputs. Sublayers carry FeatDepth's module names (reduce4, iconv4, crp4, merge4, disp4,
...; "4" = deepest stage) so that a FeatDepth checkpoint can be mapped by name later.
"""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.models.layers import BuiltByFirstCall, Conv3x3, TorchInitConv2D, upsample_nearest_2x

LEAKY_RELU_SLOPE = 0.01
BOTTLENECK_CHANNELS = 256
CRP_STAGES = 4


@keras.saving.register_keras_serializable(package="tripled_tf")
class ChainedResidualPooling(BuiltByFirstCall, keras.layers.Layer):
    """RefineNet-lite chained residual pooling (FeatDepth ``CRPBlock``), no activation inside.

    t = x; repeated ``num_stages`` times: t = Conv1x1_{C -> C, no bias}(maxpool_{5x5, stride 1}(t));
    x = x + t. Returns x. The max-pool ignores out-of-image cells (PyTorch's padding 2 with -inf),
    which TF's "SAME" max pooling does exactly for stride 1 (symmetric padding of 2).

    Input and output ``[B, H, W, channels]``. Sublayers are named "1_pointwise" .. "<n>_pointwise"
    like FeatDepth's.
    """

    def __init__(self, channels: int = BOTTLENECK_CHANNELS, num_stages: int = CRP_STAGES, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.num_stages = int(num_stages)
        self.pointwise = [TorchInitConv2D(self.channels, 1, use_bias=False, name=f"{i + 1}_pointwise")
                          for i in range(self.num_stages)]

    def call(self, x):
        pooled = x
        for conv in self.pointwise:
            pooled = conv(tf.nn.max_pool2d(pooled, ksize=5, strides=1, padding="SAME"))
            x = x + pooled
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, num_stages=self.num_stages)
        return config


def _check_same_size(skip: tf.Tensor, upsampled: tf.Tensor, level: int) -> None:
    for axis in (1, 2):
        a, b = skip.shape[axis], upsampled.shape[axis]
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"DepthDecoder: level-{level} feature is {list(skip.shape)} but the upsampled "
                f"deeper stage is {list(upsampled.shape)}; the input image height and width must be "
                f"multiples of 32")


@keras.saving.register_keras_serializable(package="tripled_tf")
class DepthDecoder(BuiltByFirstCall, keras.Model):
    """FeatDepth RefineNet-lite depth decoder (docs/method.md 2.3).

    ``call(features, training=None)``:
      features: list of the 5 encoder levels ``[level1, .., level5]`` (level k: ``[B, H/2^k, W/2^k,
        num_ch_enc[k-1]]``); level 1 is ignored. In the main model level 5 is the depth half of the
        encoder's layer4.
      returns ``[sigma_0, sigma_1, sigma_2, sigma_3]``: sigmoid disparities ``[B, H/2^(s+1),
        W/2^(s+1), 1]`` in (0, 1), i.e. H/2, H/4, H/8, H/16 (sigma_0 is the finest, at half the
        input resolution). Level 5 must be at least 2x2 (input at least 64x64): the reflection
        padding of its 3x3 convs needs 2 pixels, as PyTorch's ReflectionPad2d does.

    Args:
      num_ch_enc: channels of the 5 encoder levels (levels 2..5 = indices 1..4 are used; checked
        against the features at call time).
      dropout: dropout probability on the level-4 and level-5 inputs, active only when training
        (0.5 in the reference; Keras' naming, as in ``keras.layers.MultiHeadAttention(dropout=...)``).
      name, dtype, trainable: as for ``keras.Model``.
    """

    output_stride = 2  # sigma_0 is at half the input resolution

    def __init__(self, num_ch_enc: Sequence[int], dropout: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        num_ch_enc = [int(c) for c in num_ch_enc]
        if len(num_ch_enc) != 5:
            raise ValueError(f"num_ch_enc must list the channels of 5 encoder levels, got {num_ch_enc}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout}")
        self.num_ch_enc = num_ch_enc
        self.dropout = float(dropout)
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout")

        # Index 0 is FeatDepth's stage "4" (deepest, fed by level 5), index 3 is stage "1" (level 2).
        stage_ids = (4, 3, 2, 1)
        width = BOTTLENECK_CHANNELS
        self.reduce = [TorchInitConv2D(2 * width if s == 4 else width, 1, use_bias=False,
                                       name=f"reduce{s}") for s in stage_ids]
        self.iconv = [Conv3x3(width, name=f"iconv{s}") for s in stage_ids]
        self.crp = [ChainedResidualPooling(width, CRP_STAGES, name=f"crp{s}") for s in stage_ids]
        self.merge = [Conv3x3(width, name=f"merge{s}") for s in stage_ids]
        self.disp = [Conv3x3(1, name=f"disp{s}") for s in stage_ids]

    def call(self, features, training=None):
        if not isinstance(features, (list, tuple)) or len(features) != 5:
            raise ValueError(f"DepthDecoder: expected a list of 5 encoder features [level1 .. level5], "
                             f"got {type(features).__name__} of length "
                             f"{len(features) if isinstance(features, (list, tuple)) else '?'}")
        levels = []
        for index, (feature, channels) in enumerate(zip(features, self.num_ch_enc)):
            levels.append(checks.as_float_tensor(feature, f"features[{index}] (level {index + 1})",
                                                 shape=[None, None, None, channels]))
        level5 = self.dropout_layer(levels[4], training=training)
        level4 = self.dropout_layer(levels[3], training=training)
        skips = [level5, level4, levels[2], levels[1]]

        x = None
        disparity = None
        disparities = []
        for stage, skip in enumerate(skips):
            y = self.reduce[stage](skip)
            if x is None:
                x = self.iconv[stage](y)
            else:
                _check_same_size(y, x, level=5 - stage)
                x = self.iconv[stage].of_concatenation([y, x, disparity])
            x = tf.nn.leaky_relu(x, alpha=LEAKY_RELU_SLOPE)
            x = self.crp[stage](x)
            x = tf.nn.leaky_relu(self.merge[stage](x), alpha=LEAKY_RELU_SLOPE)
            x = upsample_nearest_2x(x)
            disparity = tf.sigmoid(self.disp[stage](x))
            disparities.append(disparity)
        # Produced coarse to fine (sigma_3 first); return sigma_0 .. sigma_3.
        return disparities[::-1]

    def get_config(self):
        config = super().get_config()
        config.update(name=self.name, num_ch_enc=list(self.num_ch_enc),
                      dropout=self.dropout)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
