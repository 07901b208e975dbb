"""python -m tripled_tf.predict: an image, a folder, a video, point clouds, metric scale from the camera
height, and bad input.

A 1-step ResNet-10 baseline at 64x64 (trained once per module) stands in for a real model where the
plumbing is under test; where the numbers are under test, an analytic "model" that predicts the exact
disparity of a flat ground plane takes its place through :class:`inference.DepthFunction`.
"""
import io
import json
import math
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tripled_tf import frame_sources, ground_plane, inference, prediction
from tripled_tf.data.records import BadInputError

REPO = pathlib.Path(__file__).resolve().parents[1]
VERTEX = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]


def _run_predict(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "tripled_tf.predict", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _image(height, width, seed):
    """[H, W, 3] uint8 BGR: a smooth gradient plus noise (content is irrelevant to a 1-step model)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    return np.clip(ramp + rng.uniform(0, 55, (height, width, 3)), 0, 255).astype(np.uint8)


def _write_image(path, height, width, seed=0):
    assert cv2.imwrite(str(path), _image(height, width, seed))
    return path


def _read_ply(path):
    """(header lines, [N, 3] float32 points, [N, 3] uint8 colours) of an x y z red green blue PLY."""
    data = pathlib.Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    count = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    assert [line for line in header if line.startswith("property")] == [
        "property float x", "property float y", "property float z", "property uchar red",
        "property uchar green", "property uchar blue"]
    if header[1] == "format binary_little_endian 1.0":
        vertices = np.frombuffer(data[end:], dtype=VERTEX)
        points = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1)
        colors = np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=1)
    else:
        assert header[1] == "format ascii 1.0"
        table = np.loadtxt(io.BytesIO(data[end:]), ndmin=2)
        points, colors = table[:, :3].astype(np.float32), table[:, 3:].astype(np.uint8)
    assert len(points) == count
    return header, points, colors


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# A tiny trained run folder


@pytest.fixture(scope="module")
def run_dir(module_tmp):
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.train_config import TrainConfig
    from tripled_tf.training import train

    log_dir = module_tmp("predict_model") / "run"
    train(TrainConfig(model="baseline", dataset="synthetic", height=64, width=64, batch_size=1,
                      num_steps=1, num_train_samples=2, num_val_samples=0, num_preview=1, verbose=0,
                      run_eagerly=True, image_summary_every=0, log_dir=str(log_dir)),
          DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None))
    return log_dir


@pytest.fixture(scope="module")
def image_run(run_dir, module_tmp):
    """The CLI on one 50x70 image (not a multiple of 32) with a binary point cloud."""
    folder = module_tmp("predict_image")
    image = _write_image(folder / "street.png", 50, 70, seed=1)
    out = folder / "out"
    proc = _run_predict([f"--input={image}", f"--checkpoint={run_dir}", f"--output_dir={out}", "--ply",
                         "--fx=60", "--fy=55", "--cx=34.5", "--cy=24"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    K = np.array([[60, 0, 34.5], [0, 55, 24], [0, 0, 1.0]])
    return {"image": image, "out": out, "proc": proc, "K": K}


def test_single_image_outputs_are_at_the_original_size(image_run, run_dir):
    out = image_run["out"]
    summary = _last_json(image_run["proc"].stdout)
    assert summary["frames"] == 1 and summary["output_dir"] == str(out)
    assert summary["scale"] == "relative" and summary["scale_factor"] == 1.0
    colour = cv2.imread(str(out / "street_depth.png"))
    disp = np.load(out / "street_sigmoid.npy")
    depth = np.load(out / "street_depth.npy")
    assert colour.shape == (50, 70, 3)
    assert disp.shape == depth.shape == (50, 70) and disp.dtype == depth.dtype == np.float32
    assert 0 <= disp.min() and disp.max() <= 1
    # depth = 1 / (1/max_depth + (1/min_depth − 1/max_depth)·σ), the documented relation
    config = json.loads((run_dir / "config.json").read_text())["model"]
    inverse = 1 / config["max_depth"] + (1 / config["min_depth"] - 1 / config["max_depth"]) * disp
    np.testing.assert_allclose(depth, 1 / inverse, rtol=1e-4)
    index = json.loads((out / "predictions.json").read_text())
    assert index["scale"] == "relative" and index["model_input_size"] == [64, 64]
    assert index["intrinsics"]["source"].startswith("--fx=60 --fy=55 --cx=34.5 --cy=24")
    frame, = index["frames"]
    assert frame["size"] == [50, 70] and frame["source"] == str(image_run["image"])
    assert frame["files"] == {"depth_png": "street_depth.png", "sigmoid_npy": "street_sigmoid.npy",
                              "depth_npy": "street_depth.npy", "ply": "street.ply"}
    assert not list(out.glob("*.tmp"))


def test_point_cloud_is_the_backprojected_depth(image_run):
    out = image_run["out"]
    header, points, colors = _read_ply(out / "street.ply")
    assert header[1] == "format binary_little_endian 1.0"
    assert len(points) == 50 * 70
    depth = np.load(out / "street_depth.npy")
    rgb = cv2.cvtColor(cv2.imread(str(image_run["image"])), cv2.COLOR_BGR2RGB)
    K_inv = np.linalg.inv(image_run["K"])
    for v, u in ((0, 0), (41, 13), (49, 69)):  # vertices are in row-major pixel order
        expected = depth[v, u] * K_inv @ np.array([u, v, 1.0])
        np.testing.assert_allclose(points[v * 70 + u], expected, rtol=1e-5)
        np.testing.assert_array_equal(colors[v * 70 + u], rgb[v, u])


def test_folder_in_natural_order_matches_the_evaluation_recipe(run_dir, tmp_path):
    from tripled_tf import checkpoint, evaluation

    folder = tmp_path / "frames"
    folder.mkdir()
    _write_image(folder / "frame_10.png", 64, 64, seed=2)  # already at the model's size
    _write_image(folder / "frame_2.jpg", 40, 90, seed=3)
    _write_image(folder / "frame_1.png", 96, 128, seed=4)
    depth_fn = inference.load_depth_fn(run_dir)
    assert depth_fn.input_size == (64, 64)
    summary = prediction.predict_source(frame_sources.FrameSource(folder), depth_fn, tmp_path / "out",
                                     progress=False)
    assert summary["frames"] == 3
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [f["stem"] for f in index["frames"]] == ["frame_1", "frame_2", "frame_10"]
    assert [f["size"] for f in index["frames"]] == [[96, 128], [40, 90], [64, 64]]
    for frame in index["frames"]:
        assert np.load(tmp_path / "out" / frame["files"]["depth_npy"]).shape == tuple(frame["size"])
    # A frame at the model's size goes through exactly the library's evaluation path.
    model, _ = checkpoint.load_model(run_dir)
    image = cv2.cvtColor(cv2.imread(str(folder / "frame_10.png")), cv2.COLOR_BGR2RGB) / np.float32(255)
    expected = evaluation.predict_depths(model, image[None])[0]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "frame_10_depth.npy"), expected, rtol=1e-4)


def test_video_writes_every_frame_and_a_side_by_side_video(run_dir, tmp_path):
    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (80, 48))
    assert writer.isOpened()
    for i in range(4):
        writer.write(_image(48, 80, seed=10 + i))
    writer.release()
    out = tmp_path / "out"
    proc = _run_predict([f"--input={video}", f"--checkpoint={run_dir}", f"--output_dir={out}",
                         "--batch_size=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _last_json(proc.stdout)
    assert summary["frames"] == 4 and summary["side_by_side"] == str(out / "drive_depth.mp4")
    index = json.loads((out / "predictions.json").read_text())
    assert [f["stem"] for f in index["frames"]] == [f"drive_{i:06d}" for i in range(4)]
    assert index["side_by_side"] == "drive_depth.mp4"
    for i in range(4):
        assert np.load(out / f"drive_{i:06d}_depth.npy").shape == (48, 80)
    capture = cv2.VideoCapture(str(out / "drive_depth.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 4 and frames[0].shape == (48, 160, 3)  # frame | colour depth
    assert not list(out.glob("*.partial.mp4")) and not list(out.glob("*.tmp"))


def test_a_truncated_video_is_predicted_as_far_as_it_decodes_with_a_warning(tmp_path, capsys):
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 32))
    for i in range(12):
        writer.write(_image(32, 64, seed=i))
    writer.release()
    data = video.read_bytes()
    video.write_bytes(data[:int(len(data) * 0.6)])  # the header still declares 12 frames
    constant = inference.DepthFunction(lambda images: np.full((len(images), 16, 32), 0.5, np.float32),
                                       (32, 64), 0.1, 100.0)
    summary = prediction.predict_source(frame_sources.FrameSource(video), constant, tmp_path / "out",
                                     side_by_side=False, progress=False)
    assert 0 < summary["frames"] < 12 and summary["missing_frames"] == 12 - summary["frames"]
    warning = f"warning: {video}: decoded {summary['frames']} of the 12 frames the video declares"
    assert warning in capsys.readouterr().err
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert index["missing_frames"] == 12 - summary["frames"]


# ------------------------------------------------------------------------------------------------
# Metric scale from the camera height, from first principles


def _ground_depth(height, width, K, camera_height, pitch_deg=0.0, far=80.0):
    """Exact z-depth of a flat ground plane seen by a camera camera_height metres above it, pitched
    down by pitch_deg: the plane is {P : n·P = h} with n = (0, cos θ, sin θ) in the camera frame (y
    down), so the ray r = K⁻¹[u, v, 1] meets it at depth Z = h / (n·r); rays that miss it see `far`."""
    theta = math.radians(pitch_deg)
    normal = np.array([0.0, math.cos(theta), math.sin(theta)])
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    along = rays @ normal
    with np.errstate(divide="ignore"):
        return np.where(along > 0, np.minimum(camera_height / along, far), far)


def test_scale_from_camera_height_recovers_an_unknown_factor():
    K = np.array([[150.0, 0, 99.5], [0, 150.0, 59.5], [0, 0, 1]])
    truth = _ground_depth(120, 200, K, camera_height=1.5, pitch_deg=5.0)
    truth[:, 110:141] = np.minimum(truth[:, 110:141], 4.0)  # a car's back 4 m ahead occludes the road
    factor = 0.37  # what a monocular network's relative depth is off by
    noise = 1 + 0.02 * np.random.default_rng(0).standard_normal(truth.shape)
    fit = ground_plane.scale_from_camera_height(truth * factor * noise, K, camera_height=1.5)
    assert fit.scale * factor == pytest.approx(1.0, rel=0.01)
    assert fit.distance == pytest.approx(1.5 * factor, rel=0.01)
    assert fit.tilt_deg == pytest.approx(5.0, abs=0.2)
    assert 0.6 < fit.inlier_fraction < 0.95  # the car is rejected, the road kept


def test_scale_from_camera_height_refuses_a_wall():
    K = np.array([[150.0, 0, 99.5], [0, 150.0, 59.5], [0, 0, 1]])
    with pytest.raises(ground_plane.GroundPlaneError, match="horizontal"):
        ground_plane.scale_from_camera_height(np.full((120, 200), 5.0), K, camera_height=1.5)


class _PlaneModel:
    """A 'network' whose σ is the exact disparity of `depths` (queued, one per frame) at its output
    pixels' centres. A plane's inverse depth is affine in (u, v), so the 2x bilinear upsampling to the
    frame size reproduces it exactly (up to the clamped last row / column)."""

    def __init__(self, depths, min_depth=0.1, max_depth=100.0):
        self.depths, self.min_depth, self.max_depth = list(depths), min_depth, max_depth

    def __call__(self, images):
        out = []
        for _ in range(len(images)):
            depth = self.depths.pop(0)
            height, width = depth.shape
            # an affine 1/Z at the 2x2 block centre (2j + 0.5, 2i + 0.5) is the block's mean
            inverse = (1 / depth).reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
            out.append((inverse - 1 / self.max_depth) / (1 / self.min_depth - 1 / self.max_depth))
        return np.stack(out).astype(np.float32)


def _plane_depth_fn(depths):
    model = _PlaneModel(depths)
    return inference.DepthFunction(model, (64, 96), model.min_depth, model.max_depth, "analytic plane")


def test_metric_depth_and_point_cloud_from_camera_height(tmp_path):
    K = np.array([[60.0, 0, 47.5], [0, 60.0, 31.5], [0, 0, 1]])
    truth = _ground_depth(64, 96, K, camera_height=1.6)
    folder = tmp_path / "frames"
    folder.mkdir()
    _write_image(folder / "a.png", 64, 96)
    factor = 0.4
    intrinsics = frame_sources.resolve_intrinsics(fx=60.0, fy=60.0, cx=47.5, cy=31.5)
    summary = prediction.predict_source(frame_sources.FrameSource(folder), _plane_depth_fn([truth * factor]),
                                     tmp_path / "out", intrinsics=intrinsics, ply=True, ply_binary=False,
                                     camera_height=1.6, progress=False)
    assert summary["scale"].startswith("metric (camera height 1.6 m, plane fit")
    assert summary["scale_factor"] == pytest.approx(1 / factor, rel=0.01)
    depth = np.load(tmp_path / "out" / "a_depth.npy")
    ground = slice(40, 64)
    np.testing.assert_allclose(depth[ground], truth[ground], rtol=0.02)
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert index["units"] == "metres" and index["frames"][0]["ground_plane"]["tilt_deg"] < 1.0
    assert index["intrinsics"] == {"source": intrinsics.source, "used_for": ["ply", "camera_height"]}
    header, points, _ = _read_ply(tmp_path / "out" / "a.ply")
    assert header[1] == "format ascii 1.0" and len(points) == 64 * 96
    # The road lies 1.6 m below the camera (y down): the scale is right in the point cloud too.
    ground_points = points.reshape(64, 96, 3)[ground]
    np.testing.assert_allclose(ground_points[..., 1], 1.6, rtol=0.02)


def test_a_failing_frame_leaves_no_index_and_no_partial_file(tmp_path):
    K = np.array([[60.0, 0, 47.5], [0, 60.0, 31.5], [0, 0, 1]])
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("f1.png", "f2.png"):
        _write_image(folder / name, 64, 96)
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("{}")  # from an earlier run: must not vouch for this one
    intrinsics = frame_sources.resolve_intrinsics(fx=60.0, fy=60.0, cx=47.5, cy=31.5)
    wall = np.full((64, 96), 5.0)  # frame 2 sees no ground
    with pytest.raises(BadInputError, match="f2.png: --camera_height: no ground plane"):
        prediction.predict_source(frame_sources.FrameSource(folder),
                               _plane_depth_fn([_ground_depth(64, 96, K, 1.6), wall]), out,
                               intrinsics=intrinsics, camera_height=1.6, batch_size=1, progress=False)
    assert (out / "f1_depth.npy").is_file() and not (out / "f2_depth.npy").exists()
    assert not (out / "predictions.json").exists() and not list(out.glob("*.tmp"))


# ------------------------------------------------------------------------------------------------
# Bad input: one `error:` line naming the path, exit code 2, no predictions.json


def _bad_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not a picture")
    return [f"--input={path}"], str(path)


def _empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return [f"--input={tmp_path / 'empty'}"], str(tmp_path / "empty")


def _truncated_frame_in_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        _write_image(folder / f"{i}.png", 32, 32, seed=i)
    data = (folder / "2.png").read_bytes()
    (folder / "2.png").write_bytes(data[:len(data) // 2])
    return [f"--input={folder}"], str(folder / "2.png")


def _unopenable_video(tmp_path):
    path = tmp_path / "drive.mp4"
    path.write_bytes(b"not a video at all")
    return [f"--input={path}"], str(path)


def _missing_checkpoint(tmp_path):
    image = _write_image(tmp_path / "a.png", 32, 32)
    return [f"--input={image}", f"--checkpoint={tmp_path / 'no_such_run'}"], str(tmp_path / "no_such_run")


def _size_not_multiple_of_32(tmp_path):
    image = _write_image(tmp_path / "a.png", 32, 32)
    return [f"--input={image}", "--height=50"], "--height=50: the model's input size must be"


@pytest.mark.parametrize("case", [_bad_image, _empty_folder, _truncated_frame_in_folder,
                                  _unopenable_video, _missing_checkpoint, _size_not_multiple_of_32])
def test_bad_input_is_one_error_line_and_exit_code_2(case, run_dir, tmp_path):
    args, named = case(tmp_path)
    if not any(a.startswith("--checkpoint=") for a in args):
        args.append(f"--checkpoint={run_dir}")
    out = tmp_path / "out"
    proc = _run_predict([*args, f"--output_dir={out}"], tmp_path)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert named in errors[0]
    assert not (out / "predictions.json").exists()


def test_helpfull_states_the_scale_assumption(tmp_path):
    proc = _run_predict(["--helpfull"], tmp_path)  # absl exits 1 after printing help
    text = " ".join(proc.stdout.split())
    assert "--camera_height" in text and "flat road" in text and "roughly level" in text


def test_a_model_with_nan_weights_is_refused_with_one_error_line(run_dir, tmp_path, poisoned_copy):
    poisoned = poisoned_copy(run_dir, tmp_path / "poisoned")
    image = _write_image(tmp_path / "a.png", 32, 32)
    out = tmp_path / "out"
    proc = _run_predict([f"--input={image}", f"--checkpoint={poisoned}", f"--output_dir={out}"], tmp_path)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert str(poisoned) in errors[0] and "NaN/Inf for 1 of 1 images" in errors[0]
    assert not out.exists() or not list(out.iterdir())  # no all-NaN depth map, no predictions.json
