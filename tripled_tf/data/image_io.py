"""Image files: format from the signature, size from the header, structural checks, decoding.

Every reader of frame files (KITTI, own video, the tf.data pipeline, predict, evaluate) goes through
here, so a bad file is refused the same way and with the same words wherever it is met. Errors are
:class:`~tripled_tf.data.records.BadInputError` (``"<path>: <problem>"``), the problem phrased
``"<what is wrong>: <detail>"``, e.g. ``"truncated PNG: no IEND chunk at the end of the file"``.

Why check the structure before decoding: OpenCV decodes a truncated JPEG "successfully", with the
missing rows grey, so decoding alone does not catch a cut-off file. The checks are cheap byte reads:

* PNG: the 8-byte signature, the IHDR chunk right after it (width, height: big-endian uint32 at byte
  offsets 16 and 20) and the IEND chunk at the end of the file;
* JPEG: the SOI marker FFD8, then marker segments up to the first start-of-frame (SOF) segment, whose
  bytes 3-4 and 5-6 after the length hold height and width; and the EOI marker FFD9 at the end.

The format is taken from the signature, never from the file's extension. Nothing here needs
TensorFlow.
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Tuple

import numpy as np

from tripled_tf.data.records import BadInputError, unreadable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # the frame files every source accepts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC (the chunk has no data)
JPEG_SOI = b"\xff\xd8"  # start of image
JPEG_EOI = b"\xff\xd9"  # end of image
# JPEG start-of-frame markers (the ones that carry the image size); C4, C8 and CC are not SOFs.
JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                              0xCF})
# How far from the end the end marker is looked for: encoders may pad after it (zeros, a few bytes
# of metadata); a truncated file has no end marker at all.
PNG_END_WINDOW = 64
JPEG_END_WINDOW = 1024


def image_format(head: bytes) -> str:
    """"png", "jpeg" or "" (neither) from the first bytes of a file."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    return ""


def _jpeg_size(handle: BinaryIO, path: str) -> Tuple[int, int]:
    """(width, height) from the first SOF segment; ``handle`` is positioned anywhere in the file."""
    handle.seek(len(JPEG_SOI))
    while True:
        byte = handle.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = handle.read(1)
        if not byte:
            raise BadInputError(path, "truncated JPEG: it ends before the frame header (SOF)")
        marker = byte[0]
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any SOF
            raise BadInputError(path, "corrupt JPEG: no frame header (SOF) before the image data")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue  # markers without a length field
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            raise BadInputError(path, "truncated JPEG: it ends inside a header segment")
        length = int.from_bytes(length_bytes, "big")
        if marker in JPEG_SOF_MARKERS:
            header = handle.read(5)  # precision (1 byte), height (2), width (2)
            if len(header) < 5:
                raise BadInputError(path, "truncated JPEG: it ends inside the frame header (SOF)")
            return int.from_bytes(header[3:5], "big"), int.from_bytes(header[1:3], "big")
        handle.seek(length - 2, os.SEEK_CUR)
        # The next byte must start a marker; anything else means the segment lengths are garbage.
        if handle.read(1) != b"\xff":
            raise BadInputError(path, "corrupt JPEG: a header segment length points past the next "
                                      "marker")
        handle.seek(-1, os.SEEK_CUR)


def _check_structure(handle: BinaryIO, size: int, path: str, any_format: bool = False) -> Tuple[int, int]:
    """Signature, header size and end marker of the file open in ``handle`` (``size`` bytes long):
    (width, height) in pixels, or (0, 0) for another format when ``any_format`` (not checked)."""
    head = handle.read(24)
    kind = image_format(head)
    if kind == "png":
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise BadInputError(path, "truncated PNG: no IHDR header after the signature")
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        handle.seek(max(0, size - PNG_END_WINDOW))
        if PNG_END not in handle.read():
            raise BadInputError(path, "truncated PNG: no IEND chunk at the end of the file")
    elif kind == "jpeg":
        width, height = _jpeg_size(handle, path)
        handle.seek(max(0, size - JPEG_END_WINDOW))
        if JPEG_EOI not in handle.read():
            raise BadInputError(path, "truncated JPEG: no end-of-image marker (FFD9) at the end of the "
                                      "file")
    elif not head:
        raise BadInputError(path, "empty file")
    elif any_format:
        return 0, 0
    else:
        raise BadInputError(path, f"not a PNG or JPEG file: it starts with {head[:8]!r}")
    if width <= 0 or height <= 0:
        raise BadInputError(path, f"corrupt header: image size {width}x{height}")
    return width, height


def check_image_file(path) -> Tuple[int, int]:
    """Cheap structural check of a PNG / JPEG file without decoding it: (width, height) in pixels.

    Reads the header (size) and the last bytes (end marker); this catches missing, empty, truncated
    and non-image files, not corrupt pixel data (:func:`read_image` catches that by decoding).

    Raises:
      BadInputError naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            return _check_structure(handle, os.fstat(handle.fileno()).st_size, path)
    except FileNotFoundError:
        raise BadInputError(path, "image file not found") from None
    except OSError as error:
        raise unreadable(path, "image file", error) from None


def read_image(path, flags: int = None, any_format: bool = False) -> np.ndarray:
    """Reads, checks (:func:`check_image_file`'s checks on the bytes read) and decodes an image file.

    Args:
      path: the file (non-ASCII paths work: the bytes are read by numpy and decoded in memory).
      flags: ``cv2.IMREAD_*`` (default ``IMREAD_COLOR``: BGR uint8 [H, W, 3]); e.g.
        ``IMREAD_ANYDEPTH`` for a 16-bit depth PNG, ``IMREAD_REDUCED_GRAYSCALE_4`` for a thumbnail.
      any_format: also decode formats other than PNG / JPEG (BMP, TIFF, WebP: decoded without a
        structural check, as OpenCV reads them); otherwise they are refused.
    Returns:
      The decoded array as OpenCV returns it (BGR channel order for colour).
    Raises:
      BadInputError naming the file: missing, unreadable, empty, truncated, not an image, or pixel
      data that cannot be decoded.
    """
    import cv2  # only when decoding: check_image_file works without OpenCV

    path = os.fspath(path)
    try:
        data = np.fromfile(path, np.uint8)
    except FileNotFoundError:
        raise BadInputError(path, "image file not found") from None
    except OSError as error:
        raise unreadable(path, "image file", error) from None
    _check_structure(io.BytesIO(data.tobytes()), data.size, path, any_format=any_format)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR if flags is None else flags)
    if image is None or image.size == 0:
        raise BadInputError(path, "corrupt image data: it cannot be decoded")
    return image


def image_size(path) -> Tuple[int, int]:
    """(width, height) of a PNG or JPEG file from its header (see :func:`check_image_file`)."""
    return check_image_file(path)
