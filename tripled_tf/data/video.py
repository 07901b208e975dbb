"""The user's own camera video: a folder of frames or a video file -> triplet records.

``video_records`` turns a folder of PNG/JPEG frames, or any video file OpenCV can decode (mp4, avi,
mkv, ...), plus the camera intrinsics into the :class:`TripletRecord` list every file-based source hands
to the tf.data pipeline (``tripled_tf.data.records``).

What it does, in order:

1. Intrinsics are resolved first (before any decoding, so a mistake costs nothing): ``fx, fy, cx, cy``
   in pixels of the ORIGINAL frames, or a calibration file (see :func:`load_calibration`). Nothing is
   guessed: without intrinsics the call fails and says how to provide them.
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

from tripled_tf.data.records import BadInputError, SkipReport, TripletRecord, normalized_intrinsics

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MANIFEST_NAME = "manifest.json"
THUMBNAILS_NAME = "thumbnails.npy"
THUMBNAIL_WIDTH = 64
# JPEG quality of cached frames: the source video is already lossy; 95 keeps re-compression artefacts
# well below the photometric noise floor while the cache stays ~10x smaller than PNG.
CACHE_JPEG_QUALITY = 95
# Bump when the cache layout changes so old caches are rebuilt rather than misread.
CACHE_FORMAT_VERSION = 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# JPEG start-of-frame markers (the ones that carry the image size); C4, C8 and CC are not SOFs.
_JPEG_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


# ----------------------------------------------------------------------------------------------------
# Calibration


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Pinhole intrinsics in pixels of a width x height image (width/height None when unknown).

    Attributes:
      fx, fy: focal lengths in pixels; cx, cy: principal point in pixels (x right, y down).
      width, height: size in pixels of the image the values refer to, or None (= the frames' size).
    """
    fx: float
    fy: float
    cx: float
    cy: float
    width: Optional[int] = None
    height: Optional[int] = None

    def normalized(self, frame_width: int, frame_height: int,
                   source: str = "intrinsics") -> Tuple[float, float, float, float]:
        """(fx / W, fy / H, cx / W, cy / H) for frames of frame_width x frame_height pixels.

        When the calibration names its own image size, it is normalised by that size, which is the same
        as rescaling the intrinsics to the frames' size. A calibrated size with a different aspect ratio
        than the frames (e.g. a 4:3 calibration used for a 16:9 crop) cannot be rescaled and raises
        BadInputError naming ``source``.
        """
        if self.width is None or self.height is None:
            return normalized_intrinsics(self.fx, self.fy, self.cx, self.cy, frame_width, frame_height)
        calibrated_aspect = self.width / self.height
        frame_aspect = frame_width / frame_height
        if abs(calibrated_aspect / frame_aspect - 1.0) > 0.01:
            raise BadInputError(
                source, f"calibrated for {self.width}x{self.height} images but the frames are "
                f"{frame_width}x{frame_height}: different aspect ratio (cropped video mode?), so the "
                "intrinsics cannot be rescaled; calibrate at the frames' resolution")
        return normalized_intrinsics(self.fx, self.fy, self.cx, self.cy, self.width, self.height)


def _parse_scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _parse_flow_list(text: str, path: str):
    """'[1, [2, 3]]' -> [1, [2, 3]] (numbers and bare scalars only)."""
    tokens = re.findall(r"\[|\]|[^,\[\]]+", text)
    stack: List[list] = [[]]
    for token in tokens:
        if token == "[":
            stack.append([])
        elif token == "]":
            if len(stack) < 2:
                raise BadInputError(path, f"unbalanced ']' in list {text!r}")
            done = stack.pop()
            stack[-1].append(done)
        elif token.strip():
            stack[-1].append(_parse_scalar(token))
    if len(stack) != 1 or len(stack[0]) != 1:
        raise BadInputError(path, f"cannot parse list {text!r}")
    return stack[0][0]


