"""KITTI raw (and KITTI odometry) in their original layout: split files, triplets, calibration, LiDAR depth.

Layouts read (``<root>`` = ``data_path``):

* raw: ``<root>/<date>/<date>_drive_XXXX_sync/image_0{2,3}/data/%010d.{png,jpg}``, calibration
  ``<root>/<date>/calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt``, LiDAR
  ``<root>/<date>/<date>_drive_XXXX_sync/velodyne_points/data/%010d.bin``;
* odometry (split lines whose folder is a sequence number, e.g. ``9 0 l``):
  ``<root>/sequences/%02d/image_{2,3}/%06d.{png,jpg}`` and ``<root>/sequences/%02d/calib.txt``.

Split files use the Monodepth2 format, one ``<folder> <frame_index> <side>`` per line, side ``l`` =
camera 2 (image_02), ``r`` = camera 3 (image_03). The split files are not shipped with tripled_tf
(licence): pass their folder as ``splits_dir`` (Monodepth2's ``splits/`` folder) or put it at
``<data_path>/splits``.

Frames are PNG or JPEG (Monodepth2's jpg conversion); the extension is detected per file unless
``image_ext`` is given. Nothing here decodes images: the tf.data pipeline does, and it reports corrupt
files itself.

Public API: ``read_split``, ``split_path``, ``kitti_records``, ``read_calib_file``,
``load_velodyne_points``, ``generate_depth_map``, ``SPLIT_FILES``, ``SIDE_TO_CAMERA``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from tripled_tf.conventions import KITTI_NORMALIZED_INTRINSICS
from tripled_tf.data.image_io import IMAGE_EXTENSIONS, check_image_file, read_image
from tripled_tf.data.records import (BAD_CALIBRATION, MISSING_FILE, MISSING_NEIGHBOUR, BadInputError,
                                     SkipReport, TripletRecord, normalized_intrinsics, unreadable)

# Split names -> file inside Monodepth2's splits/ folder.
SPLIT_FILES = {
    "eigen": os.path.join("eigen", "test_files.txt"),
    # The 652 Eigen test frames that have the depth benchmark's improved ground truth.
    "eigen_benchmark": os.path.join("eigen_benchmark", "test_files.txt"),
    "eigen_zhou": os.path.join("eigen_zhou", "train_files.txt"),
    "eigen_zhou_val": os.path.join("eigen_zhou", "val_files.txt"),
    "odom_09": os.path.join("odom", "test_files_09.txt"),
    "odom_10": os.path.join("odom", "test_files_10.txt"),
}

SIDE_TO_CAMERA = {"l": 2, "r": 3}


SplitLine = Tuple[str, int, str]


# ------------------------------------------------------------------------------------------------
# Split files


def read_split(path) -> List[SplitLine]:
    """Parses a Monodepth2 split file.

    Args:
      path: the split file; one ``<folder> <frame_index> <side>`` per line (side ``l`` or ``r``),
        blank lines ignored.
    Returns:
      list of (folder, frame_index, side), e.g. ("2011_09_26/2011_09_26_drive_0002_sync", 69, "l").
    Raises:
      BadInputError naming the file (and line) if it is missing or a line is malformed.
    """
    path = os.fspath(path)
    try:
        with open(path, "r") as f:
            text = f.read()
    except OSError as e:
        raise unreadable(path, "split file", e) from None
    lines: List[SplitLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise BadInputError(path, f"line {number} {line!r}: expected '<folder> <frame_index> <side>' "
                                      f"(3 fields), got {len(fields)}")
        folder, index, side = fields
        try:
            frame_index = int(index)
        except ValueError:
            raise BadInputError(path, f"line {number} {line!r}: frame index {index!r} is not an "
                                      f"integer") from None
        if frame_index < 0:
            raise BadInputError(path, f"line {number} {line!r}: frame index must be >= 0")
        if side not in SIDE_TO_CAMERA:
            raise BadInputError(path, f"line {number} {line!r}: side must be 'l' (image_02) or 'r' "
                                      f"(image_03), got {side!r}")
        lines.append((folder, frame_index, side))
    return lines


def split_path(name_or_path, splits_dir=None, data_path=None) -> str:
    """Resolves a split name or a user split file to a file path.

    Args:
      name_or_path: an existing split file, or one of ``SPLIT_FILES`` ("eigen" -> eigen/test_files.txt,
        "eigen_zhou" -> eigen_zhou/train_files.txt, "eigen_zhou_val", "odom_09", "odom_10").
      splits_dir: Monodepth2's ``splits/`` folder (searched first).
      data_path: the KITTI root; ``<data_path>/splits`` is searched second.
    Returns:
      the path of the split file.
    Raises:
      BadInputError saying where it looked if the split cannot be found.
    """
    name = os.fspath(name_or_path)
    if os.path.isfile(name):
        return name
    if name not in SPLIT_FILES:
        raise BadInputError(name, f"not a split file and not a known split name "
                                  f"({', '.join(sorted(SPLIT_FILES))})")
    candidates = []
    for folder in (splits_dir, os.path.join(os.fspath(data_path), "splits") if data_path else None):
        if folder:
            candidates.append(os.path.join(os.fspath(folder), SPLIT_FILES[name]))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    looked = ", ".join(candidates) if candidates else "nowhere (give splits_dir or data_path)"
    raise BadInputError(name, f"split file {SPLIT_FILES[name]} not found; looked in: {looked}. The split "
                              f"files are not shipped with tripled_tf: pass Monodepth2's splits/ folder "
                              f"as splits_dir")


# ------------------------------------------------------------------------------------------------
# Calibration and LiDAR


def read_calib_file(path, required: Iterable[str] = ()) -> Dict[str, np.ndarray]:
    """Reads a KITTI calibration file (``key: v1 v2 ...`` lines) into float64 arrays.

    Text-valued entries (e.g. ``calib_time``) are left out: every value returned is numeric.

    Args:
      path: e.g. ``<root>/2011_09_26/calib_cam_to_cam.txt``.
      required: keys that must be present.
    Returns:
      dict key -> 1-D float64 array (matrices row-major, e.g. P_rect_02 has 12 values).
    Raises:
      BadInputError naming the file if it is missing, a line has no ``key:``, or a required key is
      absent.
    """
    path = os.fspath(path)
    try:
        with open(path, "r") as f:
            text = f.read()
    except OSError as e:
        raise unreadable(path, "calibration file", e) from None
    data: Dict[str, np.ndarray] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise BadInputError(path, f"line {number} {line!r}: expected 'key: values'")
        key, value = line.split(":", 1)
        try:
            data[key.strip()] = np.array([float(v) for v in value.split()], np.float64)
        except ValueError:
            pass  # a text field such as calib_time
    missing = [k for k in required if k not in data]
    if missing:
        raise BadInputError(path, f"missing calibration key(s) {', '.join(missing)} "
                                  f"(found: {', '.join(sorted(data)) or 'none'})")
    return data


def _calib_matrix(calib: Dict[str, np.ndarray], key: str, shape, path) -> np.ndarray:
    values = calib[key]
    if values.size != int(np.prod(shape)):
        raise BadInputError(path, f"calibration key {key} has {values.size} values, expected "
                                  f"{int(np.prod(shape))} ({shape[0]}x{shape[1]})")
    return values.reshape(shape)


def load_velodyne_points(path) -> np.ndarray:
    """Reads a KITTI Velodyne scan.

    Args:
      path: a ``.bin`` file of float32 (x, y, z, reflectance) records, 16 bytes each.
    Returns:
      [N, 4] float32: x forward, y left, z up in metres (Velodyne frame), reflectance in [0, 1].
      (Monodepth2 overwrites column 3 with 1 for homogeneous coordinates; we keep the reflectance.)
    Raises:
      BadInputError naming the file if it is missing, empty, or its size is not a multiple of 16 bytes.
    """
    path = os.fspath(path)
    try:
        raw = np.fromfile(path, dtype="<f4")
    except OSError as e:
        raise unreadable(path, "Velodyne scan", e) from None
    size = os.path.getsize(path)
    if size == 0:
        raise BadInputError(path, "empty Velodyne scan (0 bytes)")
    if size % 16:
        raise BadInputError(path, f"Velodyne scan of {size} bytes is not a multiple of 16 bytes "
                                  f"(4 float32 per point): truncated or not a KITTI .bin file")
    return raw.reshape(-1, 4).astype(np.float32, copy=False)


def generate_depth_map(calib_dir, velo_path, cam=2) -> np.ndarray:
    """Projects a Velodyne scan into rectified camera ``cam``: the KITTI ground-truth depth map.

    Monodepth2's ``kitti_utils.generate_depth_map(..., vel_depth=True)`` semantics (what its
    ``export_gt_depth.py`` writes for the Eigen split): points are mapped to pixels by
    ``P_rect_0cam · R_rect_00 · [R|T]_velo->cam``; points with Velodyne forward coordinate x < 0 are
    dropped; the pixel is (round(u) - 1, round(v) - 1) and is kept if it lies inside the native image
    (size ``S_rect_0cam`` of calib_cam_to_cam.txt, which is S_rect_02 for every KITTI date); the depth
    stored is the point's Velodyne forward distance x (not the camera z).

    Two deliberate differences from the reference:

    * where several points fall on one pixel the nearest (smallest depth) always wins. The reference
      finds duplicates with ``row * (W - 1) + col - 1``, an index that also merges pixel (r, W-1) with
      (r+1, 0), and then writes the minimum at the first point's pixel only, so a few border pixels get
      a neighbour's depth; here each pixel gets the minimum over exactly the points that land on it.
    * points in front of the Velodyne (x >= 0) but behind the camera's image plane (projective w <= 0,
      only possible within the ~0.27 m between the two sensors) are dropped, where the reference would
      project them through the camera centre to a mirrored pixel.

    Args:
      calib_dir: the date folder holding calib_cam_to_cam.txt and calib_velo_to_cam.txt.
      velo_path: the ``.bin`` scan (see ``load_velodyne_points``).
      cam: rectified camera index 0-3 (2 = left colour, 3 = right colour).
    Returns:
      [H, W] float32 metres (H x W = native image, 375 x 1242 on 2011_09_26), 0 where unknown.
    Raises:
      BadInputError naming the file for missing/corrupt calibration files or scans.
    """
    if cam not in (0, 1, 2, 3):
        raise ValueError(f"cam: expected a KITTI camera index 0, 1, 2 or 3, got {cam!r}")
    calib_dir = os.fspath(calib_dir)
    cam_file = os.path.join(calib_dir, "calib_cam_to_cam.txt")
    velo_file = os.path.join(calib_dir, "calib_velo_to_cam.txt")
    cam2cam = read_calib_file(cam_file, required=("R_rect_00", f"P_rect_0{cam}", f"S_rect_0{cam}"))
    velo2cam_calib = read_calib_file(velo_file, required=("R", "T"))

    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = _calib_matrix(velo2cam_calib, "R", (3, 3), velo_file)
    velo_to_cam[:3, 3] = _calib_matrix(velo2cam_calib, "T", (3, 1), velo_file)[:, 0]
    rect = np.eye(4)
    rect[:3, :3] = _calib_matrix(cam2cam, "R_rect_00", (3, 3), cam_file)
    projection = _calib_matrix(cam2cam, f"P_rect_0{cam}", (3, 4), cam_file)
    velo_to_image = projection @ rect @ velo_to_cam  # [3, 4]
    width, height = (int(round(v)) for v in _calib_matrix(cam2cam, f"S_rect_0{cam}", (1, 2),
                                                          cam_file)[0])

    points = load_velodyne_points(velo_path)
    points = points[points[:, 0] >= 0]
    homogeneous = np.concatenate([points[:, :3].astype(np.float64), np.ones((len(points), 1))], axis=1)
    projected = homogeneous @ velo_to_image.T  # [N, 3]: (w·u, w·v, w)
    in_front = projected[:, 2] > 0
    projected, points = projected[in_front], points[in_front]
    # The "- 1" is the reference's (KITTI's calibration counts pixels from 1, MATLAB style).
    cols = np.round(projected[:, 0] / projected[:, 2]) - 1
    rows = np.round(projected[:, 1] / projected[:, 2]) - 1
    inside = (cols >= 0) & (rows >= 0) & (cols < width) & (rows < height)
    cols, rows = cols[inside].astype(np.int64), rows[inside].astype(np.int64)
    forward = points[inside, 0]

    nearest = np.full(height * width, np.inf, np.float32)
    np.minimum.at(nearest, rows * width + cols, forward)
    nearest[np.isinf(nearest)] = 0.0
    return nearest.reshape(height, width)


# ------------------------------------------------------------------------------------------------
# Frame files


def _find_frame(stem: str, image_ext: Optional[str]) -> Optional[str]:
    """The existing file ``stem + ext`` (ext given, or the first of IMAGE_EXTENSIONS found)."""
    extensions = (image_ext,) if image_ext else IMAGE_EXTENSIONS
    for ext in extensions:
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def _is_odometry(folder: str) -> bool:
    return folder.isdigit()


def _frame_stem(data_path: str, folder: str, index: int, side: str) -> str:
    cam = SIDE_TO_CAMERA[side]
    if _is_odometry(folder):
        return os.path.join(data_path, "sequences", f"{int(folder):02d}", f"image_{cam}", f"{index:06d}")
    return os.path.join(data_path, folder, f"image_0{cam}", "data", f"{index:010d}")


def _velodyne_path(data_path: str, folder: str, index: int) -> Optional[str]:
    if _is_odometry(folder):
        return None
    return os.path.join(data_path, folder, "velodyne_points", "data", f"{index:010d}.bin")


def _calibrated_intrinsics(data_path: str, folder: str, side: str,
                           target: str) -> Tuple[float, float, float, float]:
    """Normalised (fx/W, fy/H, cx/W, cy/H) from the calibration of the folder's date / sequence."""
    cam = SIDE_TO_CAMERA[side]
    if _is_odometry(folder):
        path = os.path.join(data_path, "sequences", f"{int(folder):02d}", "calib.txt")
        key = f"P{cam}"
        calib = read_calib_file(path, required=(key,))
        width, height = check_image_file(target)  # odometry calib.txt has no image size
    else:
        path = os.path.join(data_path, folder.split("/")[0], "calib_cam_to_cam.txt")
        key = f"P_rect_0{cam}"
        calib = read_calib_file(path, required=(key,))
        size_key = f"S_rect_0{cam}"
        # Normalising by the calibrated size keeps K right for frames the user resized.
        if size_key in calib:
            width, height = _calib_matrix(calib, size_key, (1, 2), path)[0]
        else:
            width, height = check_image_file(target)
    p = _calib_matrix(calib, key, (3, 4), path)
    return normalized_intrinsics(p[0, 0], p[1, 1], p[0, 2], p[1, 2], width, height)


