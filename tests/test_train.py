"""The training entry point (python -m tripled_tf.train): a smoke run's run folder, the shared KITTI
snippet, and user errors as one line (bad sizes, truncated or undecodable frames, skipped split lines,
videos without intrinsics, fewer triplets than a batch).
"""
import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import checkpoint, evaluation
from tripled_tf.data import synthetic
def _run_train(args, tmp_path):
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "tripled_tf.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_cli_smoke_run_leaves_a_complete_run_folder(tmp_path, repo_root):
    run_dir = tmp_path / "run"
    proc = _run_train([f"--flagfile={repo_root / 'configs' / 'demo_baseline.cfg'}", "--height=64",
                       "--width=128", "--batch_size=1", "--num_steps=2", "--num_train_samples=2",
                       "--num_val_samples=2", "--num_preview=2", "--verbose=0",
                       "--depth_layers=10", "--pose_layers=10", f"--log_dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("abs_rel_before", "abs_rel_after", "checkpoint", "preview"):
        assert key in result
    assert result["steps"] == 2
    assert pathlib.Path(result["checkpoint"]).is_file()
    preview = cv2.imread(result["preview"])
    assert preview.shape == (2 * 64, 3 * 128, 3)  # 2 rows of input | prediction | ground truth
    assert checkpoint.latest_checkpoint(run_dir)["step"] == 2
    # Reloading the checkpoint reproduces the reported held-out AbsRel exactly.
    model, config = checkpoint.load_model(run_dir)
    val = synthetic.make_triplets(2, 64, 128, seed=config["train"]["seed"], split="val")
    reloaded = evaluation.evaluate_depth(model, val["target"], val["depth"])
    assert reloaded["abs_rel"] == pytest.approx(result["abs_rel_after"], rel=1e-4)


def test_train_cli_rejects_bad_size(tmp_path):
    proc = _run_train(["--height=100", "--num_steps=1", f"--log_dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0
    assert "multiples of 32" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, names", [
    (["--learning_rate=-1"], "learning_rate"),
    (["--decay_steps=100,abc"], "--decay_steps"),
    (["--log_dir={file}"], "{file}"),
])
def test_train_cli_user_errors_are_one_line_without_help_text(tmp_path, args, names):
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, not a run folder")
    args = [a.format(file=not_a_folder) for a in args]
    proc = _run_train(["--model=baseline", "--depth_layers=10", "--height=64", "--width=64",
                       "--num_steps=1", f"--log_dir={tmp_path / 'r'}", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and names.format(file=not_a_folder) in errors[0], proc.stderr[-3000:]
    # No traceback and no flag help (absl's usage text lists every flag, ~250 lines).
    assert "Traceback" not in proc.stderr and "--helpfull" not in proc.stdout + proc.stderr
    assert "--pose_layers" not in proc.stdout + proc.stderr


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def test_train_cli_on_the_shared_kitti_snippet(tmp_path, shared_data):
    drive = "2011_09_26/2011_09_26_drive_0000_sync"
    split = tmp_path / "train.txt"
    split.write_text("".join(f"{drive} {i} l\n" for i in range(12)))
    val = tmp_path / "val.txt"
    val.write_text(f"{drive} 5 l\n")
    proc = _run_train(["--dataset=kitti", f"--data_path={shared_data / 'kitti_raw'}",
                       f"--split={split}", f"--val_split={val}", "--height=64", "--width=192",
                       "--model=baseline", "--depth_layers=10", "--pose_layers=10", "--run_eagerly",
                       "--batch_size=2", "--num_steps=2", "--pose_height=0", "--pose_width=0",
                       "--num_preview=1", "--verbose=0", f"--log_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # frames 0 and 11 have no neighbour on one side: skipped and reported, not crashed on
    assert "kitti: 10 training triplets (skipped 2" in proc.stdout
    result = _last_json(proc.stdout)
    assert result["metrics_before"]["num_images"] == 1  # frame 5, ground truth from its Velodyne scan
    assert 0 < result["abs_rel_after"] < 1
    assert cv2.imread(result["preview"]).shape == (64, 3 * 192, 3)


def test_train_cli_stops_on_a_truncated_frame_naming_it(tmp_path):
    frames = synthetic.make_triplets(2, 64, 192, seed=1)["target"]
    folder = tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync" / "image_02" / "data"
    folder.mkdir(parents=True)
    for i in range(4):
        ok, png = cv2.imencode(".png", (frames[i % 2] * 255).astype(np.uint8))
        data = png.tobytes()
        (folder / f"{i:010d}.png").write_bytes(data[:len(data) // 2] if i == 2 else data)
    split = tmp_path / "split.txt"
    split.write_text("2011_09_26/2011_09_26_drive_0001_sync 1 l\n2011_09_26/2011_09_26_drive_0001_sync 2 l\n")
    proc = _run_train(["--dataset=kitti", f"--data_path={tmp_path}", f"--split={split}",
                       "--height=64", "--width=192", "--batch_size=2", "--num_steps=2",
                       "--pose_height=0", "--pose_width=0", "--verbose=0", "--model=baseline",
                       "--depth_layers=10", "--pose_layers=10", "--run_eagerly",
                       f"--log_dir={tmp_path / 'run'}"],
                      tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "0000000002.png" in last and "truncated PNG" in last


def _kitti_folder_of_synthetic_frames(root, count, bad=(), empty=False):
    """``root``/2011_09_26/2011_09_26_drive_0001_sync/image_02/data with ``count`` 64x192 PNG frames;
    the frames in ``bad`` truncated, or every frame zero bytes with ``empty``."""
    frames = synthetic.make_triplets(2, 64, 192, seed=1)["target"]
    drive = root / "2011_09_26" / "2011_09_26_drive_0001_sync"
    folder = drive / "image_02" / "data"
    folder.mkdir(parents=True)
    for i in range(count):
        ok, png = cv2.imencode(".png", (frames[i % 2] * 255).astype(np.uint8))
        data = b"" if empty else png.tobytes()
        (folder / f"{i:010d}.png").write_bytes(data[:len(data) // 2] if i in bad else data)
    return drive


_TINY_RUN = ["--height=64", "--width=192", "--batch_size=1", "--num_steps=2", "--pose_height=0",
             "--pose_width=0", "--verbose=0", "--model=baseline", "--depth_layers=10", "--pose_layers=10",
             "--run_eagerly", "--num_preview=1", "--image_summary_every=0"]


def test_train_cli_counts_frames_skipped_while_decoding_and_bad_lidar_scans(tmp_path, shared_data):
    drive = _kitti_folder_of_synthetic_frames(tmp_path, 6, bad={3})  # frame 3: in 3 of the 4 triplets
    real = shared_data / "kitti_raw" / "2011_09_26"
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        (tmp_path / "2011_09_26" / name).write_bytes((real / name).read_bytes())
    scans = drive / "velodyne_points" / "data"
    scans.mkdir(parents=True)
    scan = (real / "2011_09_26_drive_0000_sync" / "velodyne_points" / "data" / "0000000000.bin").read_bytes()
    (scans / "0000000001.bin").write_bytes(scan)
    (scans / "0000000002.bin").write_bytes(scan[:1000 * 16 + 5])  # not a whole number of points
    lines = "".join(f"2011_09_26/2011_09_26_drive_0001_sync {i} l\n" for i in (1, 2, 3, 4))
    (tmp_path / "split.txt").write_text(lines)
    (tmp_path / "val.txt").write_text("".join(lines.splitlines(keepends=True)[:2]))
    proc = _run_train(["--dataset=kitti", f"--data_path={tmp_path}", f"--split={tmp_path / 'split.txt'}",
                       f"--val_split={tmp_path / 'val.txt'}", "--num_val_samples=2", "--skip_bad_frames",
                       *_TINY_RUN, "--summary_every=2", f"--log_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Before decoding nothing is known to be bad; afterwards the console says what was dropped.
    assert "kitti: 4 training triplets (nothing skipped)" in proc.stdout
    assert "kitti held-out frames: skipped 1 [1 bad LiDAR scan]: " in proc.stdout
    assert "kitti: training data skipped 3 [3 unreadable file]: " in proc.stdout
    assert proc.stdout.count("warning: skipped 2011_09_26/2011_09_26_drive_0001_sync") == 3
    result = _last_json(proc.stdout)
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == result
    skipped = result["skipped_samples"]
    assert skipped["train"]["total"] == 3 and skipped["train"]["by_cause"] == {"unreadable file": 3}
    assert skipped["held_out"]["by_cause"] == {"bad LiDAR scan": 1}
    assert "0000000002.bin" in skipped["held_out"]["first"][0]
    assert result["metrics_before"]["num_images"] == 1  # frame 1, the scan that reads
    # TensorBoard too: by step 2 (two passes over the one good triplet) all three bad ones were met.
    skipped_curve = {event.step: float(tf.make_ndarray(value.tensor))
                     for path in (tmp_path / "run" / "logs").rglob("events.out.tfevents*")
                     for event in tf.compat.v1.train.summary_iterator(str(path))
                     for value in event.summary.value if value.tag == "skipped_samples"}
    assert skipped_curve == {2: 3.0}


def test_train_cli_with_no_decodable_frame_stops_with_one_line(tmp_path):
    _kitti_folder_of_synthetic_frames(tmp_path, 12, empty=True)
    (tmp_path / "split.txt").write_text("".join(f"2011_09_26/2011_09_26_drive_0001_sync {i} l\n"
                                                for i in range(1, 11)))
    proc = _run_train(["--dataset=kitti", f"--data_path={tmp_path}", f"--split={tmp_path / 'split.txt'}",
                       "--skip_bad_frames", "--num_val_samples=0", *_TINY_RUN,
                       f"--log_dir={tmp_path / 'run'}"], tmp_path)  # hung forever before
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert "none of the 10 samples can be used" in errors[0] and "10 unreadable file" in errors[0]
    assert "--skip_bad_frames" not in errors[0]  # it is on: no hint to turn it on


def test_train_cli_with_every_split_line_skipped_is_one_error_line(tmp_path):
    _kitti_folder_of_synthetic_frames(tmp_path, 4)  # no calibration files for --use_calibration
    (tmp_path / "split.txt").write_text("2011_09_26/2011_09_26_drive_0001_sync 1 l\n"
                                        "2011_09_26/2011_09_26_drive_0001_sync 2 l\n")
    proc = _run_train(["--dataset=kitti", f"--data_path={tmp_path}", f"--split={tmp_path / 'split.txt'}",
                       "--use_calibration", "--skip_bad_frames", "--num_val_samples=0", *_TINY_RUN,
                       f"--log_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert "0 usable training triplets" in errors[0] and "2 bad calibration" in errors[0]
    assert "calib_cam_to_cam.txt" in errors[0]


def test_train_cli_video_that_cannot_be_opened(tmp_path):
    video = tmp_path / "drive.mp4"
    video.write_bytes(b"not a video at all")
    proc = _run_train(["--dataset=video", f"--data_path={video}", "--fx=100", "--fy=100", "--cx=50",
                       "--cy=30", "--num_steps=1", "--model=baseline", f"--log_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(video) in last


def _frame_folder(tmp_path, count):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(synthetic.make_triplets(count, 64, 192, seed=2)["target"]):
        cv2.imwrite(str(folder / f"{i:04d}.png"), (frame * 255).astype(np.uint8))
    return folder


def test_train_cli_video_without_intrinsics_names_the_flags(tmp_path):
    folder = _frame_folder(tmp_path, 4)
    proc = _run_train(["--dataset=video", f"--data_path={folder}", "--num_steps=1",
                       "--model=baseline", f"--log_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no camera intrinsics") and "--fx" in last and "--calibration" in last


def test_train_cli_fewer_triplets_than_a_batch_names_batch_size(tmp_path):
    folder = _frame_folder(tmp_path, 4)  # 4 frames: 2 triplets
    proc = _run_train(["--dataset=video", f"--data_path={folder}", "--fx=100", "--fy=100",
                       "--cx=96", "--cy=32", "--height=64", "--width=192", "--batch_size=4",
                       "--num_steps=1", "--model=baseline", f"--log_dir={tmp_path / 'run'}"],
                      tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "2 usable training triplets" in last and "--batch_size" in last
