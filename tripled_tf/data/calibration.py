"""Camera intrinsics given by the user: calibration files (JSON / YAML) and ``--fx --fy --cx --cy``.

:func:`load_calibration` reads a calibration file into a :class:`Calibration` (pixels, optionally
with the image size they were measured at); :func:`calibration_from_arguments` turns the four pixel
values or a calibration file, as the command lines take them, into one. Own-video training
(``tripled_tf.data.video``) requires them; prediction (``tripled_tf.predict``) falls back to the
KITTI-like stand-in when neither is given. Nothing here needs TensorFlow or OpenCV.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from tripled_tf.data.records import BadInputError, SettingError, normalized_intrinsics, unreadable

PathLike = Union[str, os.PathLike]


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
        raise unreadable(path, "calibration file", e) from None
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


def calibration_from_arguments(fx=None, fy=None, cx=None, cy=None, calibration_file=None,
                               file_flag: str = "calibration") -> Optional[Calibration]:
    """Intrinsics given as ``--fx --fy --cx --cy`` (pixels of the original frames) or as a
    calibration file (``--<file_flag>``), or None when neither is given.

    Raises:
      SettingError: both ways given, only some of the four values, or focal lengths that are not
        positive and finite. BadInputError: a calibration file that cannot be used (names it).
    """
    given = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    if calibration_file:
        if any(v is not None for v in given.values()):
            raise SettingError(f"give either --{file_flag} or --fx --fy --cx --cy, not both")
        return load_calibration(calibration_file)
    missing = [k for k, v in given.items() if v is None]
    if len(missing) == 4:
        return None
    if missing:
        raise SettingError(f"missing --{' --'.join(missing)}: give all four of --fx --fy --cx --cy "
                           f"(pixels of the original frames) or --{file_flag}=FILE")
    values = [float(v) for v in given.values()]
    if not (np.isfinite(values).all() and values[0] > 0 and values[1] > 0):
        raise SettingError(f"--fx and --fy must be positive and finite pixels, got fx={fx}, fy={fy}")
    return Calibration(*values)
