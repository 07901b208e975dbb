"""TripleDNet's appearance (pretext) decoder with distillation skips (docs/method.md 2.4, TD ``ColorDecoder``).

It reconstructs the input image from the appearance half of the deepest encoder level. The depth
decoder's disparities are added to every channel of the matching stage (the "distillation skip
connection") and are NOT detached: the appearance loss reaches the depth decoder through these sums.
"""
from __future__ import annotations

from typing import List, Sequence

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.models.layers import BuiltByFirstCall, Conv3x3, ConvBlock, upsample_nearest_2x

APPEARANCE_WIDTHS = (256, 128, 64, 32, 16)


def resize_bilinear_to(x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Bilinearly resizes ``x`` [B, h, w, C] to the height and width of ``like`` [B, H, W, *].

    Half-pixel centres, no antialiasing (PyTorch ``interpolate(align_corners=False)``); identity when
    the sizes already match (always the case when the input H, W are multiples of 32).
    """
    if (x.shape[1] is not None and x.shape[1] == like.shape[1]
            and x.shape[2] is not None and x.shape[2] == like.shape[2]):
        return x
    resized = tf.image.resize(x, tf.shape(like)[1:3], method="bilinear", antialias=False)
    resized.set_shape([x.shape[0], like.shape[1], like.shape[2], x.shape[3]])
    return resized


def _describe_sequence(x) -> str:
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of length {len(x)}"
    return f"{type(x).__name__} of shape {list(getattr(x, 'shape', []))}"


@keras.saving.register_keras_serializable(package="tripled_tf")
class AppearanceDecoder(BuiltByFirstCall, keras.Model):
    """Appearance decoder: 5 up-conv stages (widths 256, 128, 64, 32, 16) with disparities added.

    ``call(appearance_features, disparities, training=None)``:
      appearance_features: list of 5 levels ``[B, H/2^k, W/2^k, C_k]`` from :class:`FeatureSplit`;
        level 5 (the appearance half, 1024 ch for RN50) is the input, levels 4..1 are used only where
        ``encoder_skips`` is on.
      disparities: ``[sigma_0, sigma_1, sigma_2, sigma_3]``, ``[B, H/2^(s+1), W/2^(s+1), 1]`` sigmoid
        disparities of the depth decoder. sigma_3 is added at H/16, sigma_2 at H/8, sigma_1 at H/4,
        sigma_0 at H/2, each (after a bilinear resize to the stage size) broadcast over channels and
        times ``skip_multiplier``, after the stage's second ConvBlock.
      returns ``[A_0, A_1, A_2, A_3]``: RGB reconstructions in (0, 1) at H, H/2, H/4, H/8
        (``[B, H/2^s, W/2^s, 3]``); only A_0 enters the reference loss.

    Args:
      encoder_skips: 4 booleans; skip i adds ``up2(ConvBlock(level (4 - i)))`` to the stage that
        produces H/2^(3 - i) (skip 0: level 4 into the H/8 stage, ..., skip 3: level 1 into H).
        Default all off (main model).
      skip_multiplier: factor on the added disparities (1).
      name, dtype, trainable: as for ``keras.Model``.

    Sublayers: ``upconv_in[i]`` / ``upconv_out[i]`` (ConvBlocks before / after the upsampling of
    stage i = 0..4, H/16 .. H), ``skip_conv[i]`` and ``side_output[j]`` (j = 0..3 for A_3 .. A_0).
    """

    def __init__(self, encoder_skips: Sequence[bool] = (False, False, False, False),
                 skip_multiplier: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        skips = [bool(flag) for flag in encoder_skips]
        if len(skips) != 4:
            raise ValueError(f"encoder_skips must have 4 booleans, got {list(encoder_skips)}")
        self.encoder_skips = skips
        self.skip_multiplier = float(skip_multiplier)
        widths = APPEARANCE_WIDTHS
        self.upconv_in = [ConvBlock(w, name=f"upconv{i}_in") for i, w in enumerate(widths)]
        self.upconv_out = [ConvBlock(w, name=f"upconv{i}_out") for i, w in enumerate(widths)]
        # Skip i feeds stage i + 1 (widths 128, 64, 32, 16).
        self.skip_conv = [ConvBlock(widths[i + 1], name=f"skip{i}") if flag else None
                          for i, flag in enumerate(skips)]
        # Side outputs of stages 1..4 (H/8, H/4, H/2, H).
        self.side_output = [Conv3x3(3, name=f"side_output{i}") for i in range(1, 5)]

    def call(self, appearance_features, disparities, training=None) -> List[tf.Tensor]:
        if not isinstance(appearance_features, (list, tuple)) or len(appearance_features) != 5:
            raise ValueError("AppearanceDecoder: expected appearance_features as a list of 5 levels "
                             f"[level1 .. level5], got {_describe_sequence(appearance_features)}")
        if not isinstance(disparities, (list, tuple)) or len(disparities) != 4:
            raise ValueError("AppearanceDecoder: expected disparities [sigma_0, sigma_1, sigma_2, "
                             f"sigma_3], got {_describe_sequence(disparities)}")
        sigmas = [checks.as_depth(d, f"disparities[{s}]") for s, d in enumerate(disparities)]
        x = checks.as_float_tensor(appearance_features[4], "appearance_features[4] (level 5)", rank=4)

        outputs = []
        for stage in range(5):
            u = upsample_nearest_2x(self.upconv_in[stage](x))
            if stage > 0 and self.skip_conv[stage - 1] is not None:
                level = 4 - stage  # list index of level (5 - stage)
                skip = checks.as_float_tensor(appearance_features[level],
                                              f"appearance_features[{level}] (level {level + 1})",
                                              rank=4)
                u = u + upsample_nearest_2x(self.skip_conv[stage - 1](skip))
            x = self.upconv_out[stage](u)
            if stage < 4:
                # Stage 0 (H/16) receives sigma_3, ..., stage 3 (H/2) receives sigma_0.
                x = x + self.skip_multiplier * tf.cast(resize_bilinear_to(sigmas[3 - stage], x), x.dtype)
            if stage > 0:
                # float32 out: under mixed precision the losses stay in float32.
                outputs.append(tf.cast(tf.sigmoid(self.side_output[stage - 1](x)), tf.float32))
        # Produced coarse to fine (A_3 first); return A_0 .. A_3.
        return outputs[::-1]

    def get_config(self):
        config = super().get_config()
        config.update(name=self.name, encoder_skips=list(self.encoder_skips),
                      skip_multiplier=self.skip_multiplier)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
