"""Splitting the shared encoder's features into a geometry part and an appearance part (docs/method.md 2.2).

TripleDNet's disentanglement: on each flagged level the depth decoder gets one part of the channels and
the appearance decoder the other. The main model flags only level 5 (ResNet-50 layer4, 2048 channels)
and slices it in halves: channels [0, C/2) -> depth, [C/2, C) -> appearance.

Switches (all off in the main config): a 1x1 projection (C -> C/2, no bias) + BN + ELU instead of the
depth slice (``depth_split="conv1x1"``) or the appearance slice (``color_split="conv1x1"``; as in the
reference it projects flagged levels 1-4 and feeds the *full* level 5 to the appearance branch), and a
channel / pixel attention applied to flagged levels before the split (``attention="ca"`` / ``"pa"``;
the reference's "asca" is not implemented).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.models.layers import BatchNorm2D, BuiltByFirstCall, TorchInitConv2D
from tripled_tf.models.resnet import BN_EPSILON, BN_MOMENTUM

DEPTH_SPLITS = ("first_half", "conv1x1")
COLOR_SPLITS = ("second_half", "conv1x1")
ATTENTIONS = ("none", "ca", "pa")
MAIN_DISENTANGLE_LEVELS = (False, False, False, False, True)
# Squeeze ratio of the attention MLP (RCAN-style channel attention: C -> C/16 -> C).
ATTENTION_REDUCTION = 16


@keras.saving.register_keras_serializable(package="tripled_tf")
class ProjectionSplit(keras.layers.Layer):
    """1x1 conv (C -> C/2, no bias) -> BN -> ELU: the learnt alternative to slicing half the channels.

    Input ``[B, H, W, C]`` (C even), output ``[B, H, W, C/2]``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = None
        self.bn = BatchNorm2D(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % 2:
            raise ValueError(f"{self.name}: expected an even, known number of channels, got input shape "
                             f"{tuple(input_shape)}")
        self.conv = TorchInitConv2D(channels // 2, 1, use_bias=False, name="conv")
        self.conv.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (channels // 2,))

    def call(self, x, training=None):
        return tf.nn.elu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] // 2,)


@keras.saving.register_keras_serializable(package="tripled_tf")
class FeatureAttention(keras.layers.Layer):
    """Channel ("ca") or pixel ("pa") attention gate: ``x · sigmoid(conv1x1(relu(conv1x1(d))))``.

    ca: d = global average of x over H, W (one gate per channel); pa: d = x (a gate per pixel and
    channel). The MLP is 1x1 conv C -> C/16 (bias) -> ReLU -> 1x1 conv C/16 -> C (bias).
    Input and output ``[B, H, W, C]``.

    Args:
      mode: "ca" or "pa".
      reduction: channel squeeze ratio (16).
    """

    def __init__(self, mode: str = "ca", reduction: int = ATTENTION_REDUCTION, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("ca", "pa"):
            raise ValueError(f"mode must be 'ca' or 'pa', got {mode!r}")
        self.mode = mode
        self.reduction = int(reduction)
        self.squeeze = None
        self.excite = None

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the number of channels must be known, got {tuple(input_shape)}")
        hidden = max(1, channels // self.reduction)
        self.squeeze = TorchInitConv2D(hidden, 1, name="squeeze")
        self.excite = TorchInitConv2D(channels, 1, name="excite")
        descriptor_shape = ((input_shape[0], 1, 1, channels) if self.mode == "ca"
                            else tuple(input_shape))
        self.squeeze.build(descriptor_shape)
        self.excite.build(tuple(descriptor_shape[:-1]) + (hidden,))

    def call(self, x):
        descriptor = tf.reduce_mean(x, axis=[1, 2], keepdims=True) if self.mode == "ca" else x
        return x * tf.sigmoid(self.excite(tf.nn.relu(self.squeeze(descriptor))))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, reduction=self.reduction)
        return config


@keras.saving.register_keras_serializable(package="tripled_tf")
class FeatureSplit(BuiltByFirstCall, keras.layers.Layer):
    """Splits the 5 encoder levels into depth features and appearance features (docs/method.md 2.2).

    ``call(features, training=None)``:
      features: list of 5 levels ``[B, H/2^k, W/2^k, C_k]``, k = 1..5 (flagged levels need even C_k).
      returns ``(depth_features, appearance_features)``, two lists of 5 tensors. On a flagged level
      the depth entry is channels ``[0, C/2)`` (``first_half``) or a 1x1 projection to C/2; the
      appearance entry is channels ``[C/2, C)`` (``second_half``) or, with ``color_split="conv1x1"``,
      a 1x1 projection to C/2 on levels 1-4 and the full level on level 5. Unflagged levels are
      passed unchanged (the same tensor) to both lists. Main model (RN50): level 5 2048 -> 1024 + 1024.

    Args:
      disentangle_levels: 5 booleans, one per level 1..5 (default: only level 5).
      depth_split: "first_half" or "conv1x1".
      color_split: "second_half" or "conv1x1".
      attention: "none", "ca" or "pa": attention on flagged levels before the split.
      name, dtype, trainable: as for ``keras.layers.Layer``.
    """

    def __init__(self, disentangle_levels: Sequence[bool] = MAIN_DISENTANGLE_LEVELS,
                 depth_split: str = "first_half", color_split: str = "second_half",
                 attention: str = "none", **kwargs):
        super().__init__(**kwargs)
        levels = [bool(flag) for flag in disentangle_levels]
        if len(levels) != 5:
            raise ValueError(f"disentangle_levels must have 5 booleans (levels 1..5), got "
                             f"{list(disentangle_levels)}")
        if depth_split not in DEPTH_SPLITS:
            raise ValueError(f"depth_split must be one of {DEPTH_SPLITS}, got {depth_split!r}")
        if color_split not in COLOR_SPLITS:
            raise ValueError(f"color_split must be one of {COLOR_SPLITS}, got {color_split!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.disentangle_levels = levels
        self.depth_split = depth_split
        self.color_split = color_split
        self.attention = attention
        # Index i holds the sublayer for level i + 1, None where unused.
        self.attention_layers = [
            FeatureAttention(attention, name=f"attention{i + 1}") if flag and attention != "none"
            else None for i, flag in enumerate(levels)]
        self.depth_projections = [
            ProjectionSplit(name=f"depth_projection{i + 1}") if flag and depth_split == "conv1x1"
            else None for i, flag in enumerate(levels)]
        self.color_projections = [
            ProjectionSplit(name=f"color_projection{i + 1}")
            if flag and color_split == "conv1x1" and i < 4 else None for i, flag in enumerate(levels)]

    def call(self, features, training=None) -> Tuple[List[tf.Tensor], List[tf.Tensor]]:
        if not isinstance(features, (list, tuple)) or len(features) != 5:
            raise ValueError(f"FeatureSplit: expected a list of 5 encoder features [level1 .. level5], "
                             f"got {type(features).__name__} of length "
                             f"{len(features) if isinstance(features, (list, tuple)) else '?'}")
        depth_features, appearance_features = [], []
        for index, feature in enumerate(features):
            x = checks.as_float_tensor(feature, f"features[{index}] (level {index + 1})", rank=4)
            if not self.disentangle_levels[index]:
                depth_features.append(x)
                appearance_features.append(x)
                continue
            channels = x.shape[-1]
            if channels is None or channels % 2:
                raise ValueError(f"FeatureSplit: level {index + 1} is flagged for splitting and needs an "
                                 f"even number of channels, got shape {list(x.shape)}")
            if self.attention_layers[index] is not None:
                x = self.attention_layers[index](x)
            half = channels // 2
            if self.depth_split == "first_half":
                depth_features.append(x[..., :half])
            else:
                depth_features.append(self.depth_projections[index](x, training=training))
            if self.color_split == "second_half":
                appearance_features.append(x[..., half:])
            elif self.color_projections[index] is not None:
                appearance_features.append(self.color_projections[index](x, training=training))
            else:
                # Reference behaviour of color_split=conv1x1: the deepest level goes in unsplit.
                appearance_features.append(x)
        return depth_features, appearance_features

    def get_config(self):
        config = super().get_config()
        config.update(disentangle_levels=list(self.disentangle_levels), depth_split=self.depth_split,
                      color_split=self.color_split, attention=self.attention)
        return config
