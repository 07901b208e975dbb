"""The pretext heads (tripled_tf.models.pretext_heads): heads with hand-set weights whose output is
known, analytic normals of planes, the inputs' channel layouts and masks.
"""
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.models.pretext_heads import (PretextHead, pretext_head_spec, pretext_inputs,
                                             surface_normals)

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------------
# Pretext heads


def _set_head_to_pass_through(head: PretextHead, c_in: int) -> None:
    """Zero conv2 and make the output a sum over the 32 channels, so head(x) = sum relu(bn2(0) + x)."""
    head(tf.zeros([1, 4, 4, c_in]))
    head.conv2.conv.kernel.assign(tf.zeros_like(head.conv2.conv.kernel))
    head.output_conv.kernel.assign(tf.ones_like(head.output_conv.kernel))
    head.output_conv.bias.assign(tf.zeros_like(head.output_conv.bias))


def test_pretext_head_residual_broadcasts_one_channel_over_32():
    head = PretextHead(1, residual=True)
    _set_head_to_pass_through(head, 1)
    x = tf.constant(RNG.normal(size=(2, 6, 7, 1)), tf.float32)
    # Inference-mode BN of a zero input with fresh statistics (mean 0, var 1, beta 0) is 0, so the
    # pre-ReLU tensor is x broadcast over 32 channels, and the 1x1 all-ones conv sums 32 copies.
    y = head(x, training=False)
    np.testing.assert_allclose(y.numpy(), 32.0 * np.maximum(x.numpy(), 0.0), rtol=1e-5, atol=1e-6)

    plain = PretextHead(1, residual=False)
    _set_head_to_pass_through(plain, 1)
    np.testing.assert_allclose(plain(x, training=False).numpy(), 0.0, atol=1e-6)


def test_pretext_head_shapes_and_config():
    head = PretextHead(2)
    y = head(tf.zeros([2, 16, 24, 4]), training=True)
    assert tuple(y.shape) == (2, 16, 24, 2)
    with pytest.raises(ValueError, match="residual"):
        PretextHead(1, residual=True)(tf.zeros([1, 8, 8, 2]))
    clone = PretextHead.from_config(PretextHead(2, residual=True, name="d2g_head").get_config())
    assert clone.c_out == 2 and clone.residual and clone.name == "d2g_head"


def test_surface_normals_of_fronto_parallel_plane():
    depth = tf.fill([2, 5, 7, 1], 3.0)
    normals = surface_normals(depth).numpy()
    assert normals.shape == (2, 5, 7, 3)
    np.testing.assert_allclose(normals, np.broadcast_to([0.5, 0.5, 1.0], normals.shape), atol=1e-6)


@pytest.mark.parametrize("slope", [0.5, -2.0])
def test_surface_normals_of_tilted_planes(slope):
    x = np.arange(7, dtype=np.float32)
    y = np.arange(5, dtype=np.float32)
    norm = np.sqrt(1.0 + slope ** 2)
    # D = slope · x + 4: dD/dx = slope everywhere (one-sided differences are exact on a line too).
    depth_x = np.broadcast_to(slope * x[None, :] + 4.0, (5, 7))[None, ..., None]
    expected = np.array([-slope / norm, 0.0, 1.0 / norm]) * 0.5 + 0.5
    normals = surface_normals(depth_x).numpy()
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=1e-6)
    # D = slope · y + 4 tilts about the x axis instead.
    depth_y = np.broadcast_to(slope * y[:, None] + 4.0, (5, 7))[None, ..., None]
    expected = np.array([0.0, -slope / norm, 1.0 / norm]) * 0.5 + 0.5
    normals = surface_normals(depth_y).numpy()
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=1e-6)


def test_surface_normals_use_central_inside_and_one_sided_at_borders():
    width = 6
    x = np.arange(width, dtype=np.float32)
    depth = np.broadcast_to(x ** 2, (3, width))[None, ..., None]
    # d(x²)/dx: central difference 2x inside; 1 - 0 = 1 at x = 0; 25 - 16 = 9 at x = 5.
    derivative = np.array([1.0, 2.0, 4.0, 6.0, 8.0, 9.0])
    expected_x = 0.5 * (-derivative / np.sqrt(1.0 + derivative ** 2) + 1.0)
    np.testing.assert_allclose(surface_normals(depth).numpy()[0, 1, :, 0], expected_x, atol=1e-6)


