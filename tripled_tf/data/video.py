"""The user's own camera video: a folder of frames or a video file -> triplet records.

``video_records`` turns a folder of PNG/JPEG frames, or any video file OpenCV can decode (mp4, avi,
mkv, ...), plus the camera intrinsics into the :class:`TripletRecord` list every file-based source hands
to the tf.data pipeline (``tripled_tf.data.records``).

What it does, in order:

1. Intrinsics are resolved first (before any decoding, so a mistake costs nothing): ``fx, fy, cx, cy``
   in pixels of the ORIGINAL frames, or a calibration file (see
   :func:`tripled_tf.data.calibration.load_calibration`). Nothing is guessed: without intrinsics the
   call fails and says how to provide them.
2. A video file is decoded ONCE into a cache folder of JPEG frames (``cache_dir``; default
   ``<video stem>_frames/`` beside the video), keeping every ``frame_stride``-th frame and, with
   ``max_side``, shrinking frames so that their longer side is at most ``max_side`` pixels. The cache is
   written into a temporary folder and renamed into place only when complete, with a ``manifest.json``
   (source size and mtime, stride, max_side, frame count and sizes); it is reused while the manifest
   matches and rebuilt otherwise, so a partial extraction is never mistaken for a complete one.
   A folder of frames is used as it is (``frame_stride`` applies, ``max_side`` does not: the pipeline
   resizes to the training size anyway), sorted in natural order (``frame_2`` before ``frame_10``).
3. Static frames are dropped: with ``min_motion > 0`` a frame is kept only if the mean absolute
   difference between its small grayscale thumbnail (64 px wide, values in [0, 1]) and that of the last
   KEPT frame is at least ``min_motion``. Frames where the camera did not move teach the network nothing
   and make the photometric loss trivially zero. Measured scale: consecutive KITTI frames (a car at
   ~10 m/s, 10 Hz) score about 0.03; sensor noise / compression on a still camera stays well below 0.01.
   ``0.005``-``0.01`` is a reasonable start. Because the comparison is with the last kept frame, slow
   motion accumulates until a frame is kept, so a high threshold acts like an adaptive stride.
4. Triplets are formed from consecutive remaining frames: (f[i-1], f[i], f[i+1]) for every inner i.

Intrinsics and resizing: records carry NORMALISED intrinsics (fx / W, fy / H, cx / W, cy / H) of the
original frames. Resizing a whole frame (here with ``max_side``, later in the pipeline to the training
size) scales fx and cx by the same factor as W, so the normalised values are unchanged and the pipeline
recovers the correct pixel K at any size by multiplying back (``records.intrinsics_at_size``).

Bad input raises :class:`BadInputError` naming the file and what is wrong: a source that does not exist,
a video OpenCV cannot open or that has no frames, an empty folder, a calibration file with a missing
key, a frame file that is truncated / not an image / of a different size than the first frame. With
``skip_bad_frames=True`` bad frames of a folder are skipped and counted in the :class:`SkipReport`.

How frames of a folder are checked (the cost is one small read per file, not a second decode): every
kept frame's header is parsed (PNG IHDR / JPEG SOF: format and size) and its end marker checked (PNG
IEND / JPEG EOI), which catches truncated and non-image files; OpenCV would silently decode a truncated
JPEG as grey-padded, so decoding alone is not enough. When ``min_motion > 0`` every kept frame is also
decoded (at reduced resolution) for its thumbnail, which catches corrupt image data too. Frames
extracted from a video were just written by OpenCV and are not re-checked.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from tripled_tf.data.calibration import Calibration, calibration_from_arguments
from tripled_tf.data.image_io import IMAGE_EXTENSIONS, check_image_file, read_image
from tripled_tf.data.records import (SIZE_MISMATCH, STATIC_FRAME, TRUNCATED_VIDEO, UNREADABLE_FILE,
                                     BadInputError, SettingError, SkipReport, TripletRecord)

PathLike = Union[str, os.PathLike]

MANIFEST_NAME = "manifest.json"
THUMBNAILS_NAME = "thumbnails.npy"
THUMBNAIL_WIDTH = 64
# JPEG quality of cached frames: the source video is already lossy; 95 keeps re-compression artefacts
# well below the photometric noise floor while the cache stays ~10x smaller than PNG.
CACHE_JPEG_QUALITY = 95
# Bump when the cache layout changes so old caches are rebuilt rather than misread.
CACHE_FORMAT_VERSION = 2  # 2: declared_frames in the manifest



def _require_intrinsics(fx, fy, cx, cy, calibration) -> Tuple[Calibration, str]:
    """The video's intrinsics and the name errors about them give; SettingError when none are given."""
    given = calibration_from_arguments(fx, fy, cx, cy, calibration, "calibration")
    if given is None:
        raise SettingError(
            "no camera intrinsics: give the camera intrinsics in pixels of the original frames: fx, fy, "
            "cx, cy (--fx --fy --cx --cy), or a calibration file (--calibration=calib.yaml or .json with "
            "keys fx, fy, cx, cy or camera_matrix); get them from an OpenCV chessboard calibration or "
            "the camera's spec sheet (fx = focal_mm / pixel_pitch_mm). They are not guessed")
    return given, str(calibration) if calibration else "intrinsics arguments"


