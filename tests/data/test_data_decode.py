"""decode_image on a corpus of awkward files the test writes itself."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from visionzoo.data.decode import ImageDecodeError, decode_image


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims `width` x `height` pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_plain_rgb_roundtrip(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (5, 4), (200, 10, 20)).save(path)
    image = decode_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((0, 0)) == (200, 10, 20)


def test_exif_orientation_applied(tmp_path):
    # A 6x2 landscape stored with orientation 6 ("rotate 90 clockwise to view") is a 2x6 portrait.
    image = Image.new("RGB", (6, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=100)
    decoded = decode_image(path)
    assert decoded.size == (2, 6)


def test_palette_with_alpha_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    image.info["transparency"] = 0  # palette index 0 (red) is fully transparent
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    assert decode_image(path).getpixel((1, 1)) == (255, 255, 255)


def test_rgba_half_transparent_blends_with_white(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (3, 3), (0, 0, 0, 128)).save(path)
    value = decode_image(path).getpixel((0, 0))
    assert all(120 <= channel <= 135 for channel in value)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    red, green, blue = decode_image(path).getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_grayscale_rescaled_not_clipped(tmp_path):
    array = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith("I")
    red, green, blue = decode_image(path).getpixel((0, 0))
    assert red == green == blue and 120 <= red <= 135


def test_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (3, 3), 77).save(path)
    assert decode_image(path).getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize("case", ["truncated", "empty", "text", "bomb", "missing", "directory"])
def test_bad_files_raise_one_error_type_with_path_and_reason(tmp_path, case):
    path = tmp_path / f"{case}.jpg"
    if case == "truncated":
        data = _jpeg_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
        path.write_bytes(data[: len(data) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a picture\n")
    elif case == "bomb":
        path = tmp_path / "bomb.png"
        path.write_bytes(_png_header_claiming(60000, 60000))
    elif case == "directory":
        path.mkdir()
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path)
    assert caught.value.path == str(path)
    assert caught.value.reason
    expected = {"truncated": "truncated", "empty": "empty", "text": "not an image", "bomb": "bomb",
                "missing": "unreadable", "directory": "unreadable"}[case]
    assert expected in caught.value.reason


def test_bomb_limit_is_configurable(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageDecodeError, match="bomb"):
        decode_image(path, max_pixels=50 * 50)
    assert decode_image(path).size == (100, 100)


def test_bytes_source_uses_given_name():
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(b"garbage", path="archive.tar/x.jpg")
    assert caught.value.path == "archive.tar/x.jpg"


def test_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(ImageDecodeError("a.jpg", "truncated file")))
    assert error.path == "a.jpg" and error.reason == "truncated file"


def test_a_huge_file_is_refused_by_its_size_before_it_is_read(tmp_path):
    from visionzoo.data.decode import MAX_FILE_BYTES

    path = tmp_path / "huge.jpg"  # a real JPEG header, then a sparse gigabyte: no disk, and no memory either
    path.write_bytes(_jpeg_bytes(Image.new("RGB", (8, 8), (1, 2, 3))))
    with open(path, "r+b") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageDecodeError, match=r"huge\.jpg: file of 1074 MB exceeds the limit of 1074 MB"):
        decode_image(path)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 0 MB"):
        decode_image(_jpeg_bytes(Image.new("RGB", (8, 8))), max_bytes=100)


def test_a_path_is_streamed_not_read_whole(tmp_path):
    import tracemalloc

    path = tmp_path / "padded.jpg"  # a photo with 40 MB of junk after its end: decodes, costs no 40 MB
    path.write_bytes(_jpeg_bytes(Image.new("RGB", (64, 48), (9, 200, 30))) + bytes(40 << 20))
    tracemalloc.start()
    try:
        image = decode_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.size == (64, 48) and peak < 4 << 20
