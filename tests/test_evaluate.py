"""Depth and pose evaluation: the protocol on exact answers, and the CLI on synthetic and real data."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import evaluation, geometry, train_config, training
from tripled_tf.data import kitti, synthetic
from tripled_tf.models.depth_model import DepthModelConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


@dataclasses.dataclass
class _Range:
    min_depth: float = 0.1
    max_depth: float = 100.0


class _OracleDepth:
    """A "model" whose σ_0 gives back ``factor`` x the ground truth of the frame it is shown.

    The frame's index is written into its top-left pixel (channel 0 = index / 255), the only way a
    traced function can tell frames apart; σ = (1/d − 1/max) / (1/min − 1/max) inverts the
    evaluation's disparity-to-depth mapping exactly (up to float32 rounding). σ_0 is at full
    resolution, so no resize blurs it.
    """

    def __init__(self, depths, factor=1.0):
        self.config = _Range()
        inverse = 1.0 / (np.asarray(depths, np.float64) * factor)
        sigma = (inverse - 1 / self.config.max_depth) / (1 / self.config.min_depth - 1 / self.config.max_depth)
        self.sigma = tf.constant(sigma, tf.float32)

    def __call__(self, images, training=False):
        index = tf.cast(tf.round(images[:, 0, 0, 0] * 255.0), tf.int32)
        return [tf.gather(self.sigma, index)]


def _indexed(images):
    images = np.array(images, np.float32)
    images[:, 0, 0, 0] = np.arange(len(images)) / 255.0
    return images


@pytest.fixture(scope="module")
def synthetic_test():
    return synthetic.make_triplets(4, 64, 96, seed=0, split="test")


@pytest.mark.parametrize("median_scaling", [True, False])
def test_a_model_predicting_the_ground_truth_scores_zero_error(synthetic_test, median_scaling):
    depth = synthetic_test["depth"]
    oracle = _OracleDepth(depth)
    values = evaluation.evaluate_depth(oracle, _indexed(synthetic_test["target"]), list(depth[..., 0]),
                                       median_scaling=median_scaling)
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log"):
        assert values[name] == pytest.approx(0.0, abs=1e-5), (name, values)
    assert values["a1"] == values["a2"] == values["a3"] == 1.0
    assert values["ratio_median"] == pytest.approx(1.0, abs=1e-5)


def test_twice_the_depth_is_exact_after_median_scaling_and_abs_rel_one_without(synthetic_test):
    depth = synthetic_test["depth"]
    oracle = _OracleDepth(depth, factor=2.0)
    images = _indexed(synthetic_test["target"])
    scaled = evaluation.evaluate_depth(oracle, images, list(depth[..., 0]), median_scaling=True)
    assert scaled["abs_rel"] == pytest.approx(0.0, abs=1e-5)
    assert scaled["ratio_median"] == pytest.approx(0.5, rel=1e-5)
    metric = evaluation.evaluate_depth(oracle, images, list(depth[..., 0]), median_scaling=False,
                                       max_depth=1000.0)
    # |2d − d| / d = 1 everywhere; δ = 2 fails all three thresholds (1.25³ < 2).
    assert metric["abs_rel"] == pytest.approx(1.0, rel=1e-5)
    assert metric["a1"] == metric["a2"] == metric["a3"] == 0.0


class _OraclePose:
    """A pose net returning the exact motion T_{i -> i+1} for the pair starting at frame i (index in
    the top-left pixel, as above), as axis-angle + translation."""

    def __init__(self, motions):
        rotations, translations = [], []
        for motion in motions:
            rvec = _rotation_to_axisangle(motion[:3, :3])
            rotations.append(rvec)
            translations.append(motion[:3, 3])
        self.axisangle = tf.constant(np.array(rotations), tf.float32)
        self.translation = tf.constant(np.array(translations), tf.float32)

    def __call__(self, frames, training=False):
        index = tf.cast(tf.round(frames[0][:, 0, 0, 0] * 255.0), tf.int32)
        return tf.gather(self.axisangle, index), tf.gather(self.translation, index)


def _rotation_to_axisangle(rotation):
    rvec, _ = cv2.Rodrigues(np.asarray(rotation, np.float64))
    return rvec[:, 0]


def test_pose_evaluation_of_exact_motions_is_zero_and_of_scaled_motions_too():
    sequence = synthetic.make_sequence(7, 32, 64, seed=1)
    poses = sequence["camera_to_world"]
    motions = np.linalg.inv(poses[1:]) @ poses[:-1]  # T_{i -> i+1}: camera i into camera i+1

    class Model:
        pose_net = _OraclePose(motions)

    frames = _indexed(sequence["frames"])
    values = evaluation.evaluate_pose(Model(), frames, poses)
    assert values["num_snippets"] == 6
    assert values["ate_mean"] == pytest.approx(0.0, abs=1e-5)
    # The protocol aligns each snippet's scale: a net right up to a global scale scores 0 too.
    scaled = motions.copy()
    scaled[:, :3, 3] *= 0.3

    class Scaled:
        pose_net = _OraclePose(scaled)

    assert evaluation.evaluate_pose(Scaled(), frames, poses)["ate_mean"] == pytest.approx(0.0, abs=1e-5)
    # A net predicting no motion is off by the distance driven (scale alignment cannot fix zero).
    still = np.tile(np.eye(4), (len(motions), 1, 1))

    class Still:
        pose_net = _OraclePose(still)

    assert evaluation.evaluate_pose(Still(), frames, poses)["ate_mean"] > 0.5


def test_pose_to_matrix_matches_the_oracle_convention():
    # The oracle's axis-angle goes through the same pose_to_matrix the real evaluation uses.
    motion = np.eye(4)
    motion[:3, :3] = cv2_rotation([0.01, -0.02, 0.03])
    motion[:3, 3] = [0.1, -0.2, 0.9]
    matrix = geometry.pose_to_matrix(tf.constant([_rotation_to_axisangle(motion[:3, :3])], tf.float32),
                                     tf.constant([motion[:3, 3]], tf.float32))[0].numpy()
    np.testing.assert_allclose(matrix, motion, atol=1e-6)


def cv2_rotation(rvec):
    return cv2.Rodrigues(np.asarray(rvec, np.float64))[0]


# ------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture(scope="module")
def run_dir(module_tmp):
    folder = module_tmp("eval") / "run"
    config = train_config.TrainConfig(model="baseline", dataset="synthetic", height=64, width=96,
                                  batch_size=1, num_steps=1, num_train_samples=2, num_val_samples=0,
                                  num_preview=1, verbose=0, run_eagerly=True, image_summary_every=0,
                                  log_dir=str(folder))
    training.train(config, DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None))
    return folder


def _evaluate(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "tripled_tf.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_synthetic_depth_table_and_json(run_dir, tmp_path):
    output = tmp_path / "eval.json"
    proc = _evaluate([f"--checkpoint={run_dir}", "--dataset=synthetic", "--num_samples=3",
                      f"--output_json={output}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(output.read_text()) == result
    for name in METRICS:
        assert np.isfinite(result[name]), (name, result)
    assert result["num_images"] == 3 and result["crop"] == "none" and result["median_scaling"]
    assert "abs_rel |   sq_rel |" in proc.stdout and "Scaling ratios | med:" in proc.stdout
    # The CLI reports what the library computes for the same model and frames.
    from tripled_tf import checkpoint
    model, _ = checkpoint.load_model(run_dir)
    data = synthetic.make_triplets(3, 64, 96, seed=0, split="test")
    expected = evaluation.evaluate_depth(model, data["target"], list(data["depth"][..., 0]))
    assert result["abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-5)


def test_cli_pose_on_a_synthetic_drive(run_dir, tmp_path):
    proc = _evaluate([f"--checkpoint={run_dir}", "--task=pose", "--dataset=synthetic",
                      "--num_samples=6"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    (values,) = result["sequences"].values()
    assert values["num_snippets"] == 5 and np.isfinite(values["ate_mean"]) and values["ate_std"] >= 0
    assert "trajectory error" in proc.stdout


def test_cli_on_the_shared_kitti_snippet_with_lidar_ground_truth(run_dir, tmp_path, shared_data):
    drive = "2011_09_26/2011_09_26_drive_0000_sync"
    split = tmp_path / "snippet.txt"
    split.write_text("".join(f"{drive} {i} l\n" for i in (0, 5, 11)))
    proc = _evaluate([f"--checkpoint={run_dir}", "--dataset=kitti",
                      f"--data_path={shared_data / 'kitti_raw'}", f"--split={split}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_images"] == 3 and result["ground_truth"] == "velodyne"
    assert result["crop"] == "garg"
    assert all(np.isfinite(result[name]) for name in METRICS)
    assert 0 < result["abs_rel"] < 2


def test_eval_frames_and_ground_truth_of_the_shared_snippet(shared_data, tmp_path):
    drive = "2011_09_26/2011_09_26_drive_0000_sync"
    split = tmp_path / "snippet.txt"
    split.write_text(f"{drive} 3 l\n")
    frames = kitti.eval_frames(shared_data / "kitti_raw", split)
    assert len(frames) == 1 and frames[0].camera == 2 and frames[0].velodyne is not None
    images, depths, source = evaluation.kitti_depth_samples(frames, 64, 192)
    assert images.shape == (1, 64, 192, 3) and source == "velodyne"
    # Native-size LiDAR map: 375x1242 for this drive, sparse (a few % of pixels), metres.
    assert depths[0].shape == (375, 1242)
    valid = depths[0] > 0
    assert 0.01 < valid.mean() < 0.2 and 1 < np.median(depths[0][valid]) < 80
    with pytest.raises(kitti.BadInputError, match="improved ground truth"):
        evaluation.kitti_depth_samples(frames, 64, 192, ground_truth="benchmark")


def test_benchmark_png_ground_truth_is_depth_times_256(tmp_path):
    depth = np.zeros((4, 5), np.uint16)
    depth[1, 2] = int(12.5 * 256)
    path = tmp_path / "0000000001.png"
    cv2.imwrite(str(path), depth)
    loaded = kitti.load_benchmark_depth(path)
    assert loaded.dtype == np.float32 and loaded[1, 2] == 12.5 and loaded.sum() == 12.5


def test_odometry_sequence_reads_poses_and_frames(tmp_path, shared_data):
    root = tmp_path / "odometry"
    (root / "sequences" / "09" / "image_2").mkdir(parents=True)
    poses_file = shared_data / "kitti_odometry" / "poses" / "09.txt"
    lines = poses_file.read_text().splitlines()[:3]
    (root / "poses").mkdir()
    (root / "poses" / "09.txt").write_text("\n".join(lines) + "\n")
    for i in range(3):
        cv2.imwrite(str(root / "sequences" / "09" / "image_2" / f"{i:06d}.png"), np.zeros((8, 8, 3), np.uint8))
    frames, poses = kitti.odometry_sequence(root, 9)
    assert len(frames) == 3 and poses.shape == (3, 4, 4)
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-6)  # KITTI poses start at the identity
    np.testing.assert_allclose(poses[2, :3, :].ravel(), np.array(lines[2].split(), float))
    os.remove(root / "sequences" / "09" / "image_2" / "000002.png")
    with pytest.raises(kitti.BadInputError, match="frame 2 of sequence 09"):
        kitti.odometry_sequence(root, 9)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint=/nonexistent/run"], "checkpoint not found"),
    (["--dataset=kitti", "--data_path=/nonexistent/kitti"], "KITTI data folder does not exist"),
])
def test_cli_bad_input_is_one_error_line(run_dir, tmp_path, args, message):
    args = args if args[0].startswith("--checkpoint") else [f"--checkpoint={run_dir}", *args]
    proc = _evaluate(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


@pytest.mark.parametrize("task", ["depth", "pose"])
def test_cli_refuses_a_model_with_nan_weights(run_dir, tmp_path, poisoned_copy, task):
    poisoned = poisoned_copy(run_dir, tmp_path / "poisoned")
    proc = _evaluate([f"--checkpoint={poisoned}", f"--task={task}", "--dataset=synthetic",
                      "--num_samples=6", f"--output_json={tmp_path / 'eval.json'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN/Inf" in errors[0] and str(poisoned) in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "eval.json").exists()
