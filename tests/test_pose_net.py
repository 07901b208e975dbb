"""The pose network (tripled_tf.models.pose_net): output shapes, Monodepth2's 0.01 scaling of the mean
of the last conv, the reference input size, input checks.
"""

import numpy as np
import pytest

from tripled_tf.models.pose_net import PoseNet

RNG = np.random.default_rng(0)


def random_images(*shape):
    return RNG.random(shape, dtype=np.float32)

# ------------------------------------------------------------------------------------------ pose net


@pytest.fixture(scope="module")
def pose_net():
    net = PoseNet(input_size=None)
    net((random_images(2, 64, 64, 3), random_images(2, 64, 64, 3)))
    return net


def test_pose_net_shapes_and_reference_input_size(pose_net):
    axisangle, translation = pose_net((random_images(3, 64, 96, 3), random_images(3, 64, 96, 3)))
    assert tuple(axisangle.shape) == (3, 3) and tuple(translation.shape) == (3, 3)
    assert PoseNet().input_size == (192, 640)
    assert pose_net.encoder.input_channels == 6


def test_pose_outputs_are_mean_of_last_conv_times_0_01(pose_net):
    last = pose_net.pose_2
    saved = [w.numpy() for w in (last.kernel, last.bias)]
    try:
        last.kernel.assign(np.zeros_like(saved[0]))
        last.bias.assign(np.arange(1, 7, dtype=np.float32))
        axisangle, translation = pose_net((random_images(2, 64, 64, 3), random_images(2, 64, 64, 3)))
        np.testing.assert_allclose(axisangle.numpy(), [[0.01, 0.02, 0.03]] * 2, rtol=1e-6)
        np.testing.assert_allclose(translation.numpy(), [[0.04, 0.05, 0.06]] * 2, rtol=1e-6)
    finally:
        last.kernel.assign(saved[0])
        last.bias.assign(saved[1])


def test_pose_net_resizes_frames_to_input_size(pose_net):
    # Bilinear resizing keeps a constant image constant, so constant 32x48 frames resized to 64x96
    # must give the pose of constant 64x96 frames through the same weights.
    resizing = PoseNet(input_size=(64, 96))
    small = (np.full((1, 32, 48, 3), 0.3, np.float32), np.full((1, 32, 48, 3), 0.7, np.float32))
    resizing(small)
    resizing.set_weights(pose_net.get_weights())
    large = (np.full((1, 64, 96, 3), 0.3, np.float32), np.full((1, 64, 96, 3), 0.7, np.float32))
    for a, b in zip(resizing(small, training=False), pose_net(large, training=False)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-8)


def test_pose_net_rejects_bad_inputs(pose_net):
    with pytest.raises(ValueError, match="frame_a, frame_b"):
        pose_net(random_images(1, 64, 64, 3))
    with pytest.raises(ValueError, match="same batch, height and width"):
        pose_net((random_images(1, 64, 64, 3), random_images(1, 32, 64, 3)))
    with pytest.raises(ValueError, match="input_size"):
        PoseNet(input_size=(192,))
