"""Geometry from first principles: known rotations, planes at known depth, exact identity warps."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import geometry


def _batch(matrix, batch=1):
    return np.broadcast_to(np.asarray(matrix, np.float32), (batch,) + np.shape(matrix)).copy()


def _K(height, width, batch=1):
    K = _batch(geometry.intrinsics_matrix(50.0, 40.0, (width - 1) / 2, (height - 1) / 2), batch)
    return K, np.linalg.inv(K).astype(np.float32)


def test_disp_to_depth_monodepth2_convention():
    scaled, depth = geometry.disp_to_depth(np.array([0.0, 1.0, 0.5], np.float32), 0.1, 100.0)
    # disp 0 -> 1/max_depth, disp 1 -> 1/min_depth, disp 0.5 -> 0.01 + 9.99/2 = 5.005
    np.testing.assert_allclose(scaled.numpy(), [0.01, 10.0, 5.005], rtol=1e-6)
    np.testing.assert_allclose(depth.numpy(), [100.0, 0.1, 1 / 5.005], rtol=1e-5)
    np.testing.assert_allclose(geometry.depth_to_disp(depth).numpy(), [0.0, 1.0, 0.5], atol=1e-5)
    with pytest.raises(ValueError, match="min_depth"):
        geometry.disp_to_depth(np.ones(3), 10.0, 1.0)


@pytest.mark.parametrize("axis,expected", [
    # 90 degrees about x: y -> z, z -> -y
    (0, [[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
    # about y: z -> x, x -> -z
    (1, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]),
    # about z: x -> y, y -> -x
    (2, [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
])
def test_pose_to_matrix_quarter_turns(axis, expected):
    axisangle = np.zeros((1, 3), np.float32)
    axisangle[0, axis] = math.pi / 2
    translation = np.array([[1.0, 2.0, 3.0]], np.float32)
    M = geometry.pose_to_matrix(axisangle, translation).numpy()[0]
    np.testing.assert_allclose(M[:3, :3], expected, atol=1e-6)
    np.testing.assert_allclose(M[:3, 3], [1, 2, 3], atol=1e-6)  # M = T·R: translation untouched
    np.testing.assert_allclose(M[3], [0, 0, 0, 1])


def test_pose_to_matrix_invert_gives_inverse():
    rng = np.random.default_rng(0)
    axisangle = rng.normal(size=(4, 3)).astype(np.float32)
    translation = rng.normal(size=(4, 3)).astype(np.float32)
    M = geometry.pose_to_matrix(axisangle, translation).numpy()
    M_inv = geometry.pose_to_matrix(axisangle, translation, invert=True).numpy()
    np.testing.assert_allclose(M @ M_inv, _batch(np.eye(4), 4), atol=1e-5)
    # Rotations are orthonormal with det +1.
    R = M[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), _batch(np.eye(3), 4), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), np.ones(4), atol=1e-5)
    # Monodepth2's [B, 1, 3] layout is accepted.
    M2 = geometry.pose_to_matrix(axisangle[:, None], translation[:, None]).numpy()
    np.testing.assert_allclose(M2, M, atol=1e-6)


def test_zero_rotation_is_identity_and_has_finite_gradient():
    axisangle = tf.zeros((2, 3))
    with tf.GradientTape() as tape:
        tape.watch(axisangle)
        M = geometry.pose_to_matrix(axisangle, tf.zeros((2, 3)))
        total = tf.reduce_sum(M)
    np.testing.assert_allclose(M.numpy(), _batch(np.eye(4), 2), atol=1e-7)
    assert np.all(np.isfinite(tape.gradient(total, axisangle).numpy()))


def test_backproject_and_project_roundtrip_with_identity():
    height, width = 6, 8
    K, inv_K = _K(height, width)
    depth = np.full((1, height, width, 1), 7.0, np.float32)
    points = geometry.backproject(depth, inv_K).numpy()
    np.testing.assert_allclose(points[..., 2], 7.0, rtol=1e-6)
    np.testing.assert_allclose(points[..., 3], 1.0)
    # X = (x - cx) * Z / fx
    np.testing.assert_allclose(points[0, 2, 5, 0], (5 - 3.5) * 7 / 50, rtol=1e-5)
    coords = geometry.project_coords(depth, _batch(np.eye(4)), K, inv_K).numpy()
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    np.testing.assert_allclose(coords[0, ..., 0], xs, atol=1e-4)
    np.testing.assert_allclose(coords[0, ..., 1], ys, atol=1e-4)


def test_identity_pose_reproduces_image_exactly_for_any_depth():
    rng = np.random.default_rng(1)
    height, width = 7, 9
    K, inv_K = _K(height, width, 2)
    image = rng.random((2, height, width, 3)).astype(np.float32)
    depth = rng.uniform(0.1, 100.0, (2, height, width, 1)).astype(np.float32)
    warped = geometry.warp(image, depth, _batch(np.eye(4), 2), K, inv_K).numpy()
    np.testing.assert_allclose(warped, image, atol=1e-5)


def test_fronto_parallel_plane_shifts_by_analytic_disparity():
    # A plane at depth Z seen by a camera translated by t along x: the point at target pixel x sits at
    # X - t in the source camera, so it appears at x - fx·t/Z (T moves target points into source frame:
    # T = Trans(-t)).
    height, width, Z, t, fx = 5, 12, 10.0, 0.4, 50.0
    K, inv_K = _K(height, width)
    depth = np.full((1, height, width, 1), Z, np.float32)
    T = geometry.pose_to_matrix(np.zeros((1, 3)), np.array([[-t, 0.0, 0.0]])).numpy()
    coords = geometry.project_coords(depth, T, K, inv_K).numpy()
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    np.testing.assert_allclose(coords[0, ..., 0], xs - fx * t / Z, atol=1e-4)  # 2 px to the left
    np.testing.assert_allclose(coords[0, ..., 1], ys, atol=1e-4)
    # A horizontal ramp image shifts by exactly that amount (interior pixels; the border clamps).
    ramp = np.broadcast_to(xs[None, ..., None] / width, (1, height, width, 1)).astype(np.float32)
    warped = geometry.warp(ramp, depth, T, K, inv_K).numpy()
    np.testing.assert_allclose(warped[0, :, 3:, 0], (xs[:, 3:] - 2.0) / width, atol=1e-5)
    np.testing.assert_allclose(warped[0, :, :2, 0], 0.0, atol=1e-6)  # clamped to the left edge


def test_forward_motion_along_optical_axis_zooms_about_principal_point():
    # Moving the camera forward by t: a point at depth Z appears at cx + (x - cx)·Z/(Z - t).
    height, width, Z, t = 9, 11, 8.0, 2.0
    K, inv_K = _K(height, width)
    depth = np.full((1, height, width, 1), Z, np.float32)
    T = geometry.pose_to_matrix(np.zeros((1, 3)), np.array([[0.0, 0.0, -t]])).numpy()
    coords = geometry.project_coords(depth, T, K, inv_K).numpy()
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    np.testing.assert_allclose(coords[0, ..., 0], 5 + (xs - 5) * Z / (Z - t), atol=1e-4)
    np.testing.assert_allclose(coords[0, ..., 1], 4 + (ys - 4) * Z / (Z - t), atol=1e-4)


def test_rotation_about_y_maps_optical_axis_to_analytic_pixel():
    # Source camera rotated by angle a about y relative to the target: T = R_y(-a) carries target
    # points into the source frame; the principal ray (0, 0, 1) goes to (-sin a, 0, cos a), i.e.
    # pixel x = cx - fx·tan(a).
    height, width, a = 5, 11, 0.1
    K, inv_K = _K(height, width)
    depth = np.full((1, height, width, 1), 5.0, np.float32)
    T = geometry.pose_to_matrix(np.array([[0.0, -a, 0.0]]), np.zeros((1, 3))).numpy()
    coords = geometry.project_coords(depth, T, K, inv_K).numpy()
    np.testing.assert_allclose(coords[0, 2, 5], [5 - 50 * math.tan(a), 2.0], atol=1e-4)


def test_bilinear_sample_exact_and_torch_default():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)  # value = 4·y + x
    coords = np.array([[[[1.5, 1.0], [0.25, 2.0], [3.0, 0.5], [-5.0, 9.0]]]], np.float32)
    out = geometry.bilinear_sample(image, coords).numpy()[0, 0, :, 0]
    # bilinear of a linear function is exact; the last point clamps to (0, 2)
    np.testing.assert_allclose(out, [5.5, 8.25, 5.0, 8.0], atol=1e-6)
    # torch_default samples at x·W/(W−1) − 0.5: the centre of a 4-wide image (x = 1.5) is unchanged,
    # x = 0 goes to −0.5 (clamped to 0) and x = 3 goes to 3.5 (clamped to 3).
    coords = np.array([[[[1.5, 1.0], [1.0, 1.0]]]], np.float32)
    out = geometry.bilinear_sample(image, coords, sampling="torch_default").numpy()[0, 0, :, 0]
    np.testing.assert_allclose(out, [4 * (1 * 3 / 2 - 0.5) + 1.5, 4 * 1.0 + (1 * 4 / 3 - 0.5)], atol=1e-5)
    with pytest.raises(ValueError, match="sampling"):
        geometry.bilinear_sample(image, coords, sampling="nearest")


def test_gradients_finite_at_border_and_depth_limits():
    rng = np.random.default_rng(2)
    height, width = 6, 8
    K, inv_K = _K(height, width)
    image = tf.constant(rng.random((1, height, width, 3)).astype(np.float32))
    # depth at the clamp limits of disp_to_depth (0.1 m and 100 m) and a pose that pushes many
    # pixels outside the image (border clamping).
    disp = tf.Variable(np.where(rng.random((1, height, width, 1)) > 0.5, 0.0, 1.0).astype(np.float32))
    axisangle = tf.Variable([[0.0, 0.3, 0.0]])
    translation = tf.Variable([[2.0, 0.0, 0.5]])
    with tf.GradientTape() as tape:
        _, depth = geometry.disp_to_depth(disp)
        T = geometry.pose_to_matrix(axisangle, translation)
        warped = geometry.warp(image, depth, T, K, inv_K)
        loss = tf.reduce_mean(tf.abs(warped - image))
    grads = tape.gradient(loss, [disp, axisangle, translation])
    for g in grads:
        assert g is not None and np.all(np.isfinite(g.numpy()))


def test_warp_works_inside_tf_function_with_dynamic_shapes():
    fn = tf.function(geometry.warp, input_signature=[
        tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, None, None, 1]),
        tf.TensorSpec([None, 4, 4]), tf.TensorSpec([None, 4, 4]), tf.TensorSpec([None, 4, 4])])
    for height, width in [(4, 6), (5, 9)]:
        K, inv_K = _K(height, width)
        image = np.random.rand(1, height, width, 3).astype(np.float32)
        out = fn(image, np.ones((1, height, width, 1), np.float32), _batch(np.eye(4)), K, inv_K)
        np.testing.assert_allclose(out.numpy(), image, atol=1e-5)


def test_kitti_intrinsics_and_scaling():
    K = geometry.kitti_intrinsics(320, 1024)
    np.testing.assert_allclose([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], [593.92, 614.4, 512, 160], rtol=1e-6)
    half = geometry.scale_intrinsics(K[None], 0.5, 0.5).numpy()[0]
    np.testing.assert_allclose([half[0, 0], half[1, 1], half[0, 2], half[1, 2], half[2, 2]],
                               [296.96, 307.2, 256, 80, 1], rtol=1e-6)


def test_bad_input_raises_clear_value_errors():
    K, inv_K = _K(4, 6)
    depth = np.ones((1, 4, 6, 1), np.float32)
    with pytest.raises(ValueError, match=r"K: expected \[B, 4, 4\].*3x3"):
        geometry.project_coords(depth, _batch(np.eye(4)), K[:, :3, :3], inv_K)
    with pytest.raises(ValueError, match="depth: expected"):
        geometry.backproject(np.ones((1, 4, 6, 3), np.float32), inv_K)
    with pytest.raises(ValueError, match="axisangle: expected"):
        geometry.pose_to_matrix(np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="same batch, height and width"):
        geometry.warp(np.ones((1, 5, 6, 3), np.float32), depth, _batch(np.eye(4)), K, inv_K)


def test_bilinear_sample_turns_nan_coordinates_into_nan_samples():
    # A NaN depth must surface as a NaN loss (reported by the trainer), not as a crash in the gather.
    image = tf.reshape(tf.range(12, dtype=tf.float32), [1, 3, 4, 1])
    coords = tf.constant([[[[1.0, 1.0], [float("nan"), 0.5]]]])
    out = geometry.bilinear_sample(image, coords).numpy()[0, 0, :, 0]
    assert out[0] == 5.0 and np.isnan(out[1])
