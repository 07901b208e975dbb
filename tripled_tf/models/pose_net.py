"""Pose network (docs/method.md 2.5): ResNet encoder on a frame pair + Monodepth2/FeatDepth pose decoder.

Both frames are resized (bilinear, half-pixel centres, no antialiasing) to a fixed size, 192x640 in the
reference regardless of the training resolution, concatenated on channels in temporal order, normalised
and encoded by a 6-channel ResNet. The decoder on level 5 only:
  ReLU(Conv1x1 C5 -> 256, bias) -> ReLU(Conv3x3 256 -> 256, zero pad 1) -> ReLU(Conv3x3 256 -> 256,
  zero pad 1) -> Conv1x1 256 -> 6 -> mean over H, W -> x 0.01
gives axis-angle (first 3) and translation (last 3). The 0.01 keeps the initial poses near identity.
Decoder layers carry Monodepth2's names (squeeze, pose_0, pose_1, pose_2).
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.models.layers import BuiltByFirstCall, Conv3x3, TorchInitConv2D
from tripled_tf.models.resnet import ResNetEncoder

POSE_OUTPUT_SCALE = 0.01
POSE_DECODER_CHANNELS = 256
REFERENCE_POSE_INPUT_SIZE = (192, 640)


@keras.saving.register_keras_serializable(package="tripled_tf")
class PoseNet(BuiltByFirstCall, keras.Model):
    """Relative camera motion between two frames.

    ``call(inputs, training=None)``:
      inputs: ``(frame_a, frame_b)``, each ``[B, H, W, 3]`` float in [0, 1], in temporal order
        (``(I_-1, I_0)`` or ``(I_0, I_+1)``).
      returns ``(axisangle [B, 3] radians, translation [B, 3])``. By the training convention
        (Monodepth2's) M = geometry.pose_to_matrix(axisangle, translation) maps points from
        frame_a's camera frame into frame_b's: T_{0->+1} = M for the pair (I_0, I_+1) and
        T_{0->-1} = M^-1 for the pair (I_-1, I_0). Translation is in the depth network's
        (scale-ambiguous) units.

    Args:
      num_layers: ResNet depth of the encoder (18 in the reference).
      input_size: (height, width) both frames are resized to before encoding, (192, 640) in the
        reference; None uses the frames at their given size (must then be multiples of 32).
      name, dtype, trainable: as for ``keras.Model``.

    Sublayers: ``encoder`` (a 6-channel :class:`ResNetEncoder` with input normalisation), ``squeeze``,
    ``pose_0``, ``pose_1``, ``pose_2``.
    """

    def __init__(self, num_layers: int = 18,
                 input_size: Optional[Sequence[int]] = REFERENCE_POSE_INPUT_SIZE, **kwargs):
        super().__init__(**kwargs)
        if input_size is not None:
            if len(input_size) != 2 or any(int(s) != s or s < 1 for s in input_size):
                raise ValueError(f"input_size must be None or (height, width) positive integers, got "
                                 f"{input_size}")
            input_size = (int(input_size[0]), int(input_size[1]))
        self.num_layers = int(num_layers)
        self.input_size = input_size
        self.encoder = ResNetEncoder(self.num_layers, num_input_images=2, normalize_input=True,
                                     name="encoder")
        self.squeeze = TorchInitConv2D(POSE_DECODER_CHANNELS, 1, name="squeeze")
        self.pose_0 = Conv3x3(POSE_DECODER_CHANNELS, padding_mode="zero", name="pose_0")
        self.pose_1 = Conv3x3(POSE_DECODER_CHANNELS, padding_mode="zero", name="pose_1")
        self.pose_2 = TorchInitConv2D(6, 1, name="pose_2")

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"PoseNet: expected inputs = (frame_a, frame_b), two [B, H, W, 3] "
                             f"images, got {type(inputs).__name__}")
        frame_a = checks.as_images(inputs[0], "frame_a", channels=3)
        frame_b = checks.as_images(inputs[1], "frame_b", channels=3)
        checks.same_spatial_size(frame_a, frame_b, "frame_a", "frame_b")
        if self.input_size is not None and tuple(frame_a.shape[1:3]) != self.input_size:
            # TF2's bilinear resize uses half-pixel centres, as PyTorch's align_corners=False.
            frame_a = tf.image.resize(frame_a, self.input_size, method="bilinear", antialias=False)
            frame_b = tf.image.resize(frame_b, self.input_size, method="bilinear", antialias=False)
        pair = tf.concat([frame_a, frame_b], axis=-1)
        level5 = self.encoder(pair, training=training)[-1]
        x = tf.nn.relu(self.squeeze(level5))
        x = tf.nn.relu(self.pose_0(x))
        x = tf.nn.relu(self.pose_1(x))
        x = self.pose_2(x)
        pose = POSE_OUTPUT_SCALE * tf.reduce_mean(x, axis=[1, 2])
        return pose[:, :3], pose[:, 3:]

    def get_config(self):
        config = super().get_config()
        config.update(name=self.name, num_layers=self.num_layers,
                      input_size=None if self.input_size is None else list(self.input_size))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