# ----------------------------------------------------------------------------------------------------
# Frame files


def natural_sort_key(name: str) -> list:
    """Sort key that orders digit runs by value: 'frame_2.png' < 'frame_10.png'."""
    # re.split with a capture group puts the digit runs at odd positions, so the key lists of two
    # names always compare str with str and int with int.
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


def list_frame_files(folder: PathLike) -> List[pathlib.Path]:
    """PNG / JPEG files directly in ``folder`` (extension case-insensitive), in natural order."""
    folder = pathlib.Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def _thumbnail_from_gray(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape[:2]
    thumb_height = max(1, int(round(THUMBNAIL_WIDTH * height / width)))
    return cv2.resize(gray, (THUMBNAIL_WIDTH, thumb_height), interpolation=cv2.INTER_AREA)


def _thumbnail_from_file(path: str, width: int) -> np.ndarray:
    # Reduced decoding (JPEG DCT scaling) keeps this cheap; pick the largest factor that stays at
    # least THUMBNAIL_WIDTH wide so the thumbnail is downsampled, never upsampled.
    flag = cv2.IMREAD_GRAYSCALE
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                            (2, cv2.IMREAD_REDUCED_GRAYSCALE_2)):
        if width // factor >= THUMBNAIL_WIDTH:
            flag = reduced
            break
    return _thumbnail_from_gray(read_image(path, flag))