def _parse_simple_yaml(text: str, path: str) -> Dict:
    """The YAML subset calibration files use: ``key: value`` mappings nested by indentation, scalar
    values, flow lists ``[a, b, [c]]`` that may span lines, ``#`` comments; ``%YAML`` / ``---`` lines and
    ``!!tags`` (OpenCV's ``!!opencv-matrix``) are ignored. Block lists (``- item``) are not supported.
    """
    lines = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith(("%", "---", "..."))):
            continue
        line = re.sub(r"!!\S+", "", line)
        pending = f"{pending} {line.strip()}" if pending else line
        if pending.count("[") > pending.count("]"):
            continue  # a flow list continues on the next line
        lines.append(pending)
        pending = ""
    if pending:
        raise BadInputError(path, f"unterminated list: {pending.strip()!r}")

    root: Dict = {}
    stack = [(-1, root)]  # (indent, mapping) of the open mappings
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        content = line.strip()
        if content.startswith("- "):
            raise BadInputError(path, f"block lists ('- item') are not supported, use [a, b]: {content!r}")
        key, sep, value = content.partition(":")
        if not sep:
            raise BadInputError(path, f"expected 'key: value', got {content!r}")
        while indent <= stack[-1][0]:
            stack.pop()
        mapping = stack[-1][1]
        key = key.strip().strip("'\"")
        value = value.strip()
        if not value:
            child: Dict = {}
            mapping[key] = child
            stack.append((indent, child))
        elif value.startswith("["):
            mapping[key] = _parse_flow_list(value, path)
        else:
            mapping[key] = _parse_scalar(value)
    return root


def _matrix_from_value(value, path: str, key: str) -> np.ndarray:
    # OpenCV / ROS store matrices as {rows, cols, data: [...]}; others as nested or flat lists.
    if isinstance(value, dict):
        if "data" not in value:
            raise BadInputError(path, f"key '{key}' has no 'data' entry")
        value = value["data"]
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInputError(path, f"key '{key}' is not a numeric matrix: {value!r}") from None
    if matrix.size != 9:
        raise BadInputError(path, f"key '{key}' must be a 3x3 camera matrix, got {matrix.size} values")
    return matrix.reshape(3, 3)


def _number(mapping: Dict, key: str, path: str) -> float:
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInputError(path, f"key '{key}' must be a number, got {value!r}")
    return float(value)


