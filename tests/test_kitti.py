"""KITTI raw reader: split files, triplets and intrinsics, calibration, Velodyne ground-truth depth."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tripled_tf.data import kitti
from tripled_tf.data.records import BadInputError
from tools import export_gt_depth

DATE = "2011_09_26"
DRIVE = f"{DATE}/{DATE}_drive_0000_sync"

# From the shared 2011_09_26 calib_cam_to_cam.txt, read by hand.
P_RECT_02_FX, P_RECT_02_FY, P_RECT_02_CX, P_RECT_02_CY = 721.5377, 721.5377, 609.5593, 172.854
P_RECT_03_CX = 609.5593
NATIVE_W, NATIVE_H = 1242, 375


def _write_split(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _raw_root(shared_data):
    return shared_data / "kitti_raw"


# ------------------------------------------------------------------------------------------------
# Split files


def test_eigen_split_has_697_lines(shared_data):
    path = kitti.split_path("eigen", splits_dir=shared_data / "splits")
    lines = kitti.read_split(path)
    assert len(lines) == 697
    assert lines[0] == ("2011_09_26/2011_09_26_drive_0002_sync", 69, "l")


def test_split_names_resolve(shared_data, tmp_path):
    splits = shared_data / "splits"
    assert kitti.split_path("eigen_zhou", splits_dir=splits).endswith(
        os.path.join("eigen_zhou", "train_files.txt"))
    assert kitti.split_path("eigen_zhou_val", splits_dir=splits).endswith("val_files.txt")
    assert kitti.split_path("odom_09", splits_dir=splits).endswith("test_files_09.txt")
    assert kitti.read_split(kitti.split_path("odom_10", splits_dir=splits))[0] == ("10", 0, "l")
    # <data_path>/splits is searched too.
    (tmp_path / "splits" / "eigen").mkdir(parents=True)
    own = _write_split(tmp_path / "splits" / "eigen" / "test_files.txt", [f"{DRIVE} 3 l"])
    assert kitti.split_path("eigen", data_path=tmp_path) == str(own)
    # A user file is returned as is.
    assert kitti.split_path(str(own)) == str(own)


def test_split_not_found_says_where_it_looked(tmp_path):
    with pytest.raises(BadInputError) as error:
        kitti.split_path("eigen", splits_dir=tmp_path / "nowhere", data_path=tmp_path)
    assert str(tmp_path / "nowhere") in str(error.value)
    assert str(tmp_path / "splits") in str(error.value)
    with pytest.raises(BadInputError, match="not a known split name"):
        kitti.split_path(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("bad_line", [f"{DRIVE} 3", f"{DRIVE} three l", f"{DRIVE} 3 x",
                                      f"{DRIVE} 3 l extra"])
def test_malformed_split_line_names_file_and_line(tmp_path, bad_line):
    path = _write_split(tmp_path / "split.txt", [f"{DRIVE} 1 l", bad_line])
    with pytest.raises(BadInputError) as error:
        kitti.read_split(path)
    assert str(path) in str(error.value) and "line 2" in str(error.value)


# ------------------------------------------------------------------------------------------------
# Triplets on the shared snippet


def test_snippet_triplets_skip_sequence_ends(shared_data, tmp_path):
    split = _write_split(tmp_path / "split.txt", [f"{DRIVE} {i} l" for i in range(12)])
    root = _raw_root(shared_data)
    records, report = kitti.kitti_records(root, str(split))
    assert [r.name for r in records] == [f"{DRIVE} {i} l" for i in range(1, 11)]
    assert len(report) == 2  # frame 0 has no previous, frame 11 no next
    assert f"{DRIVE} 0 l" in report.skipped[0] and f"{DRIVE} 11 l" in report.skipped[1]
    data = os.path.join(str(root), DRIVE, "image_02", "data")
    first = records[0]
    assert first.paths == tuple(os.path.join(data, f"{i:010d}.png") for i in (0, 1, 2))
    assert first.depth_path == os.path.join(str(root), DRIVE, "velodyne_points", "data", "0000000001.bin")
    assert all(os.path.isfile(p) for r in records for p in r.paths)
    assert records[0].intrinsics == pytest.approx((0.58, 1.92, 0.5, 0.5))


def test_snippet_frame_offsets(shared_data, tmp_path):
    split = _write_split(tmp_path / "split.txt", [f"{DRIVE} {i} l" for i in range(12)])
    records, report = kitti.kitti_records(_raw_root(shared_data), str(split), frame_offsets=(-2, 0, 2))
    assert [r.name.split()[1] for r in records] == [str(i) for i in range(2, 10)]
    assert len(report) == 4
    assert records[0].prev.endswith("0000000000.png") and records[0].next.endswith("0000000004.png")
    with pytest.raises(ValueError, match="frame_offsets"):
        kitti.kitti_records(_raw_root(shared_data), str(split), frame_offsets=(0, -1, 1))


def test_snippet_calibrated_intrinsics(shared_data, tmp_path):
    split = _write_split(tmp_path / "split.txt", [f"{DRIVE} 5 l"])
    records, _ = kitti.kitti_records(_raw_root(shared_data), str(split), use_calibration=True)
    assert records[0].intrinsics == pytest.approx(
        (P_RECT_02_FX / NATIVE_W, P_RECT_02_FY / NATIVE_H, P_RECT_02_CX / NATIVE_W, P_RECT_02_CY / NATIVE_H),
        rel=1e-6)
    # Camera 3 of drive 0005 exists for frame 0 only: no neighbours, so it is skipped and counted.
    records, report = kitti.kitti_records(_raw_root(shared_data),
                                          [(f"{DATE}/{DATE}_drive_0005_sync", 0, "r")],
                                          use_calibration=True)
    assert records == [] and len(report) == 1
    cam3 = kitti._calibrated_intrinsics(str(_raw_root(shared_data)), f"{DATE}/{DATE}_drive_0005_sync",
                                        "r", "")
    assert cam3[2] == pytest.approx(P_RECT_03_CX / NATIVE_W, rel=1e-6)


def test_split_line_pointing_nowhere(shared_data, tmp_path):
    split = _write_split(tmp_path / "split.txt", [f"{DRIVE} 5 l", f"{DRIVE} 50 l"])
    root = _raw_root(shared_data)
    with pytest.raises(BadInputError) as error:
        kitti.kitti_records(root, str(split))
    assert os.path.join(str(root), DRIVE, "image_02", "data", "0000000050") in str(error.value)
    assert str(split) in str(error.value)
    records, report = kitti.kitti_records(root, str(split), skip_bad_frames=True)
    assert len(records) == 1 and len(report) == 1 and "0000000050" in report.skipped[0]
    # The snippet has no JPEGs: requiring them makes every target missing.
    with pytest.raises(BadInputError, match=r"0000000005\.jpg"):
        kitti.kitti_records(root, str(split), image_ext="jpg")


# ------------------------------------------------------------------------------------------------
# Tiny layouts written here (JPEG frames, odometry, missing calibration)


def _tiny_drive(root, indices, ext=".png", width=16, height=8):
    data = root / DRIVE / "image_02" / "data"
    data.mkdir(parents=True)
    for i in indices:
        cv2.imwrite(str(data / f"{i:010d}{ext}"), np.full((height, width, 3), 10 * i, np.uint8))
    return data


def test_jpeg_frames_detected(tmp_path):
    data = _tiny_drive(tmp_path, range(3), ext=".jpg")
    records, report = kitti.kitti_records(tmp_path, [(DRIVE, 1, "l")])
    assert records[0].paths == tuple(str(data / f"{i:010d}.jpg") for i in range(3))
    assert records[0].depth_path is None and len(report) == 0


def test_missing_calibration_file_and_key(tmp_path):
    _tiny_drive(tmp_path, range(3))
    calib = tmp_path / DATE / "calib_cam_to_cam.txt"
    with pytest.raises(BadInputError) as error:
        kitti.kitti_records(tmp_path, [(DRIVE, 1, "l")], use_calibration=True)
    assert str(calib) in str(error.value)
    calib.write_text("calib_time: 09-Jan-2012 13:57:47\nS_rect_02: 16 8\n")
    with pytest.raises(BadInputError) as error:
        kitti.kitti_records(tmp_path, [(DRIVE, 1, "l")], use_calibration=True)
    assert str(calib) in str(error.value) and "P_rect_02" in str(error.value)
    records, report = kitti.kitti_records(tmp_path, [(DRIVE, 1, "l")], use_calibration=True,
                                          skip_bad_frames=True)
    assert records == [] and "P_rect_02" in report.skipped[0]
    calib.write_text("S_rect_02: 16 8\nP_rect_02: 8 0 7.5 1 0 4 3.5 0 0 0 1 0\n")
    records, _ = kitti.kitti_records(tmp_path, [(DRIVE, 1, "l")], use_calibration=True)
    assert records[0].intrinsics == pytest.approx((0.5, 0.5, 7.5 / 16, 3.5 / 8))


def test_odometry_layout(tmp_path):
    images = tmp_path / "sequences" / "09" / "image_2"
    images.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(images / f"{i:06d}.png"), np.zeros((10, 20, 3), np.uint8))
    (tmp_path / "sequences" / "09" / "calib.txt").write_text("P2: 10 0 9.5 0 0 5 4.5 0 0 0 1 0\n")
    records, _ = kitti.kitti_records(tmp_path, [("9", 1, "l")], use_calibration=True)
    assert records[0].target == str(images / "000001.png")
    assert records[0].intrinsics == pytest.approx((0.5, 0.5, 9.5 / 20, 4.5 / 10))  # size from the PNG


# ------------------------------------------------------------------------------------------------
# Calibration and Velodyne files


def test_read_calib_file(shared_data, tmp_path):
    calib = kitti.read_calib_file(_raw_root(shared_data) / DATE / "calib_cam_to_cam.txt")
    assert calib["P_rect_02"][[0, 2, 5, 6]] == pytest.approx(
        [P_RECT_02_FX, P_RECT_02_CX, P_RECT_02_FY, P_RECT_02_CY])
    assert list(calib["S_rect_02"]) == [NATIVE_W, NATIVE_H]
    assert "calib_time" not in calib
    missing = tmp_path / "calib_cam_to_cam.txt"
    with pytest.raises(BadInputError, match=str(missing)):
        kitti.read_calib_file(missing)
    missing.write_text("S_rect_02: 16 8\n")
    with pytest.raises(BadInputError, match="P_rect_02"):
        kitti.read_calib_file(missing, required=("P_rect_02",))


def test_velodyne_file_sizes(tmp_path):
    good = tmp_path / "good.bin"
    np.array([[1, 2, 3, 0.5], [4, 5, 6, 0.25]], np.float32).tofile(good)
    np.testing.assert_array_equal(kitti.load_velodyne_points(good), [[1, 2, 3, 0.5], [4, 5, 6, 0.25]])
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(BadInputError, match="multiple of 16") as error:
        kitti.load_velodyne_points(truncated)
    assert str(truncated) in str(error.value)
    with pytest.raises(BadInputError, match=str(tmp_path / "missing.bin")):
        kitti.load_velodyne_points(tmp_path / "missing.bin")


# A hand-made calibration: the Velodyne axes (x forward, y left, z up) rotated into the camera axes
# (x right, y down, z forward) with no offset, identity rectification, f = 100 px, c = (50, 20),
# a 100 x 40 image. A point (X, Y, Z) in Velodyne coordinates is at camera (-Y, -Z, X), so it lands at
# u = 100 * (-Y / X) + 50, v = 100 * (-Z / X) + 20 and the stored pixel is (round(u) - 1, round(v) - 1).
SIMPLE_CAM_TO_CAM = ("calib_time: 09-Jan-2012 13:57:47\n"
                     "R_rect_00: 1 0 0 0 1 0 0 0 1\n"
                     "S_rect_02: 100 40\n"
                     "P_rect_02: 100 0 50 0 0 100 20 0 0 0 1 0\n")
SIMPLE_VELO_TO_CAM = "R: 0 -1 0 0 0 -1 1 0 0\nT: 0 0 0\n"


def _simple_scan(tmp_path, points):
    (tmp_path / "calib_cam_to_cam.txt").write_text(SIMPLE_CAM_TO_CAM)
    (tmp_path / "calib_velo_to_cam.txt").write_text(SIMPLE_VELO_TO_CAM)
    scan = tmp_path / "scan.bin"
    np.array([p + (1.0,) for p in points], np.float32).tofile(scan)
    return kitti.generate_depth_map(tmp_path, scan, cam=2)


def test_single_point_projects_to_hand_computed_pixel(tmp_path):
    # (10, -1, 0.5): u = 100 * 0.1 + 50 = 60, v = 100 * -0.05 + 20 = 15 -> pixel (col 59, row 14), 10 m.
    depth = _simple_scan(tmp_path, [(10.0, -1.0, 0.5)])
    assert depth.shape == (40, 100) and depth.dtype == np.float32
    expected = np.zeros((40, 100), np.float32)
    expected[14, 59] = 10.0
    np.testing.assert_array_equal(depth, expected)


def test_nearest_point_wins_and_points_behind_are_dropped(tmp_path):
    points = [
        (20.0, -2.0, 1.0),    # u = 60, v = 15 -> (14, 59) at 20 m, behind the next point
        (10.0, -1.0, 0.5),    # same pixel at 10 m: wins
        (-10.0, 1.0, -0.5),   # behind the sensor (x < 0); its projection would also hit (14, 59)
        (10.0, -10.0, 0.0),   # u = 150: outside the image
        # The reference's duplicate index row * (W - 1) + col - 1 merges (r, W - 1) with (r + 1, 0):
        (10.0, -5.0, 0.5),    # u = 100, v = 15 -> (14, 99) at 10 m
        (5.0, 2.45, 0.2),     # u = 1, v = 16 -> (15, 0) at 5 m
        (8.0, -0.8, 0.8),     # u = 60, v = 10 -> (9, 59) at 8 m, written first
        (4.0, -0.4, 0.4),     # same pixel at 4 m, written second: still wins
    ]
    depth = _simple_scan(tmp_path, points)
    expected = np.zeros((40, 100), np.float32)
    expected[14, 59] = 10.0
    expected[14, 99] = 10.0
    expected[15, 0] = 5.0
    expected[9, 59] = 4.0
    np.testing.assert_array_equal(depth, expected)


def test_depth_map_bad_calibration(tmp_path):
    (tmp_path / "calib_cam_to_cam.txt").write_text(SIMPLE_CAM_TO_CAM)
    scan = tmp_path / "scan.bin"
    np.zeros((1, 4), np.float32).tofile(scan)
    with pytest.raises(BadInputError, match=str(tmp_path / "calib_velo_to_cam.txt")):
        kitti.generate_depth_map(tmp_path, scan)
    (tmp_path / "calib_velo_to_cam.txt").write_text("R: 0 -1 0 0 0 -1 1 0 0\n")
    with pytest.raises(BadInputError, match="missing calibration key.*T"):
        kitti.generate_depth_map(tmp_path, scan)
    with pytest.raises(BadInputError, match="P_rect_03"):
        kitti.generate_depth_map(tmp_path, scan, cam=3)
    with pytest.raises(ValueError, match="cam"):
        kitti.generate_depth_map(tmp_path, scan, cam=5)


def test_real_scan_depth_map(shared_data):
    root = _raw_root(shared_data)
    velo = root / DRIVE / "velodyne_points" / "data" / "0000000000.bin"
    depth = kitti.generate_depth_map(root / DATE, velo, cam=2)
    assert depth.shape == (NATIVE_H, NATIVE_W) and depth.dtype == np.float32
    valid = depth[depth > 0]
    # A 64-beam scan covers the lower ~2/3 of the 1242 x 375 image at ~4 beams per pixel row band:
    # 15-17k of the ~114k points (the rest are outside the camera's field of view or behind it).
    assert 14_000 < valid.size < 18_000
    assert valid.min() > 0 and valid.max() < 120
    # The lead car's back (rows 210-270, columns 590-670, see SOURCE.md): its median Velodyne forward
    # distance minus the 0.27 m between the Velodyne and the camera (T_z of calib_velo_to_cam) is the
    # 7.8 m camera depth SOURCE.md reports.
    car = depth[210:270, 590:670]
    assert (car > 0).sum() > 200
    assert np.median(car[car > 0]) - 0.2718 == pytest.approx(7.8, abs=0.15)


# ------------------------------------------------------------------------------------------------
# Ground-truth export


def test_export_round_trip(shared_data, tmp_path):
    root = _raw_root(shared_data)
    split = _write_split(tmp_path / "snippet.txt", [f"{DRIVE} {i} l" for i in (0, 7)])
    maps, names, report = export_gt_depth.export_gt_depths(root, str(split))
    assert names == [f"{DRIVE} 0 l", f"{DRIVE} 7 l"] and len(report) == 0
    output = tmp_path / "out" / "gt.npz"
    export_gt_depth.save_gt_depths(output, maps, names)
    data = np.load(output, allow_pickle=True)["data"]
    assert data.dtype == object and len(data) == 2
    for array, index in zip(data, (0, 7)):
        velo = root / DRIVE / "velodyne_points" / "data" / f"{index:010d}.bin"
        np.testing.assert_array_equal(array, kitti.generate_depth_map(root / DATE, velo))
    # A line without a scan (frame 50) raises, or is skipped and counted.
    bad = _write_split(tmp_path / "bad.txt", [f"{DRIVE} 50 l", f"{DRIVE} 1 l"])
    with pytest.raises(BadInputError, match="0000000050.bin"):
        export_gt_depth.export_gt_depths(root, str(bad))
    maps, names, report = export_gt_depth.export_gt_depths(root, str(bad), skip_bad_frames=True)
    assert names == [f"{DRIVE} 1 l"] and len(report) == 1


def test_export_command_line(shared_data, tmp_path, repo_root):
    root = _raw_root(shared_data)
    split = _write_split(tmp_path / "snippet.txt", [f"{DRIVE} 3 l"])
    output = tmp_path / "gt_depths.npz"
    result = subprocess.run(
        [sys.executable, "-m", "tools.export_gt_depth", f"--data_path={root}", f"--split={split}",
         f"--output={output}"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    archive = np.load(output, allow_pickle=True)
    velo = root / DRIVE / "velodyne_points" / "data" / "0000000003.bin"
    np.testing.assert_array_equal(archive["data"][0], kitti.generate_depth_map(root / DATE, velo))
    assert list(archive["names"]) == [f"{DRIVE} 3 l"]
