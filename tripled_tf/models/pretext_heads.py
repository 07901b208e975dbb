"""Pretext heads on the predicted disparity: "distillation via back-propagation" (docs/method.md 2.7).

A tiny conv head P reads the full-resolution disparity sigma_0 (not detached) and predicts image
appearance: D2G predicts gray (L / 100), DG2C predicts the Lab chroma ab_n from disparity + L_n, D2C
predicts ab_n from disparity alone. The head loss therefore trains the depth decoder to carry
appearance-consistent structure. M-variants multiply the head input by the erase mask.
"""
from __future__ import annotations

from typing import Optional, Tuple

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.geometry import disp_to_depth
from tripled_tf.models.layers import BatchNorm2D, BuiltByFirstCall, Conv3x3, TorchInitConv2D
from tripled_tf.models.resnet import BN_EPSILON, BN_MOMENTUM

PRETEXT_TASKS = ("d2g", "dg2c", "d2c")
HEAD_WIDTH = 32


@keras.saving.register_keras_serializable(package="tripled_tf")
class PretextHead(BuiltByFirstCall, keras.Model):
    """Conv3x3 (zero pad, no bias) -> BN -> ReLU -> Conv3x3 (no bias) -> BN -> [+ x] -> ReLU -> Conv1x1.

    ``call(x, training=None)``: x ``[B, H, W, C_in]`` -> ``[B, H, W, c_out]``, linear (no activation).
    With ``residual=True`` the input is added before the second ReLU; a 1-channel input is broadcast
    over the 32 channels (the reference D2G head does exactly that), otherwise C_in must be 32.

    Args:
      c_out: output channels (1 for gray, 2 for ab).
      residual: add the input before the second ReLU (D2G without normals).
      name, dtype, trainable: as for ``keras.Model``.
    """

    def __init__(self, c_out: int, residual: bool = False, **kwargs):
        super().__init__(**kwargs)
        if int(c_out) < 1:
            raise ValueError(f"c_out must be a positive integer, got {c_out}")
        self.c_out = int(c_out)
        self.residual = bool(residual)
        self.conv1 = Conv3x3(HEAD_WIDTH, padding_mode="zero", use_bias=False, name="conv1")
        self.bn1 = BatchNorm2D(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn1")
        self.conv2 = Conv3x3(HEAD_WIDTH, padding_mode="zero", use_bias=False, name="conv2")
        self.bn2 = BatchNorm2D(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn2")
        self.output_conv = TorchInitConv2D(self.c_out, 1, use_bias=True, name="output_conv")

    def call(self, x, training=None):
        x = checks.as_float_tensor(x, "x", rank=4)
        if self.residual and x.shape[-1] not in (None, 1, HEAD_WIDTH):
            raise ValueError(f"PretextHead(residual=True): expected [B, H, W, 1] or [B, H, W, "
                             f"{HEAD_WIDTH}] input, got shape {list(x.shape)}")
        y = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        if self.residual:
            y = y + x
        return self.output_conv(tf.nn.relu(y))

    def get_config(self):
        config = super().get_config()
        config.update(name=self.name, c_out=self.c_out, residual=self.residual)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _gradient_1d(x: tf.Tensor, axis: int) -> tf.Tensor:
    """d x / d (pixel index) along ``axis``: central inside, one-sided at the two borders."""
    n = x.shape[axis]
    if n is not None and n < 2:
        raise ValueError(f"surface_normals: need at least 2 pixels along axis {axis}, got shape "
                         f"{list(x.shape)}")
    first = tf.gather(x, [1], axis=axis) - tf.gather(x, [0], axis=axis)
    size = tf.shape(x)[axis]
    last = tf.gather(x, [size - 1], axis=axis) - tf.gather(x, [size - 2], axis=axis)
    forward = tf.gather(x, tf.range(2, size), axis=axis)
    backward = tf.gather(x, tf.range(0, size - 2), axis=axis)
    return tf.concat([first, 0.5 * (forward - backward), last], axis=axis)


def surface_normals(depth) -> tf.Tensor:
    """Image-space surface normals of a depth map, mapped to [0, 1] (the heads' ``use_normal`` input).

    Derivatives are taken per pixel step (central differences, one-sided at the borders);
    n = normalise(-dD/dx, -dD/dy, 1) and the result is (n + 1) / 2. A fronto-parallel plane gives
    (0.5, 0.5, 1); D = a·x + c (x = column index) gives ((1 - a / sqrt(1 + a²)) / 2, 0.5,
    (1 + 1 / sqrt(1 + a²)) / 2).

    Args:
      depth: [B, H, W, 1] (metres, or any map; H, W >= 2).

    Returns:
      [B, H, W, 3] float32 (n_x, n_y, n_z) in [0, 1].
    """
    depth = checks.as_depth(depth, "depth")
    ddx = _gradient_1d(depth, axis=2)
    ddy = _gradient_1d(depth, axis=1)
    normal = tf.concat([-ddx, -ddy, tf.ones_like(depth)], axis=-1)
    normal = normal / tf.norm(normal, axis=-1, keepdims=True)
    return 0.5 * (normal + 1.0)


def pretext_head_spec(task: str, use_normals: bool = False) -> Tuple[int, int, bool]:
    """(c_in, c_out, residual) of the pretext head for ``task`` in {"d2g", "dg2c", "d2c"}.

    d2g: 1 -> 1, residual (normals: 2 -> 1, no residual); dg2c: 2 -> 2 (normals: 4 -> 2);
    d2c: 1 -> 2 (normals: 3 -> 2). Matches the channel layout of :func:`pretext_inputs`.
    """
    if task not in PRETEXT_TASKS:
        raise ValueError(f"task must be one of {PRETEXT_TASKS}, got {task!r}")
    if task == "d2g":
        return (2, 1, False) if use_normals else (1, 1, True)
    if task == "dg2c":
        return (4 if use_normals else 2), 2, False
    return (3 if use_normals else 1), 2, False


def pretext_inputs(task: str, disparity_full, lab_norm=None, mask=None,
                   use_normals: bool = False, min_depth: float = 0.1,
                   max_depth: float = 100.0) -> tf.Tensor:
    """Builds the pretext head input for ``task`` (docs/method.md 2.7).

    Channel layout:
      d2g: [sigma] (use_normals: [n_x, n_y]);
      dg2c: [sigma, L_n] (use_normals: [sigma, n_x, n_y, L_n]);
      d2c: [sigma] (use_normals: [sigma, n_x, n_y]; this variant is not in the reference code).
    With ``mask`` the whole input is multiplied by the mask (M-variants).

    Args:
      task: "d2g", "dg2c" or "d2c".
      disparity_full: [B, H, W, 1] sigmoid disparity sigma_0 upsampled to the input size (keep it
        attached to the graph: the head loss must reach the depth decoder).
      lab_norm: normalised lightness L_n = (L - 50) / 50, [B, H, W, 1], or the normalised Lab image
        [B, H, W, 3] (channel 0 is used). Required for "dg2c", ignored otherwise.
      mask: erase mask [B, H, W, 1] or [B, H, W, 3] (1 = kept, 0 = erased; channel 0 is used), or None.
      use_normals: add surface normals of depth = disp_to_depth(sigma) (see :func:`surface_normals`).
      min_depth, max_depth: depth range (metres) of the disparity-to-depth conversion for the normals.

    Returns:
      [B, H, W, c_in] float32 with c_in = ``pretext_head_spec(task, use_normals)[0]``.
    """
    if task not in PRETEXT_TASKS:
        raise ValueError(f"task must be one of {PRETEXT_TASKS}, got {task!r}")
    disparity = checks.as_depth(disparity_full, "disparity_full")
    normals_xy: Optional[tf.Tensor] = None
    if use_normals:
        _, depth = disp_to_depth(disparity, min_depth, max_depth)
        normals_xy = surface_normals(depth)[..., :2]

    if task == "d2g":
        channels = [normals_xy] if use_normals else [disparity]
    elif task == "d2c":
        channels = [disparity] + ([normals_xy] if use_normals else [])
    else:
        if lab_norm is None:
            raise ValueError("pretext_inputs: task 'dg2c' needs lab_norm ([B, H, W, 1] L_n)")
        lab_norm = checks.as_float_tensor(lab_norm, "lab_norm", rank=4)
        if lab_norm.shape[-1] not in (None, 1, 3):
            raise ValueError(f"lab_norm: expected [B, H, W, 1] (L_n) or [B, H, W, 3] (normalised Lab), "
                             f"got shape {list(lab_norm.shape)}")
        checks.same_spatial_size(disparity, lab_norm, "disparity_full", "lab_norm")
        channels = [disparity] + ([normals_xy] if use_normals else []) + [lab_norm[..., :1]]
    inputs = tf.concat(channels, axis=-1)

    if mask is not None:
        mask = checks.as_float_tensor(mask, "mask", rank=4)
        if mask.shape[-1] not in (None, 1, 3):
            raise ValueError(f"mask: expected [B, H, W, 1] or [B, H, W, 3], got shape {list(mask.shape)}")
        checks.same_spatial_size(disparity, mask, "disparity_full", "mask")
        inputs = inputs * mask[..., :1]
    return inputs