def motion_score(thumbnail_a: np.ndarray, thumbnail_b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 grayscale thumbnails [h, w], in [0, 1] (0 = identical)."""
    return float(np.mean(np.abs(thumbnail_a.astype(np.float32) - thumbnail_b.astype(np.float32)))) / 255.0


# ----------------------------------------------------------------------------------------------------
# Video -> frame cache


@dataclasses.dataclass(frozen=True)
class ExtractedFrames:
    """A complete frame cache of one video.

    Attributes:
      folder: the cache folder.
      frames: paths of the cached frames in time order.
      source_width, source_height: size in pixels of the frames as decoded from the video (before
        ``max_side``): the size the user's pixel intrinsics refer to.
      thumbnails: [N, h, 64] uint8 grayscale thumbnails of the frames, for static-frame filtering.
      decoded_frames: frames OpenCV decoded (before frame_stride).
      declared_frames: the frame count the container declares (0: unknown); more than
        ``decoded_frames`` means a truncated or corrupt video (see :func:`missing_video_frames`).
    """
    folder: pathlib.Path
    frames: Tuple[pathlib.Path, ...]
    source_width: int
    source_height: int
    thumbnails: np.ndarray
    decoded_frames: int = 0
    declared_frames: int = 0


def default_cache_dir(video_path: PathLike) -> pathlib.Path:
    """``<folder of the video>/<video stem>_frames``."""
    video_path = pathlib.Path(video_path)
    return video_path.parent / f"{video_path.stem}_frames"


def _source_fingerprint(video_path: pathlib.Path) -> Dict:
    stat = video_path.stat()
    return {"source": str(video_path.resolve()), "source_size": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns}


def _load_cache(cache_dir: pathlib.Path, wanted: Dict) -> Optional[ExtractedFrames]:
    """The cache in cache_dir if it is complete and was made from the same source with the same
    settings; None otherwise."""
    try:
        with open(cache_dir / MANIFEST_NAME, "r", encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if any(manifest.get(key) != value for key, value in wanted.items()):
        return None
    frames = tuple(cache_dir / name for name in manifest.get("frames", []))
    if len(frames) != manifest.get("frame_count") or not all(p.is_file() for p in frames):
        return None
    try:
        thumbnails = np.load(cache_dir / THUMBNAILS_NAME)
    except (OSError, ValueError):
        return None
    if len(thumbnails) != len(frames):
        return None
    return ExtractedFrames(cache_dir, frames, manifest["source_width"], manifest["source_height"],
                           thumbnails, int(manifest.get("decoded_frames", 0)),
                           int(manifest.get("declared_frames", 0)))


def _decode_into(video_path: pathlib.Path, folder: pathlib.Path, frame_stride: int,
                 max_side: Optional[int]) -> Dict:
    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        raise BadInputError(video_path, "OpenCV cannot open it as a video (unsupported codec/container or "
                                        "not a video file)")
    declared = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)  # container metadata
    names: List[str] = []
    thumbnails: List[np.ndarray] = []
    source_size = None
    index = 0
    try:
        while True:
            if index % frame_stride:
                if not capture.grab():  # skipped frames need not be converted to BGR
                    break
                index += 1
                continue
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if source_size is None:
                source_size = (frame.shape[1], frame.shape[0])
            height, width = frame.shape[:2]
            if max_side is not None and max(width, height) > max_side:
                scale = max_side / max(width, height)
                size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            name = f"{index:06d}.jpg"
            if not cv2.imwrite(str(folder / name), frame, [cv2.IMWRITE_JPEG_QUALITY, CACHE_JPEG_QUALITY]):
                raise OSError(f"{folder / name}: cannot write cached frame")
            names.append(name)
            thumbnails.append(_thumbnail_from_gray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)))
            index += 1
    finally:
        capture.release()
    if not names:
        raise BadInputError(video_path, "the video has no frames that OpenCV can decode")
    np.save(folder / THUMBNAILS_NAME, np.stack(thumbnails))
    frame_height, frame_width = read_image(folder / names[0], cv2.IMREAD_GRAYSCALE).shape[:2]
    return {"frames": names, "frame_count": len(names), "source_width": source_size[0],
            "source_height": source_size[1], "frame_width": frame_width, "frame_height": frame_height,
            "decoded_frames": index, "declared_frames": declared}


def extract_frames(video_path: PathLike, cache_dir: Optional[PathLike] = None, frame_stride: int = 1,
                   max_side: Optional[int] = None) -> ExtractedFrames:
    """Decodes a video once into a folder of JPEG frames and reuses that folder on later calls.

    Args:
      video_path: any file OpenCV's VideoCapture decodes (mp4, avi, mkv, ...).
      cache_dir: folder for the frames; default ``<video stem>_frames`` beside the video. An existing
        folder that is not a cache written here (no manifest.json) and not empty is never overwritten.
      frame_stride: keep every k-th frame (frames 0, k, 2k, ...); skipped frames are not written.
      max_side: if given, frames whose longer side exceeds it are shrunk (area interpolation, aspect
        kept) so the longer side is max_side pixels. Normalised intrinsics are unaffected.

    The cache is rebuilt when the video's size or mtime, frame_stride or max_side changes. It is written
    into a temporary folder beside cache_dir and renamed into place when complete, so an interrupted
    extraction leaves no folder that could be taken for a complete cache.

    Returns: :class:`ExtractedFrames`. Raises BadInputError naming the video when it does not exist,
    cannot be opened, or has no decodable frames.
    """
    video_path = pathlib.Path(video_path)
    if not video_path.is_file():
        raise BadInputError(video_path, "video file not found")
    frame_stride = _positive_int(frame_stride, "frame_stride")
    if max_side is not None:
        max_side = _positive_int(max_side, "max_side")
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir(video_path)
    wanted = {"format_version": CACHE_FORMAT_VERSION, **_source_fingerprint(video_path),
              "frame_stride": frame_stride, "max_side": max_side}
    cached = _load_cache(cache_dir, wanted)
    if cached is not None:
        return cached
    if cache_dir.exists():
        if not cache_dir.is_dir():
            raise BadInputError(cache_dir, "cache_dir exists and is not a folder")
        if not (cache_dir / MANIFEST_NAME).is_file() and any(cache_dir.iterdir()):
            raise BadInputError(cache_dir, "cache_dir exists, is not empty and is not a frame cache "
                                           f"(no {MANIFEST_NAME}); refusing to overwrite it: remove it or "
                                           "pass another cache_dir")

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.partial-", dir=cache_dir.parent))
    try:
        manifest = {**wanted, **_decode_into(video_path, partial, frame_stride, max_side)}
        with open(partial / MANIFEST_NAME, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        if cache_dir.exists():  # a stale cache (different settings or source): move it out of the way
            stale = pathlib.Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.stale-",
                                                  dir=cache_dir.parent))
            os.replace(cache_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(partial, cache_dir)
        except OSError:
            # Another process finished the same extraction first: use its cache if it matches.
            cached = _load_cache(cache_dir, wanted)
            if cached is None:
                raise
            return cached
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    cached = _load_cache(cache_dir, wanted)
    if cached is None:
        raise OSError(f"{cache_dir}: frame cache could not be read back after writing it")
    return cached


def missing_video_frames(decoded: int, declared: int) -> int:
    """How many of the ``declared`` frames of a video (its container's count, 0 = unknown) OpenCV did
    not decode: > 0 means a truncated or corrupt file. A count estimated from the duration may be off
    by a frame or two, so a shortfall within max(2, 2 %) of the declared count gives 0."""
    missing = declared - decoded
    return missing if declared > 0 and missing > max(2, 0.02 * declared) else 0


# ----------------------------------------------------------------------------------------------------
# Records


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _folder_frames(folder: pathlib.Path, frame_stride: int, need_thumbnails: bool,
                   skip_bad_frames: bool, report: SkipReport):
    files = list_frame_files(folder)
    if not files:
        raise BadInputError(folder, f"no frames found (expected {', '.join(IMAGE_EXTENSIONS)} files in "
                                    "the folder)")
    files = files[::frame_stride]
    frames: List[pathlib.Path] = []
    thumbnails: List[np.ndarray] = []
    frame_size = None
    for path in files:
        cause = UNREADABLE_FILE
        try:
            size = check_image_file(path)
            if frame_size is not None and size != frame_size:
                cause = SIZE_MISMATCH
                raise BadInputError(path, f"frame is {size[0]}x{size[1]} but the first frame is "
                                          f"{frame_size[0]}x{frame_size[1]}")
            if need_thumbnails:
                thumbnails.append(_thumbnail_from_file(str(path), size[0]))
        except BadInputError as e:
            if not skip_bad_frames:
                raise
            report.add(f"bad frame {e}", cause)
            continue
        frame_size = size
        frames.append(path)
    if frame_size is None:
        raise BadInputError(folder, "no readable frames in the folder")
    return frames, frame_size, (np.stack(thumbnails) if need_thumbnails else None)


def _drop_static(frames: Sequence[pathlib.Path], thumbnails: np.ndarray, min_motion: float,
                 report: SkipReport) -> List[pathlib.Path]:
    kept = [frames[0]]
    last = thumbnails[0]
    for path, thumbnail in zip(frames[1:], thumbnails[1:]):
        score = motion_score(last, thumbnail)
        if score < min_motion:
            report.add(f"static frame {path} (motion {score:.4f} < min_motion {min_motion})", STATIC_FRAME)
            continue
        kept.append(path)
        last = thumbnail  # compare with the last KEPT frame, so slow motion accumulates until kept
    return kept


def video_records(source: PathLike, fx: Optional[float] = None, fy: Optional[float] = None,
                  cx: Optional[float] = None, cy: Optional[float] = None,
                  calibration: Optional[PathLike] = None, frame_stride: int = 1,
                  min_motion: float = 0.0, cache_dir: Optional[PathLike] = None,
                  max_side: Optional[int] = None,
                  skip_bad_frames: bool = False) -> Tuple[List[TripletRecord], SkipReport]:
    """Triplet records from the user's own video or folder of frames.

    Args:
      source: a folder of PNG/JPEG frames (natural file-name order) or a video file OpenCV decodes.
      fx, fy, cx, cy: intrinsics in pixels of the ORIGINAL frames (the folder's frames / the video as
        decoded, before max_side). Give all four, or ``calibration`` instead.
      calibration: a JSON/YAML calibration file, see :func:`tripled_tf.data.calibration.load_calibration`.
      frame_stride: use every k-th frame (for high frame-rate video).
      min_motion: drop frames whose thumbnail mean absolute difference (in [0, 1]) to the last kept frame
        is below this; 0 keeps every frame. Dropped frames are counted in the SkipReport.
      cache_dir: where a video is decoded to (default ``<video stem>_frames/`` beside it); unused for a
        folder. See :func:`extract_frames`.
      max_side: shrink video frames at extraction so the longer side is at most this many pixels; unused
        for a folder.
      skip_bad_frames: skip (and count) bad frame files of a folder, or train on the decodable part
        of a truncated video (counted), instead of raising.

    Returns:
      (records, report): one :class:`TripletRecord` (frames t-1, t, t+1 from consecutive remaining
      frames, normalised intrinsics of the original frames) per inner remaining frame, and the
      :class:`SkipReport` of dropped static and bad frames.

    Raises:
      ValueError: intrinsics missing / ambiguous, bad arguments.
      BadInputError: missing source, unopenable / empty video, empty folder, bad frame or truncated
        video (unless skip_bad_frames), bad calibration file, fewer than 3 frames left.
    """
    calibration_values, intrinsics_source = _require_intrinsics(fx, fy, cx, cy, calibration)
    frame_stride = _positive_int(frame_stride, "frame_stride")
    min_motion = float(min_motion)
    if not np.isfinite(min_motion) or min_motion < 0:
        raise ValueError(f"min_motion must be >= 0, got {min_motion}")
    source_path = pathlib.Path(source)
    report = SkipReport()
    if source_path.is_dir():
        frames, (width, height), thumbnails = _folder_frames(
            source_path, frame_stride, min_motion > 0, skip_bad_frames, report)
    elif source_path.is_file():
        if source_path.suffix.lower() in IMAGE_EXTENSIONS:
            raise BadInputError(source_path, "is a single image: pass the folder that holds the frames")
        extracted = extract_frames(source_path, cache_dir, frame_stride, max_side)
        if missing_video_frames(extracted.decoded_frames, extracted.declared_frames):
            problem = (f"decoded {extracted.decoded_frames} of the {extracted.declared_frames} frames the "
                       f"video declares: the file is truncated or corrupt")
            if not skip_bad_frames:
                raise BadInputError(source_path, problem + " (--skip_bad_frames trains on the decoded "
                                                           "frames)")
            report.add(f"{source_path}: {problem}", TRUNCATED_VIDEO)
        frames, thumbnails = list(extracted.frames), extracted.thumbnails
        width, height = extracted.source_width, extracted.source_height
    else:
        raise BadInputError(source_path, "not found (expected a video file or a folder of frames)")

    intrinsics = calibration_values.normalized(width, height, intrinsics_source)
    if min_motion > 0:
        frames = _drop_static(frames, thumbnails, min_motion, report)
    if len(frames) < 3:
        raise BadInputError(source_path, f"only {len(frames)} usable frame(s) after frame_stride="
                                         f"{frame_stride}, min_motion={min_motion} and skipped bad frames; "
                                         f"a triplet needs 3 ({report.summary()})")
    records = [TripletRecord(str(frames[i - 1]), str(frames[i]), str(frames[i + 1]), intrinsics,
                             name=f"{source_path.name} {frames[i].name}")
               for i in range(1, len(frames) - 1)]
    return records, report
