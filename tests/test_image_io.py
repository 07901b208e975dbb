"""tripled_tf.data.image_io from first principles: PNG and JPEG files built byte by byte (or cut
from ones OpenCV writes), so the expected size and the expected refusal are known without the
module's own parser."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from tripled_tf.data import image_io
from tripled_tf.data.records import BadInputError


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of width x height, every pixel 7 (PNG spec: IHDR, IDAT, IEND)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, colour type 0 (grey)
    rows = b"".join(b"\x00" + bytes([7]) * width for _ in range(height))  # filter byte 0 per row
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _jpeg_header(width: int, height: int, sof: int = 0xC0) -> bytes:
    """SOI, an APP0 segment to skip, then a start-of-frame segment giving height and width."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    frame = b"\xff" + bytes([sof]) + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + frame


def test_png_size_from_a_hand_built_header_and_decoded_pixels(tmp_path):
    path = tmp_path / "grey.png"
    path.write_bytes(_png(5, 3))
    assert image_io.check_image_file(path) == (5, 3)
    image = image_io.read_image(path, cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(image, np.full((3, 5), 7, np.uint8))


def test_jpeg_size_read_from_the_sof_segment_after_other_segments(tmp_path):
    # Width 300 and height 200 sit at fixed offsets of the SOF segment; the APP0 before it must be
    # skipped by its length. A progressive SOF (C2) carries the size the same way; C4 (DHT) is no SOF.
    for sof in (0xC0, 0xC2):
        path = tmp_path / f"sof_{sof:x}.jpg"
        path.write_bytes(_jpeg_header(300, 200, sof) + b"\xff\xd9")
        assert image_io.check_image_file(path) == (300, 200)
    no_sof = tmp_path / "no_sof.jpg"
    no_sof.write_bytes(_jpeg_header(300, 200, 0xC4) + b"\xff\xda" + b"\xff\xd9")
    with pytest.raises(BadInputError, match="corrupt JPEG: no frame header"):
        image_io.check_image_file(no_sof)


def _jpeg_cut_in_half() -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()[: encoded.size // 2]


@pytest.mark.parametrize("name, data, problem", [
    ("cut.png", lambda: _png(64, 64)[:-20], "truncated PNG: no IEND chunk"),  # IEND gone
    ("header_only.png", lambda: _png(4, 4)[:20], "truncated PNG: no IHDR header"),
    ("cut.jpg", _jpeg_cut_in_half, "truncated JPEG: no end-of-image marker"),
    ("in_header.jpg", lambda: _jpeg_header(300, 200)[:26], "truncated JPEG: it ends inside the frame header"),
])
def test_truncated_png_and_jpeg_are_refused_naming_the_file(tmp_path, name, data, problem):
    path = tmp_path / name
    path.write_bytes(data())
    for read in (image_io.check_image_file, image_io.read_image):
        with pytest.raises(BadInputError, match=problem) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: ")


def test_wrong_signature_empty_and_missing_files(tmp_path):
    gif = tmp_path / "frame.png"  # the extension says PNG; the signature decides
    gif.write_bytes(b"GIF89a\x01\x00\x01\x00")
    with pytest.raises(BadInputError, match="not a PNG or JPEG file: it starts with b'GIF89a"):
        image_io.check_image_file(gif)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty file"):
        image_io.read_image(empty)
    with pytest.raises(BadInputError, match="image file not found"):
        image_io.read_image(tmp_path / "absent.png")
    zero_size = tmp_path / "zero.png"
    zero_size.write_bytes(_png(0, 3))
    with pytest.raises(BadInputError, match="corrupt header: image size 0x3"):
        image_io.check_image_file(zero_size)


def test_corrupt_pixel_data_is_caught_by_decoding(tmp_path):
    data = bytearray(_png(16, 16))
    idat = data.index(b"IDAT") + 4
    data[idat:idat + 8] = b"\xff" * 8  # the zlib stream's start: not inflatable
    path = tmp_path / "garbage.png"
    path.write_bytes(bytes(data))
    assert image_io.check_image_file(path) == (16, 16)  # the structure is intact
    with pytest.raises(BadInputError, match="corrupt image data: it cannot be decoded"):
        image_io.read_image(path)


def test_other_formats_only_when_asked(tmp_path):
    path = tmp_path / "x.bmp"
    assert cv2.imwrite(str(path), np.full((4, 6, 3), 9, np.uint8))
    with pytest.raises(BadInputError, match="not a PNG or JPEG file"):
        image_io.read_image(path)
    np.testing.assert_array_equal(image_io.read_image(path, any_format=True), np.full((4, 6, 3), 9))