# ------------------------------------------------------------------------------------------------
# Triplets


def kitti_records(data_path, split, frame_offsets: Sequence[int] = (-1, 0, 1),
                  image_ext: Optional[str] = None, use_calibration: bool = False,
                  skip_bad_frames: bool = False, splits_dir=None
                  ) -> Tuple[List[TripletRecord], SkipReport]:
    """Turns a split into frame triplets for the pipeline.

    Args:
      data_path: the KITTI root (raw: holds the date folders; odometry: holds ``sequences/``).
      split: a split name or split file (see ``split_path``), or an already parsed list of
        (folder, frame_index, side).
      frame_offsets: (previous, 0, next) frame offsets, e.g. (-1, 0, 1) or (-2, 0, 2).
      image_ext: ".png" / ".jpg" to require one extension; None detects it per file.
      use_calibration: False -> the references' normalised KITTI K (0.58, 1.92, 0.5, 0.5); True -> the
        drive's ``P_rect_02`` / ``P_rect_03`` normalised by the native size ``S_rect_0x`` (odometry:
        ``calib.txt`` P2 / P3 and the frame's size).
      skip_bad_frames: skip and count split lines whose target frame (or calibration) is missing
        instead of raising.
      splits_dir: Monodepth2's ``splits/`` folder, for split names.
    Returns:
      (records, report): records carry the frame paths, the normalised intrinsics, the split line as
      ``name`` and the target's Velodyne scan as ``depth_path`` (None where absent). Lines whose
      neighbour frames are missing (sequence ends) are always skipped and counted in ``report`` (the
      references silently substitute the centre frame).
    Raises:
      BadInputError naming the file for a missing target frame, a missing calibration file or key, a
      malformed or missing split file (unless skipped, see skip_bad_frames).
    """
    data_path = os.fspath(data_path)
    offsets = tuple(int(o) for o in frame_offsets)
    if len(offsets) != 3 or offsets[1] != 0 or offsets[0] >= 0 or offsets[2] <= 0:
        raise ValueError(f"frame_offsets: expected (previous < 0, 0, next > 0), got {tuple(frame_offsets)}")
    if image_ext is not None:
        image_ext = image_ext if image_ext.startswith(".") else "." + image_ext
        if image_ext.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"image_ext: expected one of {IMAGE_EXTENSIONS} or None, got {image_ext!r}")
    if isinstance(split, (list, tuple)):
        source, lines = "<split list>", list(split)
    else:
        source = split_path(split, splits_dir=splits_dir, data_path=data_path)
        lines = read_split(source)
    if not os.path.isdir(data_path):
        raise BadInputError(data_path, "KITTI data folder does not exist")

    records: List[TripletRecord] = []
    report = SkipReport()
    calibration_cache: Dict[Tuple[str, str], Tuple[float, float, float, float]] = {}
    for number, (folder, index, side) in enumerate(lines, start=1):
        name = f"{folder} {index} {side}"
        frames = []
        for offset in offsets:
            frames.append(_find_frame(_frame_stem(data_path, folder, index + offset, side), image_ext))
        prev, target, nxt = frames
        try:
            if target is None:
                stem = _frame_stem(data_path, folder, index, side)
                wanted = image_ext or "{" + ",".join(IMAGE_EXTENSIONS) + "}"
                raise BadInputError(stem + wanted, f"target frame of split line {number} ({name!r}) of "
                                                   f"{source} does not exist")
            if use_calibration:
                cache_key = (folder if _is_odometry(folder) else folder.split("/")[0], side)
                if cache_key not in calibration_cache:
                    calibration_cache[cache_key] = _calibrated_intrinsics(data_path, folder, side, target)
                intrinsics = calibration_cache[cache_key]
            else:
                intrinsics = tuple(float(v) for v in KITTI_NORMALIZED_INTRINSICS)
        except BadInputError as e:
            if not skip_bad_frames:
                raise
            report.add(f"{name}: {e}", MISSING_FILE if target is None
                       else BAD_CALIBRATION)
            continue
        if prev is None or nxt is None:
            missing = [str(index + o) for o, f in zip(offsets, frames) if f is None]
            report.add(f"{name}: neighbour frame(s) {', '.join(missing)} missing",
                       MISSING_NEIGHBOUR)
            continue
        velodyne = _velodyne_path(data_path, folder, index)
        records.append(TripletRecord(prev=prev, target=target, next=nxt, intrinsics=intrinsics,
                                     name=name, depth_path=velodyne if velodyne and
                                     os.path.isfile(velodyne) else None))
    return records, report