def test_pretext_inputs_channel_layouts():
    height, width = 8, 12
    disparity = tf.constant(RNG.uniform(size=(2, height, width, 1)), tf.float32)
    l_norm = tf.constant(RNG.uniform(-1, 1, size=(2, height, width, 1)), tf.float32)
    d2g = pretext_inputs("d2g", disparity)
    np.testing.assert_array_equal(d2g.numpy(), disparity.numpy())
    dg2c = pretext_inputs("dg2c", disparity, l_norm)
    np.testing.assert_array_equal(dg2c.numpy(), np.concatenate([disparity, l_norm], axis=-1))
    # A full normalised Lab image is accepted; its channel 0 is L_n.
    lab = tf.concat([l_norm, tf.ones([2, height, width, 2])], axis=-1)
    np.testing.assert_array_equal(pretext_inputs("dg2c", disparity, lab).numpy(), dg2c.numpy())
    assert pretext_inputs("d2c", disparity).shape == (2, height, width, 1)

    # Constant disparity -> fronto-parallel -> (n_x, n_y) = (0.5, 0.5).
    flat = tf.fill([2, height, width, 1], 0.3)
    d2g_normals = pretext_inputs("d2g", flat, use_normals=True)
    np.testing.assert_allclose(d2g_normals.numpy(), 0.5, atol=1e-6)
    dg2c_normals = pretext_inputs("dg2c", flat, l_norm, use_normals=True).numpy()
    np.testing.assert_allclose(dg2c_normals[..., 0], 0.3, atol=1e-7)
    np.testing.assert_allclose(dg2c_normals[..., 1:3], 0.5, atol=1e-6)
    np.testing.assert_array_equal(dg2c_normals[..., 3:], l_norm.numpy())
    for task in ("d2g", "dg2c", "d2c"):
        for use_normals in (False, True):
            c_in, _, _ = pretext_head_spec(task, use_normals)
            built = pretext_inputs(task, disparity, l_norm, use_normals=use_normals)
            assert built.shape[-1] == c_in
    assert pretext_head_spec("d2g") == (1, 1, True)
    assert pretext_head_spec("dg2c") == (2, 2, False)


def test_pretext_inputs_mask_multiplication():
    height, width = 8, 12
    disparity = tf.constant(RNG.uniform(size=(1, height, width, 1)), tf.float32)
    l_norm = tf.constant(RNG.uniform(-1, 1, size=(1, height, width, 1)), tf.float32)
    mask = np.ones((1, height, width, 3), np.float32)
    mask[:, 2:5, 3:9] = 0.0
    masked = pretext_inputs("dg2c", disparity, l_norm, mask=mask).numpy()
    expected = np.concatenate([disparity, l_norm], axis=-1) * mask[..., :1]
    np.testing.assert_array_equal(masked, expected)
    assert np.all(masked[:, 2:5, 3:9] == 0.0)
    masked_d2g = pretext_inputs("d2g", disparity, mask=mask[..., :1]).numpy()
    np.testing.assert_array_equal(masked_d2g, disparity.numpy() * mask[..., :1])


def test_pretext_inputs_validation():
    disparity = tf.zeros([1, 8, 8, 1])
    with pytest.raises(ValueError, match="task"):
        pretext_inputs("rotation", disparity)
    with pytest.raises(ValueError, match="lab_norm"):
        pretext_inputs("dg2c", disparity)
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        pretext_inputs("d2g", tf.zeros([1, 3, 8, 8]))
    with pytest.raises(ValueError, match="mask"):
        pretext_inputs("d2g", disparity, mask=tf.zeros([1, 8, 8, 2]))
    with pytest.raises(ValueError, match="same"):
        pretext_inputs("d2g", disparity, mask=tf.zeros([1, 4, 4, 1]))
