"""ResNet v1.5 encoders in the torchvision layout (ResNet-10/18/34/50/101), returning 5 feature levels.

Why hand-built: ``keras.applications`` has no ResNet-18/34 and its ResNet-50 is v1 (stride in the 1x1
conv, biased convs, Caffe preprocessing, BN eps 1e-3). The reference models start from torchvision /
SwAV ResNet weights, which only fit the torchvision v1.5 layout:

- stem: 7x7/2 conv (pad 3, no bias) -> BN -> ReLU (level 1), 3x3/2 max-pool (pad 1);
- BasicBlock (10/18/34): 3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv -> BN, + shortcut, ReLU;
- Bottleneck (50/101): 1x1 conv -> BN -> ReLU -> 3x3 conv (stride s) -> BN -> ReLU -> 1x1 conv (4x)
  -> BN, + shortcut, ReLU (v1.5: the stride sits in the 3x3 conv);
- shortcut: identity, or 1x1 conv with stride s (no bias) + BN when the shape changes.

Every padded op pads symmetrically, as PyTorch does. Strided ops pad explicitly, then run "valid": TF's
"same" pads (0, 1) for a stride-2 op on an even size where PyTorch pads (1, 1), which would shift every
ported feature by a pixel. Stride-1 3x3 convolutions use "same", which is exactly (1, 1) there and
saves a padded copy (and its gradient's slice) per convolution.

BatchNorm is :class:`~tripled_tf.models.layers.BatchNorm2D`: Keras' layer on TensorFlow's fused kernel,
with PyTorch's running-variance update (unbiased batch variance).

Weights are converted from torchvision checkpoints by name: every layer is named exactly like its
torchvision module ("conv1", "bn1", "layer2.0.conv2", "layer2.0.downsample.1", ...) and
:func:`torchvision_key_map` gives the state_dict key -> Keras variable correspondence.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.models.conv import Conv2D
from tripled_tf.models.layers import BatchNorm2D, BuiltByFirstCall

# Input normalisation of the depth and pose encoders (Monodepth2 / FeatDepth): (x - 0.45) / 0.225.
IMAGE_MEAN = 0.45
IMAGE_STD = 0.225

# PyTorch BatchNorm2d defaults: eps 1e-5, running = 0.9 · running + 0.1 · batch (torch momentum 0.1).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# num_layers -> (block type, blocks per stage layer1..layer4), as in torchvision. ResNet-10 (one
# BasicBlock per stage) is not a torchvision model: the compact backbone of edge detectors (e.g.
# NVIDIA's for Jetson), 4.9 M parameters; no ImageNet weights are published for it (random init, or
# one's own conversion), and the test suite trains it (half the layers of ResNet-18 to trace and run).
RESNET_SPECS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


def _resnet_conv_initializer() -> keras.initializers.Initializer:
    # torchvision's ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e.
    # N(0, 2 / fan_out) with fan_out = k_h · k_w · out_channels. Only matters without ported weights.
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def _conv(filters: int, kernel_size: int, strides: int, name: str,
          padding: str = "valid") -> Conv2D:
    return Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                  kernel_initializer=_resnet_conv_initializer(), name=name)


def _conv3x3(filters: int, strides: int, name: str) -> Conv2D:
    """3x3 conv with PyTorch's padding 1. At stride 1 that is TF's "same" (symmetric), done inside the
    convolution; at stride 2 the caller pads explicitly (see the module docstring)."""
    return _conv(filters, 3, strides, name, padding="same" if strides == 1 else "valid")


def _pad_for(conv: Conv2D, x: tf.Tensor) -> tf.Tensor:
    """Pads ``x`` by one pixel unless ``conv`` pads itself."""
    return x if conv.padding == "same" else _zero_pad(x, 1)


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    return BatchNorm2D(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _zero_pad(x: tf.Tensor, pad: int) -> tf.Tensor:
    return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])


def max_pool_3x3_stride2(x) -> tf.Tensor:
    """torchvision's stem max-pool: 3x3 window, stride 2, padding 1 on every side.

    ``x``: ``[B, H, W, C]``, must be >= 0 (post-ReLU), which makes zero padding equal to PyTorch's
    -inf padding. Returns ``[B, floor((H - 1) / 2) + 1, floor((W - 1) / 2) + 1, C]`` with
    ``out[i, j] = max(x[2i-1 .. 2i+1, 2j-1 .. 2j+1])`` over the rows/columns that exist.
    """
    return tf.nn.max_pool2d(_zero_pad(tf.convert_to_tensor(x), 1), ksize=3, strides=2,
                            padding="VALID")


class _ResidualBlock(BuiltByFirstCall, keras.layers.Layer):
    """What BasicBlock and Bottleneck share: arguments, the projection shortcut, the config."""

    expansion = 1

    def __init__(self, planes: int, stride: int = 1, downsample: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.planes = int(planes)
        self.stride = int(stride)
        self.downsample = bool(downsample)
        self.torchvision_layers = []
        if self.downsample:
            prefix = self.name
            self.downsample_conv = _conv(self.planes * self.expansion, 1, self.stride,
                                         f"{prefix}.downsample.0")
            self.downsample_bn = _batch_norm(f"{prefix}.downsample.1")

    def _register(self, *layers) -> None:
        """Records the sublayers in torchvision state_dict order (the projection comes last)."""
        self.torchvision_layers = list(layers)
        if self.downsample:
            self.torchvision_layers += [self.downsample_conv, self.downsample_bn]

    def _shortcut(self, x, training):
        if self.downsample:
            return self.downsample_bn(self.downsample_conv(x), training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(planes=self.planes, stride=self.stride, downsample=self.downsample)
        return config


@keras.saving.register_keras_serializable(package="tripled_tf")
class BasicBlock(_ResidualBlock):
    """torchvision ``BasicBlock`` (ResNet-10/18/34). ``[B, H, W, C_in]`` -> ``[B, H/s, W/s, planes]``.

    Args:
      planes: output channels.
      stride: 1 or 2, applied by the first 3x3 conv and the projection shortcut.
      downsample: use the 1x1 conv + BN projection shortcut (needed when stride != 1 or C_in != planes).
      name: the torchvision module path, e.g. "layer2.0"; sublayers are named "<name>.conv1", ... .
    """

    expansion = 1

    def __init__(self, planes: int, stride: int = 1, downsample: bool = False, **kwargs):
        super().__init__(planes, stride, downsample, **kwargs)
        prefix = self.name
        self.conv1 = _conv3x3(self.planes, self.stride, f"{prefix}.conv1")
        self.bn1 = _batch_norm(f"{prefix}.bn1")
        self.conv2 = _conv3x3(self.planes, 1, f"{prefix}.conv2")
        self.bn2 = _batch_norm(f"{prefix}.bn2")
        self._register(self.conv1, self.bn1, self.conv2, self.bn2)

    def call(self, x, training=None):
        out = tf.nn.relu(self.bn1(self.conv1(_pad_for(self.conv1, x)), training=training))
        out = self.bn2(self.conv2(out), training=training)
        return tf.nn.relu(out + self._shortcut(x, training))


@keras.saving.register_keras_serializable(package="tripled_tf")
class Bottleneck(_ResidualBlock):
    """torchvision ``Bottleneck`` v1.5 (ResNet-50/101).

    ``[B, H, W, C_in]`` -> ``[B, H/s, W/s, 4 · planes]``; the stride is in the 3x3 conv (v1.5).
    Arguments as :class:`BasicBlock`; sublayers "<name>.conv1/bn1/conv2/bn2/conv3/bn3" and
    "<name>.downsample.0/1".
    """

    expansion = 4

    def __init__(self, planes: int, stride: int = 1, downsample: bool = False, **kwargs):
        super().__init__(planes, stride, downsample, **kwargs)
        prefix = self.name
        self.conv1 = _conv(self.planes, 1, 1, f"{prefix}.conv1")
        self.bn1 = _batch_norm(f"{prefix}.bn1")
        self.conv2 = _conv3x3(self.planes, self.stride, f"{prefix}.conv2")
        self.bn2 = _batch_norm(f"{prefix}.bn2")
        self.conv3 = _conv(self.planes * self.expansion, 1, 1, f"{prefix}.conv3")
        self.bn3 = _batch_norm(f"{prefix}.bn3")
        self._register(self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3)

    def call(self, x, training=None):
        out = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        out = tf.nn.relu(self.bn2(self.conv2(_pad_for(self.conv2, out)), training=training))
        out = self.bn3(self.conv3(out), training=training)
        return tf.nn.relu(out + self._shortcut(x, training))


@keras.saving.register_keras_serializable(package="tripled_tf")
class ResNetEncoder(BuiltByFirstCall, keras.Model):
    """torchvision-layout ResNet v1.5 feature encoder returning 5 feature levels.

    ``call(images, training=None)``:
      images: ``[B, H, W, 3 · num_input_images]`` float in [0, 1] (any B, H, W; H, W multiples of 32
        give exact halvings). Several frames are concatenated on channels in temporal order.
      returns ``[level1, level2, level3, level4, level5]``:
        level1 = relu(bn1(conv1(x))) ``[B, H/2, W/2, 64]``,
        level2 = layer1(maxpool(level1)) ``[B, H/4, W/4, num_ch_enc[1]]``,
        level3..5 = layer2..layer4 at H/8, H/16, H/32.

    Args:
      num_layers: 10, 18, 34, 50 or 101.
      num_input_images: frames concatenated on channels; conv1 takes 3 · num_input_images channels.
        When porting 3-channel pretrained weights to n > 1 frames, the converter must repeat conv1's
        kernel n times along the input channels and divide it by n (Monodepth2 / FeatDepth pose
        encoder); that is not done here.
      normalize_input: apply (x - 0.45) / 0.225 inside (depth and pose encoders); False feeds x in
        [0, 1] unchanged (FeatDepth's feature extractor).
      name, dtype, trainable: as for ``keras.Model``.

    Attributes:
      num_ch_enc: channels of the 5 levels, [64, 64, 128, 256, 512] (10/18/34) or
        [64, 256, 512, 1024, 2048] (50/101).

    Weights: layers carry their torchvision module names; see :func:`torchvision_key_map`. Kernels are
    Keras HWIO ``[k_h, k_w, in, out]`` while torch stores OIHW ``[out, in, k_h, k_w]``: a converter
    transposes torch weights with ``(2, 3, 1, 0)``. BatchNorm weight/bias/running_mean/running_var map
    to gamma/beta/moving_mean/moving_variance.
    """

    def __init__(self, num_layers: int = 18, num_input_images: int = 1, normalize_input: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if num_layers not in RESNET_SPECS:
            raise ValueError(f"num_layers must be one of {sorted(RESNET_SPECS)}, got {num_layers}")
        if int(num_input_images) != num_input_images or num_input_images < 1:
            raise ValueError(f"num_input_images must be a positive integer, got {num_input_images}")
        self.num_layers = int(num_layers)
        self.num_input_images = int(num_input_images)
        self.normalize_input = bool(normalize_input)
        self.input_channels = 3 * self.num_input_images

        block_type, blocks_per_stage = RESNET_SPECS[self.num_layers]
        block_class = BasicBlock if block_type == "basic" else Bottleneck
        self.num_ch_enc = [64] + [width * block_class.expansion for width in STAGE_WIDTHS]

        self.conv1 = _conv(64, 7, 2, "conv1")
        self.bn1 = _batch_norm("bn1")
        self.stages: List[List[keras.layers.Layer]] = []
        in_channels = 64
        for stage_index, (width, num_blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage)):
            stage_stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                stride = stage_stride if block_index == 0 else 1
                out_channels = width * block_class.expansion
                blocks.append(block_class(
                    width, stride=stride,
                    downsample=(stride != 1 or in_channels != out_channels),
                    name=f"layer{stage_index + 1}.{block_index}"))
                in_channels = out_channels
            self.stages.append(blocks)

    def call(self, images, training=None, num_levels: int = 5):
        """The first ``num_levels`` levels (default all 5); fewer stop the network early, e.g. the
        feature-metric loss needs only level 1 of the source frames."""
        if not 1 <= int(num_levels) <= 5:
            raise ValueError(f"num_levels must be 1..5, got {num_levels}")
        x = checks.as_images(images, "images", channels=self.input_channels)
        if self.normalize_input:
            x = (x - IMAGE_MEAN) / IMAGE_STD
        x = tf.nn.relu(self.bn1(self.conv1(_zero_pad(x, 3)), training=training))
        features = [x]
        if num_levels == 1:
            return features
        x = max_pool_3x3_stride2(x)
        for blocks in self.stages[:int(num_levels) - 1]:
            for block in blocks:
                x = block(x, training=training)
            features.append(x)
        return features

    def torchvision_layers(self) -> Iterator[keras.layers.Layer]:
        """Yields every conv / BN layer in torchvision state_dict order; names are torch module paths."""
        yield self.conv1
        yield self.bn1
        for blocks in self.stages:
            for block in blocks:
                yield from block.torchvision_layers

    def get_config(self):
        config = super().get_config()
        config.update(name=self.name, num_layers=self.num_layers,
                      num_input_images=self.num_input_images, normalize_input=self.normalize_input)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def torchvision_key_map(encoder: ResNetEncoder) -> Dict[str, keras.Variable]:
    """Maps every torchvision ResNet state_dict key (without fc, without num_batches_tracked) to the
    Keras variable of ``encoder`` it corresponds to.

    Keys: "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
    "layer{1-4}.{i}.conv{1-3}.weight", "layer{1-4}.{i}.bn{1-3}.{weight,bias,running_mean,running_var}",
    "layer{1-4}.0.downsample.0.weight", "layer{1-4}.0.downsample.1.{...}". Layout differences are the
    converter's job: conv kernels torch OIHW -> Keras HWIO (transpose (2, 3, 1, 0)); BN vectors as is.
    The same map serves SwAV / MoCo / SimCLR checkpoints once their prefixes ("module.", heads) are
    stripped. An unbuilt encoder is built first by a call on a 64x64 zero image.

    Returns:
      dict key -> keras.Variable; 60 entries for ResNet-10, 100 for 18, 180 for 34, 265 for 50, 520 for 101.
    """
    if not isinstance(encoder, ResNetEncoder):
        raise ValueError(f"expected a ResNetEncoder, got {type(encoder).__name__}")
    if not encoder.built or not encoder.weights:
        encoder(tf.zeros([1, 64, 64, encoder.input_channels]), training=False)
    key_map: Dict[str, keras.Variable] = {}
    for layer in encoder.torchvision_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            entries = {"weight": layer.gamma, "bias": layer.beta,
                       "running_mean": layer.moving_mean, "running_var": layer.moving_variance}
        else:
            entries = {"weight": layer.kernel}
        for suffix, variable in entries.items():
            key = f"{layer.name}.{suffix}"
            if key in key_map:
                raise ValueError(f"duplicate torchvision key {key}: layer names must be unique")
            key_map[key] = variable
    return key_map