# ------------------------------------------------------------------------------------------------
# Evaluation frames


@dataclasses.dataclass(frozen=True)
class EvalFrame:
    """One target frame of an evaluation split and where its ground truth can come from.

    name: the split line ("<folder> <index> <side>"); image: the frame file; velodyne: its Velodyne
    scan (None when absent); calib_dir: the date folder holding calib_cam_to_cam.txt /
    calib_velo_to_cam.txt; camera: 2 (left, image_02) or 3 (right, image_03); benchmark_depth: the
    improved ground truth PNG of KITTI's depth benchmark (``proj_depth/groundtruth/image_0X``), None
    when absent.
    """
    name: str
    image: str
    velodyne: Optional[str]
    calib_dir: str
    camera: int
    benchmark_depth: Optional[str]


def eval_frames(data_path, split, splits_dir=None, image_ext: Optional[str] = None) -> List[EvalFrame]:
    """The target frames of an evaluation split (no neighbours needed, unlike ``kitti_records``).

    Args:
      data_path: KITTI raw root (holds the date folders).
      split: a split name ("eigen", ...) or the path of any split file in the raw layout — e.g. a few
        lines naming frames of one drive.
      splits_dir: Monodepth2's ``splits/`` folder, for split names.
    Returns:
      one EvalFrame per split line, in the file's order.
    Raises:
      BadInputError naming the file for a missing data folder, split file or target frame.
    """
    data_path = os.fspath(data_path)
    if not os.path.isdir(data_path):
        raise BadInputError(data_path, "KITTI data folder does not exist")
    source = split_path(split, splits_dir=splits_dir, data_path=data_path)
    frames = []
    for number, (folder, index, side) in enumerate(read_split(source), start=1):
        name = f"{folder} {index} {side}"
        if _is_odometry(folder):
            raise BadInputError(source, f"line {number} ({name!r}) names an odometry sequence: depth "
                                        f"evaluation needs KITTI raw drives (date/drive folders)")
        stem = _frame_stem(data_path, folder, index, side)
        image = _find_frame(stem, image_ext)
        if image is None:
            raise BadInputError(stem + (image_ext or ".png"), f"frame of split line {number} ({name!r}) "
                                                               f"of {source} does not exist")
        camera = SIDE_TO_CAMERA[side]
        velodyne = _velodyne_path(data_path, folder, index)
        benchmark = os.path.join(data_path, folder, "proj_depth", "groundtruth", f"image_0{camera}",
                                 f"{index:010d}.png")
        frames.append(EvalFrame(name=name, image=image,
                                velodyne=velodyne if os.path.isfile(velodyne) else None,
                                calib_dir=os.path.join(data_path, folder.split("/")[0]), camera=camera,
                                benchmark_depth=benchmark if os.path.isfile(benchmark) else None))
    return frames


