"""Depth for your own images and videos.

    python -m tripled_tf.predict --checkpoint=runs/demo --input=PATH --output_dir=DIR [--flag=value ...]

``--input`` is one image, a folder of PNG/JPEG images (natural order: ``frame_2`` before ``frame_10``)
or a video file OpenCV decodes (mp4, avi, mkv, ...). ``--checkpoint`` is a training run folder
(``config.json`` + ``checkpoints/``), an exported SavedModel or a .tflite file. Each frame is resized to the model's input size (the training size
unless ``--height/--width`` say otherwise; multiples of 32), predicted, and the result resized back to
the frame's ORIGINAL size. Per frame, ``--output_dir`` receives

    <stem>_depth.png   the disparity in the magma colour map (near = bright; robust 95th-percentile
                       normalisation per frame)
    <stem>_disp.npy    float32 [H, W]: the network's sigmoid disparity σ in [0, 1], scale-free
    <stem>_depth.npy   float32 [H, W]: depth = scale / (1/max_depth + (1/min_depth - 1/max_depth)·σ)
    <stem>.ply         with --ply: a coloured point cloud (x y z red green blue, one vertex per pixel)

and, for a video, ``<video stem>_depth.mp4`` (frame | colour depth side by side; ``--noside_by_side``
to skip it). ``predictions.json`` lists every frame, its files, the scale and the intrinsics used; it
is written last, only when every frame succeeded, so a folder without it is an interrupted or failed
run. Every other file is written under a temporary name and renamed, so no file is ever half-written.
The last line on stdout is one JSON object summarising the run.

Scale. A monocular network predicts depth up to an unknown factor: without ``--camera_height`` the
outputs are RELATIVE (the network's own units, labelled ``"scale": "relative"``). With
``--camera_height=METRES`` each frame is given metric scale from the ground plane, ASSUMING the camera
looks at a flat road (or floor) that fills the bottom third of the image around its centre, and is
roughly level (its pitch and roll within ±30°; a dash-cam or a car-mounted camera). The pixels of
that region are back-projected with the intrinsics, a plane is fitted robustly (RANSAC, then least
squares on its inliers, see :func:`scale_from_camera_height`), and depth is multiplied by
camera_height / (the camera's distance to that plane). The result is only as right as the assumption
and the intrinsics: a car or a wall filling the region, a hill, a tilted mount or a wrong focal
length give a wrong scale. A frame where no plausible plane is found stops the run with an error.

Intrinsics (used for ``--ply`` and ``--camera_height``): ``--fx --fy --cx --cy`` in pixels of the
original frames, or ``--calib=FILE`` (the calibration formats of ``tripled_tf.data.video``), or by
default the KITTI-like normalised intrinsics the networks are trained with (fx = 0.58 W, fy = 1.92 H,
cx = 0.5 W, cy = 0.5 H of each frame) - a stand-in, stated in predictions.json.

Models: ``--checkpoint`` is a training run folder, an exported SavedModel folder or a .tflite file
(``python -m tripled_tf.export``); :func:`tripled_tf.inference.load_depth_fn` tells them apart. Exported
models run at their exported size only (no ``--height/--width``). Frames are resized to the model's
size as the training pipeline resizes them (lanczos3 with antialiasing, ``edge.resample``).

Bad input (missing or unreadable file, empty folder, a video OpenCV cannot open, a missing
checkpoint, a size that is not a multiple of 32) stops the run with one line ``error: ...`` naming the
problem and the path on stderr, and exit code 2.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tripled_tf import checkpoint as run_folder  # noqa: E402  (numpy only; no TensorFlow)
from tripled_tf import visualize  # noqa: E402
from tripled_tf.cli import exit_with_error  # noqa: E402
from tripled_tf.data.records import BadInputError  # noqa: E402
from tripled_tf.inference import DepthFunction, check_model_path, load_depth_fn  # noqa: E402,F401
from tripled_tf.data.video import (IMAGE_EXTENSIONS, Calibration, check_frame_file,  # noqa: E402
                                   list_frame_files, load_calibration)

# A single-image --input may also be one of these (OpenCV decodes them; no cheap structural check).
EXTRA_IMAGE_EXTENSIONS = (".bmp", ".tif", ".tiff", ".webp")
PREDICTIONS_FILE = "predictions.json"
STRIDE = 32  # the encoder's total stride: input sides must be multiples of it

# Ground-plane region and fit defaults (fractions of the frame; see scale_from_camera_height).
GROUND_ROWS = (2.0 / 3.0, 1.0)
GROUND_COLS = (0.25, 0.75)

SCALE_ASSUMPTION = (
    "ASSUMES a flat road / floor fills the bottom third of the image around its centre and the camera "
    "is roughly level (pitch and roll within 30 degrees): a plane is fitted to those pixels "
    "(back-projected with the intrinsics) and depth is scaled so that the camera is camera_height "
    "metres above it.")


class PredictError(ValueError):
    """A request that cannot be carried out (bad flag combination, bad input size)."""


class GroundPlaneError(ValueError):
    """No plausible ground plane in the lower image (see :func:`scale_from_camera_height`)."""


# ----------------------------------------------------------------------------------------------------
# Geometry (numpy only)


def _intrinsics_3x3(K) -> np.ndarray:
    K = np.asarray(K, np.float64)
    if K.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"K: expected [3, 3] or [4, 4], got shape {list(K.shape)}")
    return K[:3, :3]


def backproject_depth(depth: np.ndarray, K) -> np.ndarray:
    """Lifts every pixel of a depth map to a 3-D point in the camera frame.

    P(u, v) = depth(u, v) · K⁻¹ [u, v, 1]ᵀ, with pixel centres at integer (u, v) and the camera frame
    x right, y down, z forward (``tripled_tf.geometry``'s conventions).

    Args:
      depth: [H, W] z-depth (metres, or relative units).
      K: [3, 3] or [4, 4] intrinsics in pixels of this H x W image.
    Returns:
      [H, W, 3] float64 points, in the units of ``depth``.
    """
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected [H, W], got shape {list(depth.shape)}")
    return _backproject_window(depth, K, 0, 0)


def _backproject_window(depth: np.ndarray, K, top: int, left: int) -> np.ndarray:
    """:func:`backproject_depth` of a crop whose top-left pixel is (left, top) in the full image."""
    height, width = depth.shape
    u, v = np.meshgrid(np.arange(left, left + width, dtype=np.float64),
                       np.arange(top, top + height, dtype=np.float64))
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1)
    rays = pixels @ np.linalg.inv(_intrinsics_3x3(K)).T
    return rays * depth[..., None]


def _plane_residuals(points: np.ndarray, normals: np.ndarray, distances: np.ndarray) -> np.ndarray:
    # |n·P − d| / d is, for a point on the ray of a pixel, |Z / Z_plane − 1|: its depth's relative
    # deviation from the plane's depth at that pixel. Relative, because monocular depth errors grow with
    # depth and the depth map's units are unknown.
    return np.abs(points @ normals.T - distances) / distances


def _fit_plane_least_squares(points: np.ndarray) -> Tuple[np.ndarray, float]:
    """Plane n·P = d through points [M, 3] as m = n / d minimising Σ (P_i·m − 1)², i.e. the squared
    relative depth residuals of :func:`_plane_residuals`. Not orthogonal (total) least squares: depth
    noise moves points along their rays, not isotropically, and tilts a TLS plane (measured: 0.85%
    scale bias at 2% depth noise); here noise only attenuates m by O(noise²)."""
    m, *_ = np.linalg.lstsq(points, np.ones(len(points)), rcond=None)
    length = float(np.linalg.norm(m))
    if not np.isfinite(length) or length == 0:
        return np.array([0.0, 1.0, 0.0]), 0.0
    return m / length, 1.0 / length


@dataclasses.dataclass(frozen=True)
class GroundPlane:
    """A ground plane fitted to a depth map and the metric scale it implies.

    Attributes:
      scale: camera_height / distance: multiply the depth map by it to get metres.
      distance: the camera's distance to the plane, in the depth map's units.
      normal: unit plane normal in the camera frame (x right, y down, z forward), pointing down.
      tilt_deg: angle between the normal and the camera's y axis (0 = level camera).
      inlier_fraction: share of the region's pixels whose depth is within ``inlier_tolerance`` of the
        plane's depth at that pixel.
      num_points: pixels used for the fit.
    """
    scale: float
    distance: float
    normal: Tuple[float, float, float]
    tilt_deg: float
    inlier_fraction: float
    num_points: int

    def as_dict(self) -> Dict:
        return {"scale": self.scale, "distance": self.distance, "normal": list(self.normal),
                "tilt_deg": self.tilt_deg, "inlier_fraction": self.inlier_fraction,
                "num_points": self.num_points}


def scale_from_camera_height(depth: np.ndarray, K, camera_height: float,
                             rows: Tuple[float, float] = GROUND_ROWS,
                             cols: Tuple[float, float] = GROUND_COLS,
                             inlier_tolerance: float = 0.05, max_tilt_deg: float = 30.0,
                             min_inlier_fraction: float = 0.3, max_points: int = 5000,
                             iterations: int = 256, seed: int = 0) -> GroundPlane:
    """Metric scale of a relative depth map from the camera's known height above a flat ground.

    Assumption: the pixels in ``rows`` x ``cols`` (fractions of the image; default the bottom third,
    centre half) mostly see a flat ground plane, and the camera is roughly level (the plane's normal
    within ``max_tilt_deg`` of the camera's y axis). Those pixels are back-projected with K
    (:func:`backproject_depth`), a plane is fitted by RANSAC (hypotheses through 3 points; only
    near-horizontal planes below the camera are considered; a point is an inlier when its depth is
    within ``inlier_tolerance``, relative, of the plane's depth at that pixel), then refitted by least
    squares of the relative depth residuals on the inliers, twice (outliers trimmed each time). The
    scale is camera_height / (the camera's distance to the plane). Deterministic for a given ``seed``.

    Args:
      depth: [H, W] z-depth in any consistent units (> 0; others are ignored).
      K: [3, 3] or [4, 4] intrinsics in pixels of this image.
      camera_height: the camera's height above the ground, metres.
    Returns:
      :class:`GroundPlane` (scale and fit diagnostics).
    Raises:
      GroundPlaneError: too few valid pixels, or no near-horizontal plane below the camera holding at
        least ``min_inlier_fraction`` of the region's pixels.
    """
    if not (np.isfinite(camera_height) and camera_height > 0):
        raise ValueError(f"camera_height must be a positive number of metres, got {camera_height}")
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected [H, W], got shape {list(depth.shape)}")
    height, width = depth.shape
    top, left = int(math.floor(rows[0] * height)), int(math.floor(cols[0] * width))
    region = depth[top:int(math.ceil(rows[1] * height)), left:int(math.ceil(cols[1] * width))]
    points = _backproject_window(region, K, top, left).reshape(-1, 3)
    region_depth = region.reshape(-1)
    points = points[np.isfinite(region_depth) & (region_depth > 0)]
    if len(points) < 20:
        raise GroundPlaneError(f"only {len(points)} valid depth pixels in the ground region")
    if len(points) > max_points:
        points = points[np.random.default_rng(seed).choice(len(points), max_points, replace=False)]

    rng = np.random.default_rng(seed)
    triples = points[rng.integers(0, len(points), size=(iterations, 3))]
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    usable = lengths > 0
    normals = normals / np.where(usable, lengths, 1.0)[:, None]
    normals *= np.where(normals[:, 1] < 0, -1.0, 1.0)[:, None]
    distances = np.einsum("ij,ij->i", normals, triples[:, 0])
    cos_max_tilt = math.cos(math.radians(max_tilt_deg))
    # The level-camera assumption prunes walls and car backs before they can win on inlier count.
    usable &= (normals[:, 1] >= cos_max_tilt) & (distances > 0)
    if not usable.any():
        raise GroundPlaneError(f"no plane within {max_tilt_deg:g} degrees of horizontal below the camera "
                               "through the ground region's pixels")
    normals, distances = normals[usable], distances[usable]
    counts = (_plane_residuals(points, normals, distances) < inlier_tolerance).sum(axis=0)
    normal, distance = normals[np.argmax(counts)], float(distances[np.argmax(counts)])

    for _ in range(2):
        inliers = _plane_residuals(points, normal[None], np.array([distance]))[:, 0] < inlier_tolerance
        if inliers.sum() < 3:
            break
        normal, distance = _fit_plane_least_squares(points[inliers])
        if distance <= 0 or normal[1] <= 0:
            break
    if distance <= 0 or normal[1] <= 0:  # y is down: a plane below the camera has n_y > 0
        raise GroundPlaneError("the fitted plane is not below the camera")
    inliers = _plane_residuals(points, normal[None], np.array([distance]))[:, 0] < inlier_tolerance
    tilt = math.degrees(math.acos(min(1.0, float(normal[1]))))
    fraction = float(inliers.mean())
    if tilt > max_tilt_deg:
        raise GroundPlaneError(f"the best plane is tilted {tilt:.1f} degrees from horizontal (more than "
                               f"{max_tilt_deg:g}): is the camera level and the road visible?")
    if fraction < min_inlier_fraction:
        raise GroundPlaneError(f"only {100 * fraction:.0f}% of the ground region's pixels lie on one "
                               f"plane (need {100 * min_inlier_fraction:.0f}%)")
    return GroundPlane(scale=float(camera_height / distance), distance=distance,
                       normal=tuple(float(x) for x in normal), tilt_deg=tilt, inlier_fraction=fraction,
                       num_points=int(len(points)))


# ----------------------------------------------------------------------------------------------------
# Atomic output files


def _atomic_write(path: pathlib.Path, write: Callable[[object], None]) -> str:
    """Writes through ``write(binary_handle)`` into a temporary file renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(path)


def save_npy(path, array: np.ndarray) -> str:
    """np.save, atomically (np.save on a handle: given a path it would append a second .npy)."""
    return _atomic_write(pathlib.Path(path), lambda handle: np.save(handle, array))


def write_ply(path, points: np.ndarray, colors: np.ndarray, binary: bool = True,
              comment: str = "") -> str:
    """A coloured point cloud as PLY (one ``x y z red green blue`` vertex per point), atomically.

    Args:
      points: [N, 3] coordinates (written as float32).
      colors: [N, 3] uint8 RGB.
      binary: binary_little_endian (compact, fast) or ascii.
    """
    points = np.asarray(points, np.float32).reshape(-1, 3)
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    if len(points) != len(colors):
        raise ValueError(f"{len(points)} points but {len(colors)} colours")
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
    header += [f"comment {line}" for line in comment.splitlines() if line]
    header += [f"element vertex {len(points)}", "property float x", "property float y",
               "property float z", "property uchar red", "property uchar green", "property uchar blue",
               "end_header"]
    head = ("\n".join(header) + "\n").encode("ascii")

    def write(handle):
        handle.write(head)
        if binary:
            vertices = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                    ("red", "u1"), ("green", "u1"), ("blue", "u1")])
            vertices["x"], vertices["y"], vertices["z"] = points.T
            vertices["red"], vertices["green"], vertices["blue"] = colors.T
            handle.write(vertices.tobytes())
        else:
            table = np.concatenate([points.astype(np.float64), colors.astype(np.float64)], axis=1)
            np.savetxt(handle, table, fmt=["%.7g"] * 3 + ["%d"] * 3)

    return _atomic_write(pathlib.Path(path), write)


# ----------------------------------------------------------------------------------------------------
# Models


def check_input_size(height: int, width: int) -> Tuple[int, int]:
    """(height, width) if both are positive multiples of 32, else PredictError saying what to use."""
    if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
        def nearest(x):
            return max(STRIDE, int(round(x / STRIDE)) * STRIDE)
        raise PredictError(f"--height={height} --width={width}: the model's input size must be positive "
                           f"multiples of {STRIDE} (the encoder's stride); e.g. --height={nearest(height)} "
                           f"--width={nearest(width)}")
    return int(height), int(width)


# ----------------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass
class Frame:
    """One input frame: ``bgr`` [H, W, 3] uint8 as OpenCV decodes it, the output file ``stem``, and
    ``source`` (a file path, or ``<video>#<frame index>``)."""
    stem: str
    source: str
    bgr: np.ndarray


def _decode_image(path: pathlib.Path) -> np.ndarray:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        check_frame_file(path)  # OpenCV decodes a truncated JPEG silently as grey-padded
    try:
        data = np.fromfile(str(path), np.uint8)  # imdecode also copes with non-ASCII paths
    except OSError as error:
        raise BadInputError(path, f"cannot read image: {error}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.size == 0:
        raise BadInputError(path, "cannot be decoded as an image")
    return image


class FrameSource:
    """Frames of an image, a folder of images or a video, opened and checked up front.

    Attributes:
      kind: "image", "folder" or "video".
      path: the input path.
      count: number of frames (a video's count is OpenCV's estimate; None when unknown).
      fps: a video's frame rate (None for images).
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.fps: Optional[float] = None
        self._capture = None
        self._first: Optional[np.ndarray] = None
        self._files: List[pathlib.Path] = []
        self._stems: List[str] = []
        suffix = self.path.suffix.lower()
        if self.path.is_dir():
            self.kind = "folder"
            self._files = list_frame_files(self.path)
            if not self._files:
                raise BadInputError(self.path, "no images in the folder (expected "
                                               f"{', '.join(IMAGE_EXTENSIONS)} files directly in it)")
            for file in self._files:  # header + end marker of every file before any work is done
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    check_frame_file(file)
            self._stems = _unique_stems(self._files)
            self.count = len(self._files)
        elif self.path.is_file() and suffix in IMAGE_EXTENSIONS + EXTRA_IMAGE_EXTENSIONS:
            self.kind = "image"
            self._first = _decode_image(self.path)
            self.count = 1
        elif self.path.is_file():
            self.kind = "video"
            self._capture = cv2.VideoCapture(str(self.path))
            if not self._capture.isOpened():
                raise BadInputError(self.path, "OpenCV cannot open it as a video (unsupported codec / "
                                               "container, or not a video file)")
            ok, frame = self._capture.read()
            if not ok or frame is None:
                self.close()
                raise BadInputError(self.path, "the video has no frames that OpenCV can decode")
            self._first = frame
            fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps if np.isfinite(fps) and fps > 0 else None
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.count = count if count > 0 else None
        else:
            raise BadInputError(self.path, "not found (expected an image, a folder of images or a "
                                           "video file)")

    def __iter__(self) -> Iterator[Frame]:
        if self.kind == "image":
            yield Frame(self.path.stem, str(self.path), self._first)
        elif self.kind == "folder":
            for file, stem in zip(self._files, self._stems):
                yield Frame(stem, str(file), _decode_image(file))
        else:
            index, frame = 0, self._first
            while frame is not None:
                yield Frame(f"{self.path.stem}_{index:06d}", f"{self.path}#{index}", frame)
                ok, frame = self._capture.read()
                frame = frame if ok else None
                index += 1
            self.close()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def _kind_text(source: FrameSource) -> str:
    return {"image": "an image", "folder": "a folder", "video": "a video"}[source.kind]


def _unique_stems(files: Sequence[pathlib.Path]) -> List[str]:
    # a.png and a.jpg in one folder would otherwise overwrite each other's outputs
    stems = [f.stem for f in files]
    return [f"{f.stem}_{f.suffix[1:].lower()}" if stems.count(f.stem) > 1 else f.stem for f in files]


# ----------------------------------------------------------------------------------------------------
# Intrinsics


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """Where a frame's K comes from: pixel values, a calibration file, or the KITTI default.

    Attributes:
      calibration: the given intrinsics (a :class:`Calibration`; with its own image size, rescaled to
        each frame), or None for the KITTI-like default scaled to each frame.
      source: a description for predictions.json.
      path: the calibration file, named by errors (a calibrated size of another aspect ratio).
    """
    calibration: Optional[Calibration] = None
    source: str = ("default KITTI-like normalised intrinsics (fx = 0.58 W, fy = 1.92 H, cx = 0.5 W, "
                   "cy = 0.5 H of each frame; not your camera's)")
    path: str = ""

    @property
    def is_default(self) -> bool:
        return self.calibration is None

    def matrix(self, width: int, height: int) -> np.ndarray:
        """[3, 3] float64 K in pixels of a width x height frame."""
        if self.calibration is None:
            from tripled_tf import geometry  # TensorFlow: only once a model is running anyway

            return geometry.kitti_intrinsics(height, width)[:3, :3].astype(np.float64)
        fx, fy, cx, cy = self.calibration.normalized(width, height, self.path or self.source)
        return np.array([[fx * width, 0, cx * width], [0, fy * height, cy * height], [0, 0, 1]],
                        np.float64)


def resolve_intrinsics(fx=None, fy=None, cx=None, cy=None, calib: str = "") -> Intrinsics:
    """Intrinsics from --fx --fy --cx --cy (pixels of the original frames) or --calib, else the default."""
    given = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    if calib:
        if any(v is not None for v in given.values()):
            raise PredictError("give either --calib or --fx --fy --cx --cy, not both")
        return Intrinsics(load_calibration(calib), f"calibration file {calib}", str(calib))
    missing = [k for k, v in given.items() if v is None]
    if len(missing) == 4:
        return Intrinsics()
    if missing:
        raise PredictError(f"missing --{' --'.join(missing)}: give all four of --fx --fy --cx --cy "
                           "(pixels of the original frames) or --calib=FILE")
    if not (fx > 0 and fy > 0 and np.isfinite([fx, fy, cx, cy]).all()):
        raise PredictError(f"--fx and --fy must be positive, got fx={fx}, fy={fy}")
    return Intrinsics(Calibration(float(fx), float(fy), float(cx), float(cy)),
                      f"--fx={fx:g} --fy={fy:g} --cx={cx:g} --cy={cy:g} (pixels of the original frames)")


# ----------------------------------------------------------------------------------------------------
# Prediction


class _Progress:
    """A one-line frame counter on stderr: redrawn in place on a terminal, else a line every 10 s."""

    def __init__(self, total: Optional[int], enabled: bool = True, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.last = time.monotonic()
        self.drawn = False

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if not self.enabled or not (self.tty or now - self.last >= 10.0):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        text = f"predict: {self.done}" + (f"/{self.total}" if self.total else "") + " frames"
        text += f"  {rate:.1f} frames/s"
        if self.total and self.total > self.done:
            text += f"  ETA {(self.total - self.done) / max(rate, 1e-9):.0f}s"
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()
        self.drawn = self.tty

    def close(self) -> None:
        if self.drawn:  # end the redrawn line so a following message starts on its own line
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _to_model_input(bgr: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 BGR -> [h, w, 3] float32 RGB in [0, 1] at the model's input size, resized as the
    training pipeline resizes frames (the edge runtime does the same)."""
    from edge.resample import prepare_image

    return prepare_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


def _side_by_side(bgr: np.ndarray, colour_rgb: np.ndarray) -> np.ndarray:
    frame = np.concatenate([bgr, cv2.cvtColor(colour_rgb, cv2.COLOR_RGB2BGR)], axis=1)
    if frame.shape[0] % 2:  # MPEG-4 needs even sides; the width is 2W already
        frame = np.concatenate([frame, np.zeros_like(frame[:1])], axis=0)
    return frame


class _VideoOut:
    """The side-by-side video, written under a temporary name and renamed when complete."""

    def __init__(self, path: pathlib.Path, fps: float):
        self.path, self.fps = path, fps
        self.tmp = path.with_name(path.stem + ".partial" + path.suffix)  # OpenCV picks the container
        self.writer = None                                               # by the extension

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                self.writer = None
                raise BadInputError(self.path, "OpenCV cannot write an mp4v video here (no MPEG-4 "
                                               "encoder in this OpenCV build?); use --noside_by_side")
        self.writer.write(frame)

    def finish(self) -> Optional[str]:
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)
        return str(self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.tmp.exists():
            self.tmp.unlink()


def predict_source(source: FrameSource, depth_fn: DepthFunction, output_dir,
                   input_size: Optional[Tuple[int, int]] = None,
                   intrinsics: Optional[Intrinsics] = None, ply: bool = False,
                   ply_binary: bool = True, camera_height: Optional[float] = None,
                   side_by_side: bool = False, batch_size: int = 4, progress: bool = True) -> Dict:
    """Predicts every frame of ``source`` and writes the outputs (see the module docstring).

    Args:
      source: the frames (:class:`FrameSource`).
      depth_fn: the model (:func:`load_depth_fn`).
      output_dir: folder for the outputs (created).
      input_size: (height, width) the frames are resized to for the model, multiples of 32; default
        ``depth_fn.input_size``.
      intrinsics: K per frame for --ply / --camera_height; default the KITTI-like stand-in.
      ply: also write ``<stem>.ply`` (binary little-endian, or ASCII with ``ply_binary=False``).
      camera_height: metres above a flat ground in the lower image: metric scale per frame (see
        :func:`scale_from_camera_height` for the assumption); None = relative depth.
      side_by_side: for a video, also write ``<video stem>_depth.mp4`` (frame | colour depth).
    Returns:
      The summary: frames, output_dir, scale, scale_factor (the median over frames), predictions
      (path of predictions.json), side_by_side (path or None), seconds.
    Raises:
      BadInputError naming the file (unreadable frame, no ground plane in a frame with
      camera_height), PredictError (bad size / options). predictions.json is then not written.
    """
    from tripled_tf.evaluation import disparity_to_depth_at  # TensorFlow; loaded with the model anyway

    start = time.monotonic()
    input_size = check_input_size(*(input_size or depth_fn.input_size))
    if input_size != tuple(depth_fn.input_size) and not depth_fn.any_size:
        raise PredictError(f"{depth_fn.description}: this model only takes {depth_fn.input_size[0]}x"
                           f"{depth_fn.input_size[1]} input; drop --height/--width")
    if side_by_side and source.kind != "video":
        raise PredictError(f"--side_by_side needs a video --input; {source.path} is {_kind_text(source)}")
    if camera_height is not None and not (np.isfinite(camera_height) and camera_height > 0):
        raise PredictError(f"--camera_height must be a positive number of metres, got {camera_height}")
    intrinsics = intrinsics or Intrinsics()
    output_dir = pathlib.Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise BadInputError(output_dir, "--output_dir exists and is not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    # A previous run's index must not vouch for a mix of its files and this run's.
    (output_dir / PREDICTIONS_FILE).unlink(missing_ok=True)
    metric = camera_height is not None
    units = "metres" if metric else "relative"

    video = (_VideoOut(output_dir / f"{source.path.stem}_depth.mp4", source.fps or 10.0)
             if side_by_side else None)
    bar = _Progress(source.count, enabled=progress and source.kind != "image")
    records: List[Dict] = []
    try:
        frames = iter(source)
        while True:
            chunk = [frame for _, frame in zip(range(max(1, batch_size)), frames)]
            if not chunk:
                break
            disps = np.asarray(depth_fn.predict(np.stack([_to_model_input(f.bgr, input_size)
                                                          for f in chunk])), np.float32)
            for frame, disp in zip(chunk, disps):
                height, width = frame.bgr.shape[:2]
                disp_full = cv2.resize(disp, (width, height), interpolation=cv2.INTER_LINEAR)
                depth = disparity_to_depth_at(disp, (height, width), depth_fn.min_depth,
                                              depth_fn.max_depth).astype(np.float32)
                K = intrinsics.matrix(width, height)
                record = {"source": frame.source, "stem": frame.stem, "size": [height, width],
                          "intrinsics": {k: float(K[i, j]) for k, (i, j) in
                                         (("fx", (0, 0)), ("fy", (1, 1)), ("cx", (0, 2)), ("cy", (1, 2)))},
                          "scale_factor": 1.0}
                if metric:
                    try:
                        plane = scale_from_camera_height(depth, K, camera_height)
                    except GroundPlaneError as error:
                        raise BadInputError(frame.source, f"--camera_height: no ground plane: {error} (it "
                                                          "assumes a flat road in the bottom third of the "
                                                          "image and a roughly level camera)") from None
                    depth = depth * np.float32(plane.scale)
                    record["scale_factor"] = plane.scale
                    record["ground_plane"] = plane.as_dict()
                colour = visualize.colorize_disparity(disp_full)
                files = {"depth_png": f"{frame.stem}_depth.png", "disp_npy": f"{frame.stem}_disp.npy",
                         "depth_npy": f"{frame.stem}_depth.npy"}
                visualize.write_png(output_dir / files["depth_png"], colour)
                save_npy(output_dir / files["disp_npy"], disp_full.astype(np.float32))
                save_npy(output_dir / files["depth_npy"], depth)
                if ply:
                    files["ply"] = f"{frame.stem}.ply"
                    rgb = cv2.cvtColor(frame.bgr, cv2.COLOR_BGR2RGB)
                    write_ply(output_dir / files["ply"], backproject_depth(depth, K).reshape(-1, 3),
                              rgb.reshape(-1, 3), binary=ply_binary,
                              comment=f"tripled_tf depth of {frame.source}\nunits: {units}")
                if video is not None:
                    video.write(_side_by_side(frame.bgr, colour))
                record["files"] = files
                record.update(depth_min=float(depth.min()), depth_median=float(np.median(depth)),
                              depth_max=float(depth.max()))
                records.append(record)
                bar.update()
        video_path = video.finish() if video is not None else None
    except BaseException:
        if video is not None:
            video.abort()
        raise
    finally:
        bar.close()
        source.close()

    scale_factor = float(np.median([r["scale_factor"] for r in records]))
    scale = (f"metric (camera height {camera_height:g} m, plane fit per frame: RANSAC + least squares on "
             "the bottom third, centre half of the image)" if metric else "relative")
    uses = (["ply"] if ply else []) + (["camera_height"] if metric else [])
    index = {
        "input": str(source.path), "kind": source.kind, "checkpoint": depth_fn.description,
        "model_input_size": list(input_size), "min_depth": depth_fn.min_depth,
        "max_depth": depth_fn.max_depth, "scale": scale, "scale_factor": scale_factor,
        "units": units if metric else "relative (monocular depth: correct up to one unknown factor per "
                                      "frame; not metres)",
        "scale_assumption": SCALE_ASSUMPTION if metric else None,
        "intrinsics": {"source": intrinsics.source, "used_for": uses},
        "disp_npy": "sigmoid disparity σ in [0, 1]; depth = scale_factor / (1/max_depth + "
                    "(1/min_depth - 1/max_depth)·σ)",
        "side_by_side": pathlib.Path(video_path).name if video_path else None,
        "num_frames": len(records), "frames": records,
    }
    predictions = run_folder.write_json(output_dir / PREDICTIONS_FILE, index)
    return {"frames": len(records), "output_dir": str(output_dir), "input": str(source.path),
            "kind": source.kind, "scale": scale, "scale_factor": scale_factor,
            "intrinsics": intrinsics.source if uses else None, "predictions": predictions,
            "side_by_side": video_path, "seconds": round(time.monotonic() - start, 3)}


# ----------------------------------------------------------------------------------------------------
# Command line


def define_flags(flag_values=None) -> None:
    """Defines the command line's flags.

    Not at import time: tests and tools import this module next to ``tripled_tf.train``, which
    defines flags of the same names (--height, --fx, ...) in the same global registry.
    """
    from absl import flags

    fv = flag_values or flags.FLAGS
    flags.DEFINE_string("input", None, "An image, a folder of PNG/JPEG images (natural order) or a "
                        "video file.", flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "A training run folder (config.json + checkpoints/), an "
                        "exported SavedModel folder or a .tflite file.", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Folder for <stem>_depth.png, <stem>_disp.npy, "
                        "<stem>_depth.npy [, <stem>.ply, <video>_depth.mp4] and predictions.json.",
                        flag_values=fv)
    flags.DEFINE_integer("height", None, "Model input height, multiple of 32 (default: the training "
                         "height).", flag_values=fv)
    flags.DEFINE_integer("width", None, "Model input width, multiple of 32 (default: the training "
                         "width).", flag_values=fv)
    flags.DEFINE_float("fx", None, "Focal length x, pixels of the original frames (--ply, "
                       "--camera_height).", flag_values=fv)
    flags.DEFINE_float("fy", None, "Focal length y, pixels.", flag_values=fv)
    flags.DEFINE_float("cx", None, "Principal point x, pixels.", flag_values=fv)
    flags.DEFINE_float("cy", None, "Principal point y, pixels.", flag_values=fv)
    flags.DEFINE_string("calib", "", "Calibration file (JSON/YAML: fx, fy, cx, cy or camera_matrix "
                        "[, width, height]) instead of --fx --fy --cx --cy. Without either, KITTI-like "
                        "intrinsics (fx = 0.58 W, fy = 1.92 H, cx = cy = centre) stand in.", flag_values=fv)
    flags.DEFINE_bool("ply", False, "Also write <stem>.ply: a coloured point cloud, every pixel "
                      "back-projected with the intrinsics.", flag_values=fv)
    flags.DEFINE_enum("ply_format", "binary", ["binary", "ascii"], "PLY encoding (binary little-endian "
                      "or ASCII).", flag_values=fv)
    flags.DEFINE_float("camera_height", None, "Camera height above the ground in metres: metric depth. "
                       + SCALE_ASSUMPTION + " Without it depth is relative (unknown scale).",
                       flag_values=fv)
    flags.DEFINE_bool("side_by_side", None, "Video input: also write <video stem>_depth.mp4, frame | "
                      "colour depth (default on for video).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 4, "Frames per forward pass.", flag_values=fv)
    flags.DEFINE_bool("progress", True, "Frame counter on stderr for folders and videos.", flag_values=fv)


def run_from_flags(FLAGS) -> Dict:
    """Checks everything cheap (before TensorFlow is imported), loads the model, predicts."""
    for name in ("input", "checkpoint", "output_dir"):
        if not getattr(FLAGS, name):
            raise PredictError(f"--{name} is required (see --helpfull)")
    for name in ("height", "width"):
        value = getattr(FLAGS, name)
        if value is not None and (value <= 0 or value % STRIDE):
            raise PredictError(f"--{name}={value}: the model's input size must be a positive multiple of "
                               f"{STRIDE} (the encoder's stride), e.g. --{name}="
                               f"{max(STRIDE, int(round(value / STRIDE)) * STRIDE)}")
    if FLAGS.batch_size < 1:
        raise PredictError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    intrinsics = resolve_intrinsics(FLAGS.fx, FLAGS.fy, FLAGS.cx, FLAGS.cy, FLAGS.calib)
    check_model_path(FLAGS.checkpoint)
    source = FrameSource(FLAGS.input)
    try:
        side_by_side = FLAGS.side_by_side if FLAGS.side_by_side is not None else source.kind == "video"
        if side_by_side and source.kind != "video":
            raise PredictError(f"--side_by_side needs a video --input; {source.path} is "
                               f"{_kind_text(source)}")
        if intrinsics.is_default and (FLAGS.ply or FLAGS.camera_height is not None):
            print(f"note: no --fx --fy --cx --cy or --calib: using the {intrinsics.source}",
                  file=sys.stderr)
        depth_fn = load_depth_fn(FLAGS.checkpoint, FLAGS.batch_size)
        size = (FLAGS.height or depth_fn.input_size[0], FLAGS.width or depth_fn.input_size[1])
        return predict_source(source, depth_fn, FLAGS.output_dir, input_size=size, intrinsics=intrinsics,
                              ply=FLAGS.ply, ply_binary=FLAGS.ply_format == "binary",
                              camera_height=FLAGS.camera_height, side_by_side=side_by_side,
                              batch_size=FLAGS.batch_size, progress=FLAGS.progress)
    finally:
        source.close()


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        summary = run_from_flags(flags.FLAGS)
    except (BadInputError, PredictError, OSError) as error:
        exit_with_error(str(error), 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