def load_calibration(path: PathLike) -> Calibration:
    """Reads camera intrinsics from a small JSON or YAML file.

    Accepted keys (at the top level):
      - ``fx, fy, cx, cy`` (pixels), or a 3x3 camera matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``
        under ``camera_matrix``, ``K`` or ``cameraMatrix``, given as a nested list, a flat list of 9
        numbers, or OpenCV / ROS style ``{rows: 3, cols: 3, data: [9 numbers]}``;
      - optionally the calibrated image size: ``width`` and ``height`` or ``image_width`` and
        ``image_height`` (pixels). When it differs from the frames' size the intrinsics are rescaled.
    JSON is parsed with ``json``; anything else with a YAML subset parser (PyYAML is not a dependency):
    ``key: value`` nested by indentation, flow lists ``[...]`` (may span lines), comments, and OpenCV's
    ``%YAML:1.0`` header and ``!!opencv-matrix`` tags, so files written by ``cv2.FileStorage`` (e.g. by
    OpenCV's chessboard calibration sample) and ROS ``camera_info`` YAML files both load.

    Returns: a :class:`Calibration`. Raises BadInputError naming the file: missing file, unparsable
    file, missing key (named), non-positive focal length.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "calibration file not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(path, f"cannot read calibration file: {e}") from None
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInputError(path, f"invalid JSON: {e}") from None
    else:
        data = _parse_simple_yaml(text, path)
    if not isinstance(data, dict):
        raise BadInputError(path, "expected a mapping of keys (fx, fy, cx, cy or camera_matrix)")

    matrix_key = next((k for k in ("camera_matrix", "K", "cameraMatrix") if k in data), None)
    if all(k in data for k in ("fx", "fy", "cx", "cy")) or matrix_key is None:
        for key in ("fx", "fy", "cx", "cy"):
            if key not in data:
                raise BadInputError(path, f"missing key '{key}' (give fx, fy, cx, cy in pixels, or a 3x3 "
                                          "camera_matrix / K)")
        fx, fy, cx, cy = (_number(data, k, path) for k in ("fx", "fy", "cx", "cy"))
    else:
        matrix = _matrix_from_value(data[matrix_key], path, matrix_key)
        fx, fy, cx, cy = matrix[0, 0], matrix[1, 1], matrix[0, 2], matrix[1, 2]

    width = height = None
    for width_key, height_key in (("width", "height"), ("image_width", "image_height")):
        if width_key in data or height_key in data:
            for key in (width_key, height_key):
                if key not in data:
                    other = height_key if key == width_key else width_key
                    raise BadInputError(path, f"missing key '{key}' ('{other}' is given; give both or "
                                              "neither)")
            width, height = int(_number(data, width_key, path)), int(_number(data, height_key, path))
            if width <= 0 or height <= 0:
                raise BadInputError(path, f"calibrated image size must be positive, got {width}x{height}")
            break
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise BadInputError(path, f"focal lengths must be positive and finite, got fx={fx}, fy={fy}")
    return Calibration(float(fx), float(fy), float(cx), float(cy), width, height)


def _resolve_intrinsics(fx, fy, cx, cy, calibration) -> Tuple[Calibration, str]:
    given = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    how_to = ("give the camera intrinsics in pixels of the original frames: fx, fy, cx, cy "
              "(--fx --fy --cx --cy), or a calibration file (--calibration=calib.yaml or .json with keys "
              "fx, fy, cx, cy or camera_matrix); get them from an OpenCV chessboard calibration or the "
              "camera's spec sheet (fx = focal_mm / pixel_pitch_mm). They are not guessed")
    if calibration is not None:
        if any(v is not None for v in given.values()):
            raise ValueError("give either calibration or fx/fy/cx/cy, not both")
        return load_calibration(calibration), str(calibration)
    missing = [k for k, v in given.items() if v is None]
    if len(missing) == 4:
        raise ValueError(f"no camera intrinsics: {how_to}")
    if missing:
        raise ValueError(f"missing intrinsics {', '.join(missing)}: {how_to}")
    values = [float(v) for v in given.values()]
    if not (np.isfinite(values).all() and values[0] > 0 and values[1] > 0):
        raise ValueError(f"fx and fy must be positive and finite pixels, got fx={fx}, fy={fy}")
    return Calibration(*values), "intrinsics arguments"


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


def _jpeg_size(f, path: str) -> Tuple[int, int]:
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            raise BadInputError(path, "truncated JPEG: ends before the frame header")
        marker = byte[0]
        if marker == 0xD9 or marker == 0xDA:
            raise BadInputError(path, "corrupt JPEG: no frame header (SOF) before the image data")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue  # markers without a length field
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            raise BadInputError(path, "truncated JPEG header")
        length = int.from_bytes(length_bytes, "big")
        if marker in _JPEG_SOF_MARKERS:
            header = f.read(5)
            if len(header) < 5:
                raise BadInputError(path, "truncated JPEG frame header")
            height, width = int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
            return width, height
        f.seek(length - 2, os.SEEK_CUR)
        # The next byte must start a marker; anything else means the segment lengths are garbage.
        if f.read(1) != b"\xff":
            raise BadInputError(path, "corrupt JPEG header (bad segment length)")
        f.seek(-1, os.SEEK_CUR)


def check_frame_file(path: PathLike) -> Tuple[int, int]:
    """Cheap structural check of one frame file, without decoding it: returns (width, height) pixels.

    Parses the PNG IHDR / JPEG SOF header for the size and checks the end marker (PNG IEND chunk, JPEG
    EOI within the last 1 KiB), which catches missing, truncated and non-image files. The format is
    taken from the file's signature, not its extension. Raises BadInputError naming the file.
    """
    path = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(32)
            if head.startswith(_PNG_SIGNATURE):
                if len(head) < 24 or head[12:16] != b"IHDR":
                    raise BadInputError(path, "truncated or corrupt PNG: no IHDR header")
                width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
                f.seek(max(0, size - 64))
                if b"IEND" not in f.read():
                    raise BadInputError(path, "truncated PNG: no IEND chunk at the end of the file")
            elif head.startswith(_JPEG_SOI):
                width, height = _jpeg_size(f, path)
                f.seek(max(0, size - 1024))
                if b"\xff\xd9" not in f.read():
                    raise BadInputError(path, "truncated JPEG: no end-of-image marker (FFD9) at the end")
            elif not head:
                raise BadInputError(path, "empty file")
            else:
                raise BadInputError(path, "not a PNG or JPEG file (unknown signature)")
    except FileNotFoundError:
        raise BadInputError(path, "frame file not found") from None
    except OSError as e:
        raise BadInputError(path, f"cannot read frame file: {e}") from None
    if width <= 0 or height <= 0:
        raise BadInputError(path, f"corrupt header: image size {width}x{height}")
    return width, height


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
    gray = cv2.imread(path, flag)
    if gray is None or gray.size == 0:
        raise BadInputError(path, "corrupt image: it cannot be decoded")
    return _thumbnail_from_gray(gray)


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
    """
    folder: pathlib.Path
    frames: Tuple[pathlib.Path, ...]
    source_width: int
    source_height: int
    thumbnails: np.ndarray


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
                           thumbnails)


