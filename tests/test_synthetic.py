"""Tests of the built-in synthetic driving scene (tripled_tf/data/synthetic.py).

Expected values come from first principles: KITTI's published normalised intrinsics, the z-depth of
a ground plane / fronto-parallel wall seen by a level camera, rigid-motion reprojection between
frames, and the physical ranges the brief asks for (speed, yaw rate, 80 m cap).
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.data import synthetic
from tripled_tf.data.synthetic import (MAX_DEPTH, SceneConfig, SyntheticScene, kitti_intrinsics,
                                       make_triplets, relative_pose, synthetic_dataset)

KEYS = ("target", "source_prev", "source_next", "depth", "K", "pose_prev", "pose_next")


@pytest.fixture(scope="module")
def triplets():
    return make_triplets(3, 64, 192, seed=0)


@pytest.fixture(scope="module")
def small_triplets():
    return make_triplets(2, 32, 96, seed=0)


@pytest.fixture(scope="module")
def open_scene():
    """A street without buildings or boxes: only the ground and the backdrop room."""
    return SyntheticScene(SceneConfig(seed=5, num_boxes=0, buildings=False))


def _bilinear(image, u, v):
    """Samples image [H, W, C] at float pixel positions (u right, v down; centres at integers)."""
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    top = image[v0, u0] * (1 - fu) + image[v0, u0 + 1] * fu
    bottom = image[v0 + 1, u0] * (1 - fu) + image[v0 + 1, u0 + 1] * fu
    return top * (1 - fv) + bottom * fv


def _reproject(depth, K, T):
    """Back-projects every pixel with its depth [H, W], moves it by T [4, 4] and projects with K.
    Returns (u, v, z) in the other camera, each [H * W]."""
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    points = np.linalg.inv(K[:3, :3]) @ pixels * depth.ravel()
    moved = T[:3, :3] @ points + T[:3, 3:4]
    projected = K[:3, :3] @ moved
    return projected[0] / projected[2], projected[1] / projected[2], moved[2]


def test_kitti_intrinsics_match_published_normalised_values():
    K = kitti_intrinsics(32, 96)
    expected = np.array([[0.58 * 96, 0, 48, 0], [0, 1.92 * 32, 16, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert K.shape == (4, 4) and K.dtype == np.float32
    np.testing.assert_allclose(K, expected, rtol=1e-6)


def test_triplet_shapes_dtypes_and_ranges(small_triplets):
    d = small_triplets
    assert set(d) == set(KEYS)
    for key in ("target", "source_prev", "source_next"):
        assert d[key].shape == (2, 32, 96, 3) and d[key].dtype == np.float32
        assert d[key].min() >= 0.0 and d[key].max() <= 1.0
    assert d["depth"].shape == (2, 32, 96, 1) and d["depth"].dtype == np.float32
    assert np.all(np.isfinite(d["depth"])) and d["depth"].min() > 0.5
    assert d["depth"].max() <= MAX_DEPTH
    np.testing.assert_allclose(d["K"], np.broadcast_to(kitti_intrinsics(32, 96), (2, 4, 4)))
    for key in ("K", "pose_prev", "pose_next"):
        assert d[key].shape == (2, 4, 4) and d[key].dtype == np.float32


def test_poses_are_rigid_forward_motions_of_realistic_size(triplets):
    for key, sign in (("pose_next", -1.0), ("pose_prev", 1.0)):
        T = triplets[key].astype(np.float64)
        R, t = T[:, :3, :3], T[:, :3, 3]
        np.testing.assert_allclose(R @ np.transpose(R, (0, 2, 1)), np.broadcast_to(np.eye(3), R.shape),
                                   atol=1e-5)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
        np.testing.assert_array_equal(T[:, 3], np.broadcast_to([0, 0, 0, 1], (3, 4)))
        # Driving forward 0.5-1.2 m per frame: a static point ends up closer to the next camera
        # (z decreases) and farther from the previous one.
        assert np.all(np.linalg.norm(t, axis=1) >= 0.5) and np.all(np.linalg.norm(t, axis=1) <= 1.2)
        assert np.all(sign * t[:, 2] > 0.45)
        yaw = np.degrees(np.arctan2(R[:, 0, 2], R[:, 2, 2]))
        assert np.all(np.abs(yaw) < 3.0)


def test_trajectory_camera_height_speed_and_yaw_rate():
    scene = SyntheticScene(SceneConfig(seed=11))
    poses = np.stack([scene.camera_to_world(i) for i in range(scene.num_frames)])
    np.testing.assert_allclose(poses[:, 1, 3], -1.65)  # ground at Y = 0, Y down
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert steps.min() >= 0.5 and steps.max() <= 1.2
    assert steps.std() > 0.0  # speed varies
    yaw = np.arctan2(poses[:, 0, 2], poses[:, 2, 2])
    assert np.degrees(np.abs(np.diff(yaw))).max() < 3.0
    # relative_pose composes camera_to_world: T_{i->j} = inv(C_j) C_i.
    T = relative_pose(scene, 3, 5)
    np.testing.assert_allclose(poses[5] @ T, poses[3], atol=1e-9)
    np.testing.assert_allclose(relative_pose(scene, 4, 4), np.eye(4), atol=1e-12)


def test_same_seed_identical_different_seed_different(small_triplets):
    again = make_triplets(2, 32, 96, seed=0)
    for key in KEYS:
        np.testing.assert_array_equal(again[key], small_triplets[key])
    other = make_triplets(2, 32, 96, seed=1)
    assert np.abs(other["target"] - small_triplets["target"]).mean() > 0.02
    assert not np.allclose(other["pose_next"], small_triplets["pose_next"])


def test_val_frames_differ_from_train_frames(small_triplets):
    val = make_triplets(2, 32, 96, seed=0, split="val")
    for train_image in small_triplets["target"]:
        for val_image in val["target"]:
            assert np.abs(train_image - val_image).mean() > 0.02


def test_ground_depth_matches_plane_geometry(open_scene):
    """A level camera at height h sees the ground at row v (below the horizon cy) at z = h fy / (v - cy)."""
    height, width, h = 48, 160, 1.65
    K = kitti_intrinsics(height, width)
    pose = np.eye(4)
    pose[:3, 3] = open_scene.camera_to_world(0)[:3, 3]
    for intrinsics in (K, K[:3, :3]):  # both 4x4 and 3x3 intrinsics are accepted
        _, depth = open_scene.render(pose, intrinsics, height, width)
        fy, cy = K[1, 1], K[1, 2]
        rows = np.arange(30, height)  # ground hits closer than 30 m, well inside the scene
        expected = h * fy / (rows - cy)
        np.testing.assert_allclose(depth[rows], np.broadcast_to(expected[:, None], (rows.size, width)),
                                   rtol=1e-5)


def test_depth_is_z_depth_on_a_fronto_parallel_wall(open_scene):
    """The far backdrop wall is perpendicular to a level, unyawed camera: its z-depth is the same
    for every pixel that sees it (the Euclidean range would grow towards the image border)."""
    height, width = 48, 160
    K = kitti_intrinsics(height, width)
    pose = np.eye(4)
    pose[:3, 3] = open_scene.camera_to_world(0)[:3, 3]
    _, depth = open_scene.render(pose, K, height, width)
    wall_distance = open_scene.room_max[2] - pose[2, 3]
    assert wall_distance <= MAX_DEPTH
    block = depth[21:26, 60:101]  # around the principal point (80, 24), below the sky and wall top
    np.testing.assert_allclose(block, wall_distance, rtol=1e-5)


def test_multi_view_consistency_of_triplets(triplets):
    """Back-project target pixels with the GT depth, move them with pose_next / pose_prev, project
    with K: the source's own depth there equals the moved z, and the colours agree (photometric
    constancy), for most pixels (the rest are occlusions and depth edges)."""
    d = triplets
    # Neighbouring samples of a drive share frames (target stride 1, gap 1), which gives us the
    # sources' depth maps.
    np.testing.assert_array_equal(d["source_next"][0], d["target"][1])
    np.testing.assert_array_equal(d["source_prev"][2], d["target"][1])
    height, width = d["depth"].shape[1:3]
    cases = [(0, "pose_next", "source_next", 1), (1, "pose_next", "source_next", 2),
             (2, "pose_prev", "source_prev", 1), (1, "pose_prev", "source_prev", 0)]
    for index, pose_key, source_key, source_index in cases:
        K = d["K"][index].astype(np.float64)
        u, v, z = _reproject(d["depth"][index, ..., 0].astype(np.float64), K,
                             d[pose_key][index].astype(np.float64))
        inside = (u >= 0) & (u < width - 1) & (v >= 0) & (v < height - 1) & (z > 0)
        assert inside.mean() > 0.6
        # Inverse depth is affine in the pixel coordinates on a plane, so interpolating it is exact
        # away from depth edges.
        source_inv_depth = 1.0 / d["depth"][source_index].astype(np.float64)
        relative = np.abs(_bilinear(source_inv_depth, u[inside], v[inside])[:, 0] * z[inside] - 1.0)
        assert np.median(relative) < 1e-5
        assert (relative < 1e-3).mean() > 0.75
        colour_error = np.abs(_bilinear(d[source_key][index].astype(np.float64), u[inside], v[inside])
                              - d["target"][index].reshape(-1, 3)[inside]).max(axis=1)
        assert np.median(colour_error) < 0.02
        assert (colour_error < 0.06).mean() > 0.85


def test_images_are_richly_textured(triplets):
    images = triplets["target"]
    gradient = np.abs(np.diff(images, axis=2)).mean(axis=(0, 3))  # [H, W - 1]
    assert gradient.mean() > 0.01
    height = images.shape[1]
    assert gradient[: height // 4].mean() > 0.005  # backdrop / facades
    assert gradient[-height // 4:].mean() > 0.005  # ground
    # No flat (untextured) image rows anywhere.
    assert gradient.mean(axis=1).min() > 0.002


def test_supersampling_changes_colours_only(open_scene):
    pose = open_scene.camera_to_world(3)
    K = kitti_intrinsics(32, 96)
    sharp = SyntheticScene(dataclasses.replace(open_scene.config, supersample=1))
    image_aa, depth_aa = open_scene.render(pose, K, 32, 96)
    image_1, depth_1 = sharp.render(pose, K, 32, 96)
    np.testing.assert_array_equal(depth_aa, depth_1)  # depth is always the pixel-centre ray's
    assert np.abs(image_aa - image_1).mean() < 0.02


def test_render_accepts_tensors():
    scene = SyntheticScene(SceneConfig(seed=2, num_boxes=4))
    pose, K = scene.camera_to_world(1), kitti_intrinsics(16, 48)
    image, depth = scene.render(tf.constant(pose, tf.float32), tf.constant(K), 16, 48)
    image_np, depth_np = scene.render(pose, K, 16, 48)
    assert image.shape == (16, 48, 3) and depth.shape == (16, 48)
    assert image.dtype == np.float32 and depth.dtype == np.float32
    np.testing.assert_allclose(depth, depth_np, rtol=1e-4)


def test_dataset_batches_are_deterministic_and_match_make_triplets():
    dataset = synthetic_dataset(4, 16, 48, batch_size=2, seed=3, shuffle=False, repeat=False)
    batches = list(dataset.as_numpy_iterator())
    assert len(batches) == 2
    reference = make_triplets(4, 16, 48, seed=3)
    for key in KEYS:
        assert batches[0][key].dtype == np.float32
        np.testing.assert_array_equal(np.concatenate([b[key] for b in batches]), reference[key])

    def first_batches(ds, n=3):
        return [b["target"] for b in ds.take(n).as_numpy_iterator()]

    shuffled = [first_batches(synthetic_dataset(4, 16, 48, batch_size=2, seed=3)) for _ in range(2)]
    for a, b in zip(*shuffled):
        assert a.shape == (2, 16, 48, 3)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs", [
    dict(num_samples=0), dict(height=0), dict(width=-5), dict(split="validation"),
    dict(frame_gap=0), dict(height=2.5),
])
def test_make_triplets_rejects_bad_arguments(kwargs):
    args = dict(num_samples=1, height=16, width=48)
    args.update(kwargs)
    with pytest.raises(ValueError):
        make_triplets(**args)


def test_bad_configs_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="num_frames"):
        SceneConfig(num_frames=0)
    with pytest.raises(ValueError, match="camera_height"):
        SceneConfig(camera_height=-1.0)
    with pytest.raises(ValueError, match="backdrop_distance"):
        SceneConfig(backdrop_distance=120.0)
    with pytest.raises(ValueError, match="backdrop"):
        SyntheticScene(SceneConfig(num_frames=200))  # would drive through the far backdrop
    with pytest.raises(ValueError, match="batch_size"):
        synthetic_dataset(2, 16, 48, batch_size=4)
    scene = SyntheticScene(SceneConfig(seed=0, num_boxes=0, buildings=False))
    pose, K = scene.camera_to_world(0), kitti_intrinsics(16, 48)
    with pytest.raises(ValueError, match="frame_index"):
        scene.camera_to_world(scene.num_frames)
    with pytest.raises(ValueError, match="K"):
        scene.render(pose, np.eye(2), 16, 48)
    with pytest.raises(ValueError, match="cam_to_world"):
        scene.render(pose[:3, :3], K, 16, 48)
    with pytest.raises(ValueError, match="cam_to_world"):
        scene.render(pose[None], K, 16, 48)
    with pytest.raises(ValueError, match="height"):
        scene.render(pose, K, 0, 48)
    far_away = pose.copy()
    far_away[2, 3] = 1e4
    with pytest.raises(ValueError, match="outside"):
        scene.render(far_away, K, 16, 48)
    assert synthetic.SPLITS == ("train", "val", "test")