def load_benchmark_depth(path) -> np.ndarray:
    """KITTI depth-benchmark ground truth: a uint16 PNG of depth × 256 (0 = no measurement) ->
    [H, W] float32 metres."""
    import cv2
    path = os.fspath(path)
    depth = read_image(path, cv2.IMREAD_ANYDEPTH)
    if depth.dtype != np.uint16:
        raise BadInputError(path, f"ground-truth depth PNG must be 16-bit (depth × 256), got {depth.dtype}")
    return depth.astype(np.float32) / 256.0


def odometry_sequence(data_path, sequence: int, poses_path=None, image_ext: Optional[str] = None,
                      camera: int = 2) -> Tuple[List[str], np.ndarray]:
    """Frames and ground-truth poses of a KITTI odometry sequence (the pose protocol's 09 / 10).

    Args:
      data_path: KITTI odometry root holding ``sequences/XX/image_2``; poses_path: its poses file
        (default ``<data_path>/poses/XX.txt``).
    Returns:
      (frame paths in order, [M, 4, 4] float64 camera-to-world poses, metres); M frames, one per pose
      line.
    Raises:
      BadInputError for a missing poses file, a malformed line or a missing frame.
    """
    data_path = os.fspath(data_path)
    poses_path = os.fspath(poses_path) if poses_path else os.path.join(data_path, "poses",
                                                                       f"{int(sequence):02d}.txt")
    try:
        rows = np.loadtxt(poses_path, dtype=np.float64, ndmin=2)
    except OSError as e:
        raise unreadable(poses_path, "poses file", e) from None
    except ValueError as e:
        raise BadInputError(poses_path, f"malformed poses file ({e})") from None
    if rows.shape[1] != 12:
        raise BadInputError(poses_path, f"expected 12 numbers per line (a 3x4 pose), got {rows.shape[1]}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    side = {2: "l", 3: "r"}[camera]
    frames = []
    for index in range(len(rows)):
        stem = _frame_stem(data_path, f"{int(sequence):02d}", index, side)
        frame = _find_frame(stem, image_ext)
        if frame is None:
            raise BadInputError(stem + (image_ext or ".png"), f"frame {index} of sequence "
                                                               f"{int(sequence):02d} does not exist")
        frames.append(frame)
    return frames, poses