def _decode_into(video_path: pathlib.Path, folder: pathlib.Path, frame_stride: int,
                 max_side: Optional[int]) -> Dict:
    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        raise BadInputError(video_path, "OpenCV cannot open it as a video (unsupported codec/container or "
                                        "not a video file)")
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
    frame_height, frame_width = cv2.imread(str(folder / names[0]), cv2.IMREAD_GRAYSCALE).shape[:2]
    return {"frames": names, "frame_count": len(names), "source_width": source_size[0],
            "source_height": source_size[1], "frame_width": frame_width, "frame_height": frame_height,
            "decoded_frames": index}


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
        try:
            size = check_frame_file(path)
            if frame_size is not None and size != frame_size:
                raise BadInputError(path, f"frame is {size[0]}x{size[1]} but the first frame is "
                                          f"{frame_size[0]}x{frame_size[1]}")
            if need_thumbnails:
                thumbnails.append(_thumbnail_from_file(str(path), size[0]))
        except BadInputError as e:
            if not skip_bad_frames:
                raise
            report.add(f"bad frame {e}")
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
            report.add(f"static frame {path} (motion {score:.4f} < min_motion {min_motion})")
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
      calibration: a JSON/YAML calibration file, see :func:`load_calibration`.
      frame_stride: use every k-th frame (for high frame-rate video).
      min_motion: drop frames whose thumbnail mean absolute difference (in [0, 1]) to the last kept frame
        is below this; 0 keeps every frame. Dropped frames are counted in the SkipReport.
      cache_dir: where a video is decoded to (default ``<video stem>_frames/`` beside it); unused for a
        folder. See :func:`extract_frames`.
      max_side: shrink video frames at extraction so the longer side is at most this many pixels; unused
        for a folder.
      skip_bad_frames: skip (and count) bad frame files of a folder instead of raising.

    Returns:
      (records, report): one :class:`TripletRecord` (frames t-1, t, t+1 from consecutive remaining
      frames, normalised intrinsics of the original frames) per inner remaining frame, and the
      :class:`SkipReport` of dropped static and bad frames.

    Raises:
      ValueError: intrinsics missing / ambiguous, bad arguments.
      BadInputError: missing source, unopenable / empty video, empty folder, bad frame (unless
        skip_bad_frames), bad calibration file, fewer than 3 frames left.
    """
    calibration_values, intrinsics_source = _resolve_intrinsics(fx, fy, cx, cy, calibration)
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
