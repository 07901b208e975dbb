"""Tests for tripled_tf.metrics: hand-computed depth errors, crops, median scaling, snippet ATE."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import metrics


# ------------------------------------------------------------------------------------------- depth


def test_depth_errors_hand_computed():
    gt = np.array([1.0, 2.0, 4.0, 10.0, 10.0])
    pred = np.array([1.0, 1.0, 8.0, 15.0, 18.0])
    # |g - p|      = [0, 1, 4, 5, 8];   (g - p)^2 = [0, 1, 16, 25, 64]
    # abs_rel = (0/1 + 1/2 + 4/4 + 5/10 + 8/10) / 5 = (0 + 0.5 + 1 + 0.5 + 0.8) / 5 = 2.8 / 5 = 0.56
    # sq_rel  = (0/1 + 1/2 + 16/4 + 25/10 + 64/10) / 5 = (0.5 + 4 + 2.5 + 6.4) / 5 = 13.4 / 5 = 2.68
    # rmse    = sqrt((0 + 1 + 16 + 25 + 64) / 5) = sqrt(21.2)
    # ln g - ln p = [0, ln 1/2, ln 1/2, ln 2/3, ln 10/18] -> rmse_log = sqrt(mean of squares)
    # max(g/p, p/g) = [1, 2, 2, 1.5, 1.8]; thresholds 1.25, 1.5625, 1.953125
    # a1 = 1/5 (only 1), a2 = 2/5 (1, 1.5), a3 = 3/5 (1, 1.5, 1.8)
    expected_log = math.sqrt((0 + 2 * math.log(2) ** 2 + math.log(1.5) ** 2 + math.log(1.8) ** 2) / 5)
    errors = metrics.compute_depth_errors(gt, pred)
    assert list(errors) == list(metrics.DEPTH_METRIC_NAMES)
    assert all(type(v) is float for v in errors.values())
    assert errors["abs_rel"] == pytest.approx(0.56)
    assert errors["sq_rel"] == pytest.approx(2.68)
    assert errors["rmse"] == pytest.approx(math.sqrt(21.2))
    assert errors["rmse_log"] == pytest.approx(expected_log)
    assert errors["a1"] == pytest.approx(0.2)
    assert errors["a2"] == pytest.approx(0.4)
    assert errors["a3"] == pytest.approx(0.6)


def test_depth_errors_brief_example():
    # gt = [1, 2, 4], pred = [1, 1, 8]: abs_rel = (0 + 0.5 + 1) / 3 = 0.5,
    # sq_rel = (0 + 1/2 + 16/4) / 3 = 1.5, rmse = sqrt(17 / 3), rmse_log = ln 2 * sqrt(2/3),
    # ratios [1, 2, 2] -> a1 = a2 = a3 = 1/3.
    errors = metrics.compute_depth_errors(tf.constant([1.0, 2.0, 4.0]), [1.0, 1.0, 8.0])
    assert errors["abs_rel"] == pytest.approx(0.5)
    assert errors["sq_rel"] == pytest.approx(1.5)
    assert errors["rmse"] == pytest.approx(math.sqrt(17 / 3))
    assert errors["rmse_log"] == pytest.approx(math.log(2) * math.sqrt(2 / 3))
    for key in ("a1", "a2", "a3"):
        assert errors[key] == pytest.approx(1 / 3)


def test_perfect_prediction():
    gt = np.linspace(1.0, 80.0, 50)
    errors = metrics.compute_depth_errors(gt, gt.copy())
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log"):
        assert errors[key] == 0.0
    for key in ("a1", "a2", "a3"):
        assert errors[key] == 1.0


def test_depth_errors_bad_input():
    with pytest.raises(ValueError, match="same length"):
        metrics.compute_depth_errors([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"expected shape \[\?\]"):
        metrics.compute_depth_errors(np.ones([2, 2]), np.ones([2, 2]))
    with pytest.raises(ValueError, match="> 0"):
        metrics.compute_depth_errors([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="empty"):
        metrics.compute_depth_errors([], [])


def test_median_scaling_recovers_constant_scale():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 80.0, size=101)
    scaled, ratio = metrics.median_scaling(gt, gt / 3.7)
    assert type(ratio) is float
    assert ratio == pytest.approx(3.7, rel=1e-12)
    np.testing.assert_allclose(scaled, gt, rtol=1e-12)


def test_crop_masks_at_kitti_size():
    # 375 x 1242 (KITTI):
    # Garg:  rows floor(0.40810811 * 375) = floor(153.04) = 153 .. floor(0.99189189 * 375) = floor(371.96)
    #        = 371 (exclusive); cols floor(0.03594771 * 1242) = floor(44.65) = 44 .. floor(0.96405229 *
    #        1242) = floor(1197.35) = 1197 (exclusive).
    # Eigen: rows floor(0.3324324 * 375) = floor(124.66) = 124 .. floor(0.91351351 * 375) =
    #        floor(342.57) = 342; cols 44 .. 1197 as above.
    garg = metrics.garg_crop_mask(375, 1242)
    expected = np.zeros((375, 1242), bool)
    expected[153:371, 44:1197] = True
    assert garg.dtype == bool and garg.shape == (375, 1242)
    np.testing.assert_array_equal(garg, expected)
    eigen = metrics.eigen_crop_mask(375, 1242)
    expected = np.zeros((375, 1242), bool)
    expected[124:342, 44:1197] = True
    np.testing.assert_array_equal(eigen, expected)


def _toy_gt(height=32, width=64):
    rng = np.random.default_rng(2)
    gt = rng.uniform(2.0, 60.0, size=(height, width))
    gt[::3, ::5] = 0.0  # "no lidar point"
    gt[1::7, 2::9] = 95.0  # beyond max_depth
    return gt


def test_evaluate_depth_map_scale_and_invalid_pixels():
    gt = _toy_gt()
    pred = gt / 2.0
    # Invalid pixels (gt 0 or 95, and everything outside the Garg crop) get garbage predictions that
    # must not change anything.
    crop = metrics.garg_crop_mask(*gt.shape)
    pred[(gt == 0) | (gt == 95.0) | ~crop] = 1234.5
    errors, ratio = metrics.evaluate_depth_map(gt, pred)
    assert ratio == pytest.approx(2.0, rel=1e-12)
    assert errors["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert errors["rmse"] == pytest.approx(0.0, abs=1e-9)
    assert errors["a1"] == 1.0


def test_evaluate_depth_map_valid_range_is_strict_and_clamps():
    # Without crop or median scaling: valid pixels are exactly those with 1e-3 < gt < 80.
    gt = np.array([[0.0, 1e-3, 80.0, 10.0],
                   [90.0, 40.0, 79.0, 5.0]])
    pred = np.array([[7.0, 7.0, 7.0, 20.0],
                     [7.0, 40.0, 200.0, 1e-6]])
    # valid: gt 10 (pred 20), 40 (pred 40), 79 (pred 200 -> clamped to 80), 5 (pred 1e-6 -> 1e-3)
    errors, ratio = metrics.evaluate_depth_map(gt, pred, crop=None, median_scaling=False)
    assert ratio == 1.0
    # abs_rel = (10/10 + 0/40 + 1/79 + (5 - 1e-3)/5) / 4
    assert errors["abs_rel"] == pytest.approx((1.0 + 0.0 + 1 / 79 + 4.999 / 5) / 4)
    # rmse = sqrt((100 + 0 + 1 + 4.999^2) / 4)
    assert errors["rmse"] == pytest.approx(math.sqrt((100 + 0 + 1 + 4.999 ** 2) / 4))
    # ratios: 2, 1, 80/79, 5000 -> a1 = a2 = a3 = 2/4
    assert errors["a1"] == pytest.approx(0.5)
    assert errors["a3"] == pytest.approx(0.5)


def test_evaluate_depth_map_median_is_over_valid_pixels_only():
    # gt valid values [10, 20, 30] (median 20), pred [1, 2, 3] (median 2) -> ratio 10; the invalid
    # pixel (gt 0) with pred 1000 would change the median of pred if it were included.
    gt = np.array([[10.0, 20.0], [30.0, 0.0]])
    pred = np.array([[1.0, 2.0], [3.0, 1000.0]])
    errors, ratio = metrics.evaluate_depth_map(gt, pred, crop=None)
    assert ratio == pytest.approx(10.0)
    assert errors["abs_rel"] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_depth_map_errors():
    with pytest.raises(ValueError, match="same"):
        metrics.evaluate_depth_map(np.ones([4, 6]), np.ones([4, 5]))
    with pytest.raises(ValueError, match=r"expected shape \[\?, \?\]"):
        metrics.evaluate_depth_map(np.ones([1, 4, 6]), np.ones([1, 4, 6]))
    with pytest.raises(ValueError, match="no valid"):
        metrics.evaluate_depth_map(np.zeros([32, 64]), np.ones([32, 64]))
    with pytest.raises(ValueError, match="crop"):
        metrics.evaluate_depth_map(np.ones([4, 6]), np.ones([4, 6]), crop="kitti")


def test_accumulator_averages_over_images():
    # Image 1: perfect up to scale 2 (abs_rel 0). Image 2 (no crop, no scaling): gt [2, 4], pred [1, 4]
    # -> abs_rel = (1/2 + 0) / 2 = 0.25. Mean over images = 0.125 (not the pixel-weighted mean).
    acc = metrics.DepthMetricAccumulator(crop=None, median_scaling=False)
    gt1 = np.full([2, 3], 5.0)
    acc.add(gt1, gt1)
    acc.add(np.array([[2.0, 4.0]]), np.array([[1.0, 4.0]]))
    assert len(acc) == 2
    mean = acc.mean()
    assert mean["abs_rel"] == pytest.approx(0.125)
    assert mean["a1"] == pytest.approx((1.0 + 0.5) / 2)


def test_accumulator_ratio_stats():
    # Ratios 2, 4, 4 -> median 4; ratios / median = [0.5, 1, 1], mean 5/6,
    # std = sqrt(((0.5 - 5/6)^2 + 2 (1 - 5/6)^2) / 3) = sqrt((1/9 + 2/36) / 3) = sqrt(1/18).
    acc = metrics.DepthMetricAccumulator(crop=None)
    gt = np.array([[10.0, 20.0, 30.0]])
    for ratio in (2.0, 4.0, 4.0):
        _, got = acc.add(gt, gt / ratio)
        assert got == pytest.approx(ratio)
    median, std = acc.ratio_stats()
    assert median == pytest.approx(4.0)
    assert std == pytest.approx(math.sqrt(1 / 18))
    with pytest.raises(ValueError, match="no image"):
        metrics.DepthMetricAccumulator().mean()


# -------------------------------------------------------------------------------------------- pose


def test_ate_of_scaled_translated_prediction_is_zero():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(5, 3))
    gt -= gt[0]
    pred = 0.3 * gt + np.array([4.0, -2.0, 7.0])
    assert metrics.compute_ate(gt, pred) == pytest.approx(0.0, abs=1e-12)


def test_ate_two_points_hand_computed():
    # gt = [(0,0,0), (2,0,0)], pred = [(5,5,5), (6,6,5)]
    # align first point: pred -> [(0,0,0), (1,1,0)]
    # s = sum(g * p) / sum(p^2) = (2 * 1) / (1 + 1) = 1
    # errors s p - g = [(0,0,0), (-1, 1, 0)] -> sum of squares 2 -> ATE = sqrt(2) / 2 (N = 2)
    ate = metrics.compute_ate([[0, 0, 0], [2, 0, 0]], [[5, 5, 5], [6, 6, 5]])
    assert type(ate) is float
    assert ate == pytest.approx(math.sqrt(2) / 2)


def test_ate_zero_prediction_is_defined():
    # All-zero (aligned) prediction: error is sqrt(sum |g|^2) / N whatever the scale: sqrt(1 + 4) / 3.
    ate = metrics.compute_ate([[0, 0, 0], [1, 0, 0], [0, 2, 0]], np.zeros([3, 3]))
    assert ate == pytest.approx(math.sqrt(5) / 3)


def test_ate_bad_input():
    with pytest.raises(ValueError, match=r"\[\?, 3\]"):
        metrics.compute_ate(np.zeros([5, 4]), np.zeros([5, 4]))
    with pytest.raises(ValueError, match="same number"):
        metrics.compute_ate(np.zeros([5, 3]), np.zeros([4, 3]))


def _translation(x, y, z):
    pose = np.eye(4)
    pose[:3, 3] = [x, y, z]
    return pose


def _straight_line(num_frames, speed=1.0):
    # Camera-to-world poses of a camera moving forward (+z) at constant speed, no rotation.
    return np.stack([_translation(0.0, 0.0, speed * i) for i in range(num_frames)])


def test_snippets_straight_line_perfect_prediction():
    gt = _straight_line(7)
    # T_{i -> i+1} maps camera-i points into camera i+1: moving forward by 1 makes a point 1 m closer,
    # i.e. a translation of (0, 0, -1). Any positive scale of it is also perfect.
    pred = np.stack([_translation(0.0, 0.0, -0.25)] * 6)
    ates = metrics.snippet_ates(gt, pred)
    assert ates.shape == (6,)
    np.testing.assert_allclose(ates, 0.0, atol=1e-12)


def test_snippets_straight_line_known_error():
    # Prediction drifts sideways: pred motion (1, 0, -1) vs gt (0, 0, -1). A snippet of n motions has
    # gt positions g_k = k (0, 0, -1), pred p_k = k (1, 0, -1), k = 0..n (first point already aligned).
    # s = sum k^2 / sum 2 k^2 = 1/2; s p_k - g_k = k (1/2, 0, 1/2) -> |.|^2 = k^2 / 2.
    # ATE = sqrt(sum_{k<=n} k^2 / 2) / (n + 1):
    #   n = 4 (snippets 0, 1, 2): sqrt(30 / 2) / 5 = sqrt(15) / 5
    #   n = 3 (snippet 3):        sqrt(14 / 2) / 4 = sqrt(7) / 4
    #   n = 2 (snippet 4):        sqrt(5 / 2) / 3
    #   n = 1 (snippet 5):        sqrt(1 / 2) / 2
    gt_poses = _straight_line(7)
    pred = np.stack([_translation(1.0, 0.0, -1.0)] * 6)
    expected = [math.sqrt(15) / 5] * 3 + [math.sqrt(7) / 4, math.sqrt(2.5) / 3, math.sqrt(0.5) / 2]
    np.testing.assert_allclose(metrics.snippet_ates(gt_poses, pred), expected, rtol=1e-12)
    # KITTI's [M, 3, 4] pose rows give the same result.
    np.testing.assert_allclose(metrics.snippet_ates(gt_poses[:, :3], pred), expected, rtol=1e-12)


def _rot_y(angle):
    c, s = math.cos(angle), math.sin(angle)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    return pose


def test_snippets_turning_trajectory_uses_target_to_source_convention():
    # A camera driving on a circle (yaw 0.2 rad and 1 m forward per frame).
    poses = [np.eye(4)]
    for _ in range(6):
        poses.append(poses[-1] @ _translation(0.0, 0.0, 1.0) @ _rot_y(0.2))
    gt = np.stack(poses)
    # The project convention: T_{i -> i+1} maps camera-i coordinates into camera i+1's:
    # X_{i+1} = inv(G_{i+1}) X_world = inv(G_{i+1}) G_i X_i.
    pred = np.stack([np.linalg.inv(gt[i + 1]) @ gt[i] for i in range(6)])
    np.testing.assert_allclose(metrics.snippet_ates(gt, pred), 0.0, atol=1e-12)
    np.testing.assert_allclose(metrics.local_motions_from_absolute(gt), pred, atol=1e-12)
    # The opposite convention (camera-(i+1)-to-camera-i motions) is not a scaled copy when the camera
    # turns, so this test does detect a convention mix-up.
    inverted = np.linalg.inv(pred)
    assert np.all(metrics.snippet_ates(gt, inverted)[:4] > 1e-3)


def test_snippet_positions_chain_by_right_multiplication():
    # C_1 = T_1 = translation (1, 0, 0); C_2 = T_1 T_2 with T_2 a 90 degree yaw plus translation
    # (0, 0, 1): the translation of T_1 T_2 is t_1 + R_1 t_2 = (1, 0, 1) (R_1 = I).
    # C_3 = C_2 T_3, T_3 = translation (0, 0, 1): t = (1, 0, 1) + R_2 (0, 0, 1) with
    # R_2 = rot_y(90) -> R_2 (0, 0, 1) = (1, 0, 0) -> (2, 0, 1).
    t2 = _rot_y(math.pi / 2)
    t2[:3, 3] = [0.0, 0.0, 1.0]
    positions = metrics.snippet_positions(np.stack([_translation(1, 0, 0), t2, _translation(0, 0, 1)]))
    np.testing.assert_allclose(positions, [[0, 0, 0], [1, 0, 0], [1, 0, 1], [2, 0, 1]], atol=1e-12)


def test_snippet_ates_bad_input():
    gt = _straight_line(5)
    with pytest.raises(ValueError, match=r"\[M-1, 4, 4\] = \[4, 4, 4\]"):
        metrics.snippet_ates(gt, np.stack([np.eye(4)] * 5))
    with pytest.raises(ValueError, match=r"expected \[M, 4, 4\]"):
        metrics.snippet_ates(gt, np.stack([np.eye(3)] * 4))
    with pytest.raises(ValueError, match="gt_poses"):
        metrics.snippet_ates(gt[:, :3, :3], np.stack([np.eye(4)] * 4))
    with pytest.raises(ValueError, match="snippet_length"):
        metrics.snippet_ates(gt, np.stack([np.eye(4)] * 4), snippet_length=1)
