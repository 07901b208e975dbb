"""FeatDepth's feature extractor and its reconstruction decoder (docs/method.md 2.6).

The extractor is a ResNet (50 in the main model) that sees the raw, un-normalised frame in [0, 1]; its
level-1 features drive the feature-metric loss. Its decoder reconstructs the image from level 5 alone
(no skips), so the features must carry the image content.
"""
from __future__ import annotations

from typing import List

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.models.layers import BuiltByFirstCall, Conv3x3, ConvBlock, upsample_nearest_2x
from tripled_tf.models.resnet import ResNetEncoder

EXTRACTOR_DECODER_WIDTHS = (256, 128, 64, 32, 16)


@keras.saving.register_keras_serializable(package="tripled_tf")
class FeatureExtractor(ResNetEncoder):
    """ResNet feature extractor on raw images: :class:`ResNetEncoder` with the extractor's defaults.

    ``call(images, training=None)``: images ``[B, H, W, 3]`` float in [0, 1], fed WITHOUT the
    (x - 0.45) / 0.225 normalisation (the reference extractor's behaviour); returns the 5 levels
    ``[B, H/2^k, W/2^k, num_ch_enc[k-1]]``, k = 1..5 (RN50: 64, 256, 512, 1024, 2048 channels).

    Args:
      num_layers: 10, 18, 34, 50 (default) or 101.
      normalize_input: False (default, reference); True applies the depth encoder's normalisation.
      Other arguments as for :class:`ResNetEncoder`. Weights load with the same torchvision key map.
    """

    def __init__(self, num_layers: int = 50, normalize_input: bool = False, **kwargs):
        super().__init__(num_layers=num_layers, normalize_input=normalize_input, **kwargs)


@keras.saving.register_keras_serializable(package="tripled_tf")
class ExtractorDecoder(BuiltByFirstCall, keras.Model):
    """Reconstruction decoder of the extractor: level 5 only, no skips (FD ``decoder.py``).

    ``call(features, training=None)``:
      features: list of 5 extractor levels (only level 5, ``[B, H/32, W/32, C5]``, is used) or the
        level-5 tensor itself.
      returns ``[res_0, res_1, res_2, res_3]``: sigmoid RGB reconstructions ``[B, H/2^s, W/2^s, 3]``
        in (0, 1) at H, H/2, H/4, H/8.

    Computation: u5 = up2(ConvBlock(256)(level5)); x = ConvBlock(256)(u5); then for widths 128, 64,
    32, 16: x = ConvBlock(w)(up2(ConvBlock(w)(x))) and res = sigmoid(Conv3x3(3)(x)).

    Args: name, dtype, trainable as for ``keras.Model``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        widths = EXTRACTOR_DECODER_WIDTHS
        self.upconv_in = [ConvBlock(w, name=f"upconv{i}_in") for i, w in enumerate(widths)]
        self.upconv_out = [ConvBlock(w, name=f"upconv{i}_out") for i, w in enumerate(widths)]
        self.reconstruction = [Conv3x3(3, name=f"reconstruction{i}") for i in range(1, 5)]

    def call(self, features, training=None) -> List[tf.Tensor]:
        if isinstance(features, (list, tuple)):
            if len(features) != 5:
                raise ValueError(f"ExtractorDecoder: expected 5 encoder features [level1 .. level5], "
                                 f"got {len(features)}")
            features = features[4]
        x = checks.as_float_tensor(features, "features[4] (level 5)", rank=4)
        outputs = []
        for stage in range(5):
            x = self.upconv_out[stage](upsample_nearest_2x(self.upconv_in[stage](x)))
            if stage > 0:
                outputs.append(tf.sigmoid(self.reconstruction[stage - 1](x)))
        return outputs[::-1]

    def get_config(self):
        config = super().get_config()
        config.update(name=self.name)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
