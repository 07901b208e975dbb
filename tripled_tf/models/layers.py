"""Small layers shared by the decoders (depth, appearance, extractor and pose decoders).

All decoder convolutions are initialised like PyTorch's ``nn.Conv2d`` default (``reset_parameters``):
kernel ~ U(±1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)) and bias ~ U(±1/sqrt(fan_in)), with
fan_in = k_h · k_w · in_channels. The reference decoders are trained from that initialisation, so
using Keras' Glorot / zero defaults would change the starting point of training.

Every layer here lowers to GPU-delegate-friendly TFLite ops: reflection padding to MIRROR_PAD (REFLECT
mode), nearest upsampling to a single RESIZE_NEAREST_NEIGHBOR, ELU to ELU.
"""
from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

from tripled_tf.models.conv import Conv2D

PADDING_MODES = ("reflect", "zero")


class BuiltByFirstCall:
    """Mixin of the layers and networks made of other layers (and no variable of their own): each
    sub-layer creates its variables when the first call reaches it.

    Without a ``build`` method Keras 3 first traces the whole ``call`` symbolically only to build the
    sub-layers, then runs it: half of a network's build time (TripleDNet with ResNet-18s at 64x96:
    2.96 -> 1.57 s of CPU, the baseline 1.91 -> 0.66 s), paid by every training run, checkpoint load
    and export. The variables, their initial values (seeded) and their order are the same either way.
    """

    def build(self, input_shape):
        del input_shape  # each sub-layer builds from the tensor it receives


def torch_default_kernel_initializer() -> keras.initializers.Initializer:
    """Kernel initialiser equal to PyTorch's conv default: U(-1/sqrt(fan_in), +1/sqrt(fan_in)).

    VarianceScaling(scale, fan_in, uniform) draws from U(±sqrt(3 · scale / fan_in)); scale = 1/3 gives
    the PyTorch bound. fan_in = k_h · k_w · in_channels for a Keras HWIO kernel.
    """
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_default_bias_initializer(fan_in: int) -> keras.initializers.Initializer:
    """Bias initialiser equal to PyTorch's conv default: U(-1/sqrt(fan_in), +1/sqrt(fan_in)).

    Needs the kernel's fan_in (k_h · k_w · in_channels), which is only known when the layer is built.
    """
    if fan_in <= 0:
        raise ValueError(f"fan_in must be positive, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(minval=-bound, maxval=bound)


@keras.saving.register_keras_serializable(package="tripled_tf")
class TorchInitConv2D(Conv2D):
    """``keras.layers.Conv2D`` initialised like ``torch.nn.Conv2d`` (see the module docstring).

    Use for every decoder convolution. Padding defaults to "valid": pad explicitly beforehand (as
    :class:`Conv3x3` does) because TF's "same" pads asymmetrically for stride 2.

    Input ``[B, H, W, C_in]``, output ``[B, H', W', filters]``. Takes the arguments of Conv2D except the
    initialisers, which are fixed.
    """

    def __init__(self, filters: int, kernel_size=1, strides=1, padding: str = "valid",
                 use_bias: bool = True, **kwargs):
        kwargs.pop("kernel_initializer", None)
        kwargs.pop("bias_initializer", None)
        super().__init__(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                         kernel_initializer=torch_default_kernel_initializer(), **kwargs)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"{self.name}: the number of input channels must be known, got input "
                             f"shape {tuple(input_shape)}")
        # The bias bound depends on fan_in, unknown until now.
        fan_in = int(in_channels) * int(math.prod(self.kernel_size))
        self.bias_initializer = torch_default_bias_initializer(fan_in)
        super().build(input_shape)

    def get_config(self):
        config = super().get_config()
        config.pop("kernel_initializer", None)
        config.pop("bias_initializer", None)
        return config


