"""Own-video source: frame folders, video files with a frame cache, intrinsics files, bad input.

All inputs are tiny files written here: moving random textures (each frame is the previous one shifted
a few pixels, so consecutive frames differ clearly) and exact duplicates for static frames.
"""
import json
import os
import pathlib

import cv2
import numpy as np
import pytest

from tripled_tf.data import image_io, video
from tripled_tf.data.records import BadInputError
from tripled_tf.data.calibration import Calibration, load_calibration
from tripled_tf.data.video import video_records

HEIGHT, WIDTH = 32, 64


def texture_frames(count, height=HEIGHT, width=WIDTH, shift=4, seed=0):
    """count BGR uint8 frames of a smooth random texture panning `shift` px per frame."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (height, width + shift * count, 3)).astype(np.float32)
    base = cv2.GaussianBlur(base, (0, 0), 1.5)
    base = (base - base.min()) / (base.max() - base.min()) * 255
    return [base[:, i * shift:i * shift + width].round().astype(np.uint8).copy() for i in range(count)]


def write_folder(folder, frames, names=None, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:04d}" for i in range(len(frames))]
    paths = []
    for name, frame in zip(names, frames):
        path = folder / f"{name}{ext}"
        assert cv2.imwrite(str(path), frame)
        paths.append(path)
    return paths


def write_video(path, frames, fps=10):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "MJPG/avi writer unavailable in this OpenCV build"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


PIXELS = dict(fx=50.0, fy=40.0, cx=32.0, cy=16.0)  # 64x32 frames -> (50/64, 40/32, 0.5, 0.5)
NORMALISED = (50 / 64, 40 / 32, 0.5, 0.5)


# ---------------------------------------------------------------------------------- folders / triplets


def test_natural_order_and_triplets(tmp_path):
    frames = texture_frames(5)
    names = ["frame_10", "frame_2", "frame_1", "frame_3", "frame_20"]  # natural: 1, 2, 3, 10, 20
    by_name = dict(zip(names, frames))
    write_folder(tmp_path / "f", [by_name[n] for n in names], names)
    ordered = [p.name for p in video.list_frame_files(tmp_path / "f")]
    assert ordered == ["frame_1.png", "frame_2.png", "frame_3.png", "frame_10.png", "frame_20.png"]

    records, report = video_records(tmp_path / "f", **PIXELS)
    assert len(report) == 0
    assert len(records) == 3  # 5 frames -> inner frames 1..3
    names_of = lambda r: tuple(pathlib.Path(p).stem for p in r.paths)
    assert [names_of(r) for r in records] == [("frame_1", "frame_2", "frame_3"),
                                              ("frame_2", "frame_3", "frame_10"),
                                              ("frame_3", "frame_10", "frame_20")]
    np.testing.assert_allclose(records[0].intrinsics, NORMALISED)


def test_natural_sort_key_numbers_by_value():
    names = ["img10.jpg", "img9.jpg", "IMG1.jpg", "img100.jpg"]
    assert sorted(names, key=video.natural_sort_key) == ["IMG1.jpg", "img9.jpg", "img10.jpg", "img100.jpg"]


def test_frame_stride_in_folder(tmp_path):
    paths = write_folder(tmp_path / "f", texture_frames(7), ext=".jpg")
    records, _ = video_records(tmp_path / "f", frame_stride=2, **PIXELS)
    # frames 0, 2, 4, 6 -> two triplets
    assert [r.paths for r in records] == [tuple(str(paths[i]) for i in (0, 2, 4)),
                                          tuple(str(paths[i]) for i in (2, 4, 6))]


def test_static_frames_are_dropped_and_counted(tmp_path):
    a, b, c, d = texture_frames(4)
    paths = write_folder(tmp_path / "f", [a, b, b, b, c, d])  # b written 3 times: 2 repeats are static
    records, report = video_records(tmp_path / "f", min_motion=0.01, **PIXELS)
    assert len(report) == 2
    assert all("static" in s for s in report.skipped)
    assert str(paths[2]) in report.skipped[0] and str(paths[3]) in report.skipped[1]
    kept = [paths[i] for i in (0, 1, 4, 5)]
    assert [r.paths for r in records] == [tuple(map(str, kept[0:3])), tuple(map(str, kept[1:4]))]
    # min_motion = 0 keeps everything: 6 frames -> 4 triplets.
    assert len(video_records(tmp_path / "f", **PIXELS)[0]) == 4


def test_motion_score_is_mean_absolute_difference():
    a = np.zeros((4, 8), np.uint8)
    b = np.full((4, 8), 51, np.uint8)
    assert video.motion_score(a, b) == pytest.approx(0.2)
    assert video.motion_score(b, b) == 0.0


# ---------------------------------------------------------------------------------------- intrinsics


@pytest.fixture
def frame_folder(tmp_path):
    write_folder(tmp_path / "frames", texture_frames(3))
    return tmp_path / "frames"


def test_intrinsics_from_json_rescaled_by_calibrated_size(tmp_path, frame_folder):
    # Calibrated at 128x64 (twice the frames' size): fx=100 px there is 50 px in the 64x32 frames.
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"fx": 100, "fy": 80, "cx": 64, "cy": 32, "width": 128, "height": 64}))
    records, _ = video_records(frame_folder, calibration=calib)
    np.testing.assert_allclose(records[0].intrinsics, NORMALISED)

    calib.write_text(json.dumps({"K": [[50, 0, 32], [0, 40, 16], [0, 0, 1]]}))
    np.testing.assert_allclose(video_records(frame_folder, calibration=calib)[0][0].intrinsics, NORMALISED)


def test_intrinsics_from_simple_yaml(tmp_path, frame_folder):
    calib = tmp_path / "calib.yaml"
    calib.write_text("# my phone, 64x32 mode\nfx: 50.0\nfy: 4.0e+1\ncx: 32   # centre\ncy: 16\n")
    np.testing.assert_allclose(video_records(frame_folder, calibration=calib)[0][0].intrinsics, NORMALISED)

    calib.write_text("camera_matrix: [[100, 0, 64],\n   [0, 80, 32], [0, 0, 1]]\nwidth: 128\nheight: 64\n")
    np.testing.assert_allclose(video_records(frame_folder, calibration=calib)[0][0].intrinsics, NORMALISED)


def test_intrinsics_from_opencv_filestorage_yaml(tmp_path, frame_folder):
    calib = tmp_path / "opencv.yml"
    storage = cv2.FileStorage(str(calib), cv2.FILE_STORAGE_WRITE)
    storage.write("image_width", 128)
    storage.write("image_height", 64)
    storage.write("camera_matrix", np.array([[100.0, 0, 64], [0, 80.0, 32], [0, 0, 1]]))
    storage.write("distortion_coefficients", np.zeros((1, 5)))
    storage.release()
    assert load_calibration(calib) == Calibration(100.0, 80.0, 64.0, 32.0, 128, 64)
    np.testing.assert_allclose(video_records(frame_folder, calibration=calib)[0][0].intrinsics, NORMALISED)


def test_intrinsics_from_ros_camera_info_yaml(tmp_path):
    calib = tmp_path / "ros.yaml"
    calib.write_text("image_width: 640\nimage_height: 480\ncamera_name: cam\ncamera_matrix:\n"
                     "  rows: 3\n  cols: 3\n  data: [500.5, 0, 319.5, 0, 501.0, 239.5, 0, 0, 1]\n"
                     "distortion_model: plumb_bob\n")
    assert load_calibration(calib) == Calibration(500.5, 501.0, 319.5, 239.5, 640, 480)


def test_calibration_with_other_aspect_ratio_is_refused(tmp_path, frame_folder):
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"fx": 100, "fy": 100, "cx": 64, "cy": 48, "width": 128, "height": 96}))
    with pytest.raises(BadInputError, match="aspect ratio") as info:
        video_records(frame_folder, calibration=calib)
    assert str(calib) in str(info.value)


@pytest.mark.parametrize("content, key", [
    ('{"fx": 50, "fy": 40, "cx": 32}', "'cy'"),
    ("fx: 50\nfy: 40\ncy: 16\n", "'cx'"),
    ("fx: 50\nfy: 40\ncx: 32\ncy: 16\nwidth: 64\n", "'height'"),
])
def test_calibration_missing_key(tmp_path, frame_folder, content, key):
    calib = tmp_path / "calib.txt"
    calib.write_text(content)
    with pytest.raises(BadInputError, match=key) as info:
        video_records(frame_folder, calibration=calib)
    assert str(calib) in str(info.value)


def test_missing_or_ambiguous_intrinsics(tmp_path, frame_folder):
    with pytest.raises(ValueError, match="calibration") as info:
        video_records(frame_folder)
    assert "fx" in str(info.value)
    with pytest.raises(ValueError, match="cy"):
        video_records(frame_folder, fx=50, fy=40, cx=32)
    with pytest.raises(ValueError, match="not both"):
        video_records(frame_folder, calibration=tmp_path / "c.json", **PIXELS)
    with pytest.raises(BadInputError, match="not found"):
        video_records(frame_folder, calibration=tmp_path / "absent.yaml")


# ----------------------------------------------------------------------------------- video and cache


def test_video_is_extracted_into_cache_with_max_side(tmp_path):
    path = write_video(tmp_path / "drive.avi", texture_frames(6, height=48, width=96))
    # Pixel intrinsics of the ORIGINAL 96x48 frames; the cache holds 48x24 frames.
    records, report = video_records(path, fx=72, fy=60, cx=48, cy=24, max_side=48)
    cache = tmp_path / "drive_frames"
    manifest = json.loads((cache / video.MANIFEST_NAME).read_text())
    assert manifest["frame_count"] == 6 and manifest["frame_stride"] == 1
    assert (manifest["source_width"], manifest["source_height"]) == (96, 48)
    assert (manifest["frame_width"], manifest["frame_height"]) == (48, 24)
    assert cv2.imread(records[0].target).shape == (24, 48, 3)
    assert len(records) == 4 and len(report) == 0
    assert all(pathlib.Path(p).parent == cache for r in records for p in r.paths)
    np.testing.assert_allclose(records[0].intrinsics, (72 / 96, 60 / 48, 0.5, 0.5))
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.avi", texture_frames(5))
    first, _ = video_records(path, **PIXELS)
    manifest = tmp_path / "clip_frames" / video.MANIFEST_NAME
    mtime = manifest.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("the video was decoded again")
    monkeypatch.setattr(video.cv2, "VideoCapture", no_decoding)
    second, _ = video_records(path, **PIXELS)
    assert [r.paths for r in second] == [r.paths for r in first]
    assert manifest.stat().st_mtime_ns == mtime


def test_cache_is_rebuilt_when_stride_or_source_changes(tmp_path):
    path = write_video(tmp_path / "clip.avi", texture_frames(7))
    cache = tmp_path / "cache"
    assert len(video_records(path, cache_dir=cache, **PIXELS)[0]) == 5
    records, _ = video_records(path, cache_dir=cache, frame_stride=2, **PIXELS)
    manifest = json.loads((cache / video.MANIFEST_NAME).read_text())
    assert manifest["frame_stride"] == 2 and manifest["frame_count"] == 4  # frames 0, 2, 4, 6
    assert sorted(p.name for p in cache.glob("*.jpg")) == ["000000.jpg", "000002.jpg", "000004.jpg",
                                                           "000006.jpg"]
    assert len(records) == 2

    write_video(path, texture_frames(4))  # the user re-records: size/mtime change
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(BadInputError, match="only 2 usable"):  # frames 0, 2 of the new video
        video_records(path, cache_dir=cache, frame_stride=2, **PIXELS)
    assert json.loads((cache / video.MANIFEST_NAME).read_text())["frame_count"] == 2


def test_interrupted_extraction_leaves_no_cache(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.avi", texture_frames(5))
    real_imwrite = cv2.imwrite
    calls = []

    def failing_imwrite(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C half-way
        return real_imwrite(*args, **kwargs)
    monkeypatch.setattr(video.cv2, "imwrite", failing_imwrite)
    with pytest.raises(KeyboardInterrupt):
        video_records(path, **PIXELS)
    assert not (tmp_path / "clip_frames").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]
    monkeypatch.setattr(video.cv2, "imwrite", real_imwrite)
    assert len(video_records(path, **PIXELS)[0]) == 3


def test_cache_missing_a_frame_is_rebuilt(tmp_path):
    path = write_video(tmp_path / "clip.avi", texture_frames(5))
    video_records(path, **PIXELS)
    (tmp_path / "clip_frames" / "000003.jpg").unlink()
    records, _ = video_records(path, **PIXELS)
    assert len(records) == 3 and all(os.path.isfile(p) for r in records for p in r.paths)


def test_foreign_cache_dir_is_not_overwritten(tmp_path):
    path = write_video(tmp_path / "clip.avi", texture_frames(5))
    mine = tmp_path / "clip_frames"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(BadInputError, match="refusing to overwrite"):
        video_records(path, **PIXELS)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"


def test_static_frames_of_a_video(tmp_path):
    a, b, c, d = texture_frames(4)
    path = write_video(tmp_path / "clip.avi", [a, b, b, b, c, d])
    records, report = video_records(path, min_motion=0.01, **PIXELS)
    assert len(report) == 2 and len(records) == 2
    assert [pathlib.Path(r.target).name for r in records] == ["000001.jpg", "000004.jpg"]


# ------------------------------------------------------------------------------------------ bad input


def test_video_that_cannot_be_opened(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"this is not a video" * 20)
    with pytest.raises(BadInputError, match="cannot open") as info:
        video_records(path, **PIXELS)
    assert str(path) in str(info.value)


def test_video_without_frames(tmp_path):
    path = tmp_path / "empty.avi"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT)).release()
    with pytest.raises(BadInputError, match="no frames") as info:
        video_records(path, **PIXELS)
    assert str(path) in str(info.value)
    assert not (tmp_path / "empty_frames").exists()


def test_truncated_video_is_refused_or_its_decoded_part_counted(tmp_path):
    path = write_video(tmp_path / "drive.avi", texture_frames(12))
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.6)])  # the header still declares 12 frames
    with pytest.raises(BadInputError, match=r"decoded \d of the 12 frames the video declares") as info:
        video_records(path, **PIXELS)
    assert str(path) in str(info.value)
    records, report = video_records(path, skip_bad_frames=True, **PIXELS)
    decoded = len(records) + 2
    assert 3 <= decoded < 12
    assert report.by_cause() == {"truncated video": 1}
    assert f"decoded {decoded} of the 12 frames" in report.skipped[0]
    complete = write_video(tmp_path / "complete.avi", texture_frames(12))
    records, report = video_records(complete, **PIXELS)  # a complete video is not flagged
    assert len(records) == 10 and len(report) == 0


def test_missing_source_empty_folder_single_image(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        video_records(tmp_path / "nothing_here.mp4", **PIXELS)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames")
    with pytest.raises(BadInputError, match="no frames found") as info:
        video_records(tmp_path / "empty", **PIXELS)
    assert str(tmp_path / "empty") in str(info.value)
    [image] = write_folder(tmp_path / "one", texture_frames(1))
    with pytest.raises(BadInputError, match="single image"):
        video_records(image, **PIXELS)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_frame_raises_or_is_skipped(tmp_path, ext):
    paths = write_folder(tmp_path / "f", texture_frames(5), ext=ext)
    _truncate(paths[2])
    with pytest.raises(BadInputError, match="truncated") as info:
        video_records(tmp_path / "f", **PIXELS)
    assert str(paths[2]) in str(info.value)
    records, report = video_records(tmp_path / "f", skip_bad_frames=True, **PIXELS)
    assert len(report) == 1 and str(paths[2]) in report.skipped[0]
    assert [pathlib.Path(r.target).name for r in records] == [paths[1].name, paths[3].name]


def test_corrupt_frame_files(tmp_path):
    paths = write_folder(tmp_path / "f", texture_frames(5))
    paths[1].write_bytes(b"GIF89a not what it claims")
    paths[3].write_bytes(b"")
    with pytest.raises(BadInputError, match="not a PNG or JPEG") as info:
        video_records(tmp_path / "f", **PIXELS)
    assert str(paths[1]) in str(info.value)
    records, report = video_records(tmp_path / "f", skip_bad_frames=True, **PIXELS)
    assert len(report) == 2 and "empty file" in report.skipped[1]
    assert len(records) == 1


def test_corrupt_image_data_caught_by_decoding(tmp_path):
    # A PNG whose header and IEND are intact but whose pixel data is garbage: the structural check
    # passes, the thumbnail decode of the motion filter catches it.
    paths = write_folder(tmp_path / "f", texture_frames(4))
    data = bytearray(paths[1].read_bytes())
    data[60:-20] = bytes(len(data) - 80)
    paths[1].write_bytes(bytes(data))
    assert image_io.check_image_file(paths[1]) == (WIDTH, HEIGHT)
    with pytest.raises(BadInputError, match="cannot be decoded") as info:
        video_records(tmp_path / "f", min_motion=0.001, **PIXELS)
    assert str(paths[1]) in str(info.value)


def test_frame_of_other_size(tmp_path):
    paths = write_folder(tmp_path / "f", texture_frames(4))
    cv2.imwrite(str(paths[2]), texture_frames(1, height=40)[0])
    with pytest.raises(BadInputError, match="64x40 but the first frame is 64x32") as info:
        video_records(tmp_path / "f", **PIXELS)
    assert str(paths[2]) in str(info.value)


def test_check_image_file_reads_sizes_from_headers(tmp_path):
    frame = texture_frames(1, height=40, width=72)[0]
    for ext in (".png", ".jpg"):
        cv2.imwrite(str(tmp_path / f"x{ext}"), frame)
        assert image_io.check_image_file(tmp_path / f"x{ext}") == (72, 40)
    with pytest.raises(BadInputError, match="not found"):
        image_io.check_image_file(tmp_path / "absent.png")


def test_bad_arguments(frame_folder):
    with pytest.raises(ValueError, match="frame_stride"):
        video_records(frame_folder, frame_stride=0, **PIXELS)
    with pytest.raises(ValueError, match="min_motion"):
        video_records(frame_folder, min_motion=-1, **PIXELS)
    with pytest.raises(ValueError, match="--fx and --fy must be positive"):
        video_records(frame_folder, fx=0, fy=40, cx=32, cy=16)


def test_real_kitti_frames_as_a_user_folder(shared_data):
    # The KITTI snippet's image_02 frames used as "my own frames" with the pixel intrinsics of its
    # calibration file (P_rect_02 of 2011_09_26: fx = fy = 721.5377, cx = 609.5593, cy = 172.854 for
    # 1242x375 frames): the normalised K must be KITTI's published one, and a driving car never looks
    # static at min_motion = 0.01.
    folder = shared_data / "kitti_raw/2011_09_26/2011_09_26_drive_0000_sync/image_02/data"
    records, report = video_records(folder, fx=721.5377, fy=721.5377, cx=609.5593, cy=172.854,
                                    min_motion=0.01)
    assert len(report) == 0 and len(records) == 10  # frames 0..11
    assert pathlib.Path(records[0].target).name == "0000000001.png"
    np.testing.assert_allclose(records[0].intrinsics,
                               (721.5377 / 1242, 721.5377 / 375, 609.5593 / 1242, 172.854 / 375))
    np.testing.assert_allclose(records[0].intrinsics, (0.58, 1.92, 0.49, 0.46), atol=0.005)