@keras.saving.register_keras_serializable(package="tripled_tf")
class BatchNorm2D(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` over the channels of ``[B, H, W, C]`` maps that trains
    like ``torch.nn.BatchNorm2d`` and runs TensorFlow's fused kernel.

    In training it normalises with the batch's biased variance (as Keras and PyTorch do) but moves
    ``moving_variance`` towards the *unbiased* (n / (n - 1)) batch variance, as PyTorch's
    ``running_var`` does, so statistics learnt here and in the reference agree. The fused op
    (FusedBatchNormV3: one op forward, one backward, oneDNN / cuDNN kernels) replaces Keras' chain of
    moments + elementwise ops and their gradients (ResNet-18 encoder forward + backward at 640x192,
    batch 4: 1.33 -> 1.28 s on 2 CPU cores).

    Anything else (inference, frozen layers, masks, synchronised statistics across replicas, other
    ranks or axes) is Keras' own implementation. Arguments and weights are those of
    ``BatchNormalization`` (gamma, beta, moving_mean, moving_variance).
    """

    def call(self, inputs, training=None, mask=None):
        if (not (training and self.trainable) or mask is not None or self.synchronized
                or self.renorm or len(inputs.shape) != 4 or self.axis not in (-1, 3)
                or not self.scale or not self.center or keras.backend.backend() != "tensorflow"):
            return super().call(inputs, training=training, mask=mask)
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        empty = tf.constant([], tf.float32)
        outputs, batch_mean, batch_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32),
            mean=empty, variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True)
        # batch_variance is already Bessel-corrected (the op's running-statistics output).
        self.moving_mean.assign(self.moving_mean * self.momentum
                                + batch_mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + batch_variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


_REFLECT_BY_CONCATENATION = False


@contextlib.contextmanager
def reflect_padding_by_concatenation():
    """While active, reflection padding is traced as slices + concatenations instead of MirrorPad.

    The two are equal (tests/test_layers.py), but TFLite's MIRROR_PAD is a slow reference kernel
    that XNNPACK does not take, so every reflection pad splits the CPU graph and costs 12 ms on a
    48x160x256 tensor, against 0.7 ms for STRIDED_SLICE + CONCATENATION (both also GPU-delegate
    ops). Training keeps MirrorPad, whose gradient is cheaper in TensorFlow. Used by the exporter
    around the tracing of its signatures (tripled_tf/serving.py).
    """
    global _REFLECT_BY_CONCATENATION
    previous, _REFLECT_BY_CONCATENATION = _REFLECT_BY_CONCATENATION, True
    try:
        yield
    finally:
        _REFLECT_BY_CONCATENATION = previous


_CONVOLUTIONS_OVER_PARTS = False


@contextlib.contextmanager
def convolutions_over_parts():
    """While active, :meth:`Conv3x3.of_concatenation` convolves each part separately and sums, instead
    of concatenating first (see there: int8 scales, one XNNPACK partition). Training keeps the single
    convolution (one kernel, faster). Used by the exporter (:func:`edge_lowerings`)."""
    global _CONVOLUTIONS_OVER_PARTS
    previous, _CONVOLUTIONS_OVER_PARTS = _CONVOLUTIONS_OVER_PARTS, True
    try:
        yield
    finally:
        _CONVOLUTIONS_OVER_PARTS = previous


def reflect_pad_by_concatenation(x: tf.Tensor, pad: int) -> tf.Tensor:
    """``tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], "REFLECT")`` built from static slices
    (TFLite STRIDED_SLICE with constant bounds) and concatenations. ``x``: ``[B, H, W, C]``, H, W > pad."""
    for axis in (1, 2):
        def take(start, stop):
            index = [slice(None)] * 4
            index[axis] = slice(start, stop)
            return x[tuple(index)]
        before = [take(i, i + 1) for i in range(pad, 0, -1)]        # rows pad .. 1
        after = [take(-1 - i, -i) for i in range(1, pad + 1)]       # rows -2 .. -1-pad
        x = tf.concat(before + [x] + after, axis=axis)
    return x


def _pad_spatial(x: tf.Tensor, pad: int, mode: str) -> tf.Tensor:
    if mode == "reflect" and _REFLECT_BY_CONCATENATION:
        return reflect_pad_by_concatenation(x, pad)
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    return tf.pad(x, paddings, mode="REFLECT" if mode == "reflect" else "CONSTANT")


@keras.saving.register_keras_serializable(package="tripled_tf")
class Conv3x3(BuiltByFirstCall, keras.layers.Layer):
    """Pad by 1 pixel on every side, then a 3x3 stride-1 convolution (bias by default).

    ``padding_mode="reflect"`` (default, the decoders' choice) uses ``tf.pad(mode="REFLECT")``, which
    lowers to TFLite MIRROR_PAD (supported by the GPU delegate); ``"zero"`` pads with zeros (pose
    decoder, pretext heads).

    Input ``[B, H, W, C_in]`` (H, W >= 2 for reflection), output ``[B, H, W, filters]``.
    The inner convolution is the sublayer ``conv`` (PyTorch module path ``<name>.conv``).
    """

    def __init__(self, filters: int, padding_mode: str = "reflect", use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.filters = int(filters)
        self.padding_mode = padding_mode
        self.use_bias = bool(use_bias)
        # Zero padding by one pixel at stride 1 is exactly TF's "same" (symmetric for odd kernels):
        # the convolution pads internally, which saves a padded copy forward and its slice backward.
        padding = "same" if padding_mode == "zero" else "valid"
        self.conv = TorchInitConv2D(self.filters, 3, padding=padding, use_bias=self.use_bias,
                                    name="conv")

    def call(self, x):
        if self.padding_mode == "zero":
            return self.conv(x)
        return self.conv(_pad_spatial(x, 1, self.padding_mode))

    def of_concatenation(self, parts):
        """``self(tf.concat(parts, axis=-1))``: the convolution of ``parts`` (``[B, H, W, C_i]`` each)
        stacked along channels.

        Inside :func:`convolutions_over_parts` (export), one convolution per part with the kernel's
        input-channel slice, summed, plus the bias: the same sum in another order (float rounding
        only). Why: int8 TFLite gives a CONCATENATION one scale for all its inputs and propagates it
        back to their producers; the decoder's concatenation of [skip, upsampled features, sigmoid]
        gave the features the skip's 3-4x wider scale, and the LEAKY_RELU before them (slope 0.01)
        then needs an output multiplier below XNNPACK's 1/256, so XNNPACK left it to a reference
        kernel and split the graph there (4 partitions, one per decoder stage). Per part, each
        tensor keeps the scale of its own range.
        """
        if not _CONVOLUTIONS_OVER_PARTS or not self.built:
            return self(tf.concat(parts, axis=-1))
        kernel = tf.convert_to_tensor(self.conv.kernel)
        total, start = None, 0
        for part in parts:
            channels = int(part.shape[-1])
            if self.padding_mode == "zero":
                padded, padding = part, "SAME"
            else:
                padded, padding = _pad_spatial(part, 1, self.padding_mode), "VALID"
            term = tf.nn.conv2d(padded, tf.cast(kernel[:, :, start:start + channels, :], part.dtype),
                                strides=1, padding=padding)
            total = term if total is None else total + term
            start += channels
        if start != kernel.shape[2]:
            raise ValueError(f"{self.name}: the parts have {start} channels, the kernel takes "
                             f"{kernel.shape[2]}")
        if self.use_bias:
            total = tf.nn.bias_add(total, tf.cast(self.conv.bias, total.dtype))
        return total

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, padding_mode=self.padding_mode, use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="tripled_tf")
class ConvBlock(BuiltByFirstCall, keras.layers.Layer):
    """:class:`Conv3x3` (reflection padding, bias) followed by ELU (alpha = 1).

    Input ``[B, H, W, C_in]``, output ``[B, H, W, filters]``.
    """

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = Conv3x3(self.filters, name="conv")

    def call(self, x):
        return tf.nn.elu(self.conv(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config


_UPSAMPLE_BY_DEPTH_TO_SPACE = False


@contextlib.contextmanager
def upsampling_by_depth_to_space():
    """While active, nearest x2 upsampling is traced as four channel copies + DEPTH_TO_SPACE.

    ``depth_to_space(concat([x, x, x, x], channels), 2)[b, 2i + a, 2j + c, k]`` is channel
    ``(2a + c) C + k`` of the copies at (i, j), i.e. ``x[b, i, j, k]``: the nearest x2 upsampling,
    bit for bit (tests/test_layers.py). TFLite's RESIZE_NEAREST_NEIGHBOR is not an XNNPACK operator
    for int8, so each of the decoder's four upsamplings splits the CPU graph into another XNNPACK
    partition with a reference kernel in between; CONCATENATION and DEPTH_TO_SPACE are XNNPACK
    operators (float and int8) and GPU-backend operators, all 4-D (Keras' UpSampling2D lowers to 5-D
    RESHAPE / TILE, which the GPU backend refuses). Training keeps ``tf.image.resize``, whose gradient
    is cheaper. Used by the exporter around the tracing of its signatures (tripled_tf/serving.py).
    """
    global _UPSAMPLE_BY_DEPTH_TO_SPACE
    previous, _UPSAMPLE_BY_DEPTH_TO_SPACE = _UPSAMPLE_BY_DEPTH_TO_SPACE, True
    try:
        yield
    finally:
        _UPSAMPLE_BY_DEPTH_TO_SPACE = previous


def upsample_nearest_2x(x) -> tf.Tensor:
    """Nearest-neighbour x2 upsampling: ``out[b, 2i + a, 2j + c] = x[b, i, j]`` for a, c in {0, 1}.

    ``x``: ``[B, H, W, C]`` (H, W may be dynamic) -> ``[B, 2H, 2W, C]``. Uses ``tf.image.resize``
    (nearest) on the dynamic shape, which lowers to one TFLite RESIZE_NEAREST_NEIGHBOR, whereas
    ``keras.layers.UpSampling2D`` lowers to 5-D RESHAPE/TILE that GPU delegates reject; inside
    :func:`upsampling_by_depth_to_space` (export), CONCATENATION + DEPTH_TO_SPACE instead.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(f"upsample_nearest_2x: expected [B, H, W, C], got shape {list(x.shape)}")
    if _UPSAMPLE_BY_DEPTH_TO_SPACE:
        return tf.nn.depth_to_space(tf.concat([x, x, x, x], axis=-1), 2)
    size = tf.shape(x)[1:3] * 2
    y = tf.image.resize(x, size, method="nearest")
    # The resize to a dynamic size forgets the static H, W; restore what is known.
    y.set_shape([x.shape[0], None if x.shape[1] is None else 2 * x.shape[1],
                 None if x.shape[2] is None else 2 * x.shape[2], x.shape[3]])
    return y


@keras.saving.register_keras_serializable(package="tripled_tf")
class Upsample2x(keras.layers.Layer):
    """Layer form of :func:`upsample_nearest_2x`: ``[B, H, W, C]`` -> ``[B, 2H, 2W, C]``."""

    def call(self, x):
        return upsample_nearest_2x(x)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


@contextlib.contextmanager
def edge_lowerings():
    """The exporter's lowerings, all at once, while its signatures are traced: reflection padding
    by slices, nearest upsampling by DEPTH_TO_SPACE and convolutions over concatenation parts (each
    computes what training computes; XNNPACK and the GPU backend take the whole graph)."""
    with reflect_padding_by_concatenation(), upsampling_by_depth_to_space(), convolutions_over_parts():
        yield

