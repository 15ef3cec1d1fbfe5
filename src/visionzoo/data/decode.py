"""Image decoding that survives real folders.

`decode_image` turns a file (path, bytes or open binary file) into an 8-bit RGB
`PIL.Image.Image`, or raises `ImageDecodeError(path, reason)`. It is the one place where
an image file becomes pixels, so datasets, `predict` and `eval` all see the same colours:

- EXIF orientation is applied (phones store portraits as rotated landscapes);
- transparency (RGBA, LA, palette with a transparent index) is composited on WHITE, not
  dropped: dropping alpha exposes whatever colour the encoder left under transparent
  pixels (often black or garbage), while white is what a viewer shows for a logo or a
  product cut-out, the usual transparent images in classification folders;
- CMYK, YCbCr, LAB, palette, 1-bit and 8-bit grayscale convert through Pillow;
- 16-bit grayscale (I;16, I;16B, I) is rescaled from 0..65535 to 0..255, not clipped
  (Pillow's own `convert("L")` clips, turning most 16-bit photos white);
- decompression bombs are refused: an image whose header claims more than
  `max_pixels` pixels (default Pillow's `Image.MAX_IMAGE_PIXELS`) raises before any
  pixel is decoded, where Pillow itself only warns;
- a file larger than `MAX_FILE_BYTES` (1 GB) is refused before it is read, and a path is
  streamed rather than read whole: a 3 GB sparse "photo" costs no memory;
- truncated, empty, non-image and unreadable files raise `ImageDecodeError`, a
  `ValueError` carrying `.path` and `.reason`, so a loader can report and skip them.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageDecodeError", "decode_image", "draft_jpeg", "IMAGE_EXTENSIONS", "is_image_file"]

# Extensions a folder dataset treats as images; anything else in a class folder is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")

# No image a classifier reads is this large: a 16-bit RGB TIFF at Pillow's pixel limit is about 0.5 GB.
MAX_FILE_BYTES = 1 << 30

Source = str | os.PathLike | bytes | BinaryIO


class ImageDecodeError(ValueError):
    """A file that cannot be turned into an RGB image; `.path` names it, `.reason` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def is_image_file(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def draft_jpeg(image: Image.Image, max_pixels: int) -> Image.Image:
    """Set an opened, not yet loaded JPEG over `max_pixels` to decode at 1/2, 1/4 or 1/8 scale, the least
    that fits (1/8 when none does); `image.size` is then the size it decodes to. libjpeg scales while it
    decodes (Pillow's draft mode), so the full-size pixels are never held. Other images are left as they are."""
    width, height = image.size
    if image.format not in ("JPEG", "MPO") or width * height <= max_pixels:  # MPO: a phone's JPEG with extra frames
        return image
    scale = next((s for s in (2, 4, 8) if -(-width // s) * -(-height // s) <= max_pixels), 8)
    image.draft(None, (max(1, width // scale), max(1, height // scale)))  # Pillow picks the scale from the floor
    return image


def decode_image(source: Source, *, path: str | None = None, max_pixels: int | None = None,
                 max_bytes: int | None = None, draft: bool = False) -> Image.Image:
    """Decode `source` into an 8-bit RGB image, or raise `ImageDecodeError`.

    Args:
        source: a file path, the file's bytes, or an open binary file.
        path: the name used in error messages when `source` is bytes or a file object.
        max_pixels: refuse images with more pixels than this; None uses Pillow's
            `Image.MAX_IMAGE_PIXELS` (about 89 million).
        max_bytes: refuse files larger than this, before reading them; None uses `MAX_FILE_BYTES`.
        draft: decode a JPEG over `max_pixels` at a reduced scale (`draft_jpeg`) instead of refusing it.
    """
    if path is None:
        path = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<bytes>")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    byte_limit = MAX_FILE_BYTES if max_bytes is None else max_bytes

    if isinstance(source, (str, os.PathLike)):
        # A path is streamed: Pillow reads the header, then the pixels, never the whole file at once,
        # and the size is checked before anything is read (a 3 GB file of junk is refused at once).
        try:
            size = os.path.getsize(source)
            _check_size(path, size, byte_limit)
            handle = open(source, "rb")
        except OSError as error:
            raise ImageDecodeError(path, f"unreadable: {error.strerror or error}") from None
        with handle:
            return _decode(handle, path, limit, draft)
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_size(path, len(source), byte_limit)
        return _decode(io.BytesIO(bytes(source)), path, limit, draft)
    try:
        data = source.read(byte_limit + 1)
    except OSError as error:
        raise ImageDecodeError(path, f"unreadable: {error}") from None
    _check_size(path, len(data), byte_limit)
    return _decode(io.BytesIO(data), path, limit, draft)


def _check_size(path: str, size: int, limit: int) -> None:
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    if limit and size > limit:
        raise ImageDecodeError(path, f"file of {size / 1e6:.0f} MB exceeds the limit of {limit / 1e6:.0f} MB for one "
                                     "image (raise max_bytes if the image is genuine)")


def _decode(stream: BinaryIO, path: str, limit: int, draft: bool = False) -> Image.Image:
    """The RGB image in `stream`: header and pixel count checked before the pixels are decoded."""
    with warnings.catch_warnings():
        # Our own pixel limit below replaces Pillow's warning; its 2x hard error still applies.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except UnidentifiedImageError:
            raise ImageDecodeError(path, "not an image (no known image format recognised)") from None
        except Image.DecompressionBombError as error:
            raise ImageDecodeError(path, f"decompression bomb refused: {error}") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageDecodeError(path, f"corrupt image header: {error}") from None
        if draft and limit:
            draft_jpeg(image, limit)
        width, height = image.size
        if limit and width * height > limit:
            raise ImageDecodeError(
                path, f"decompression bomb refused: {width}x{height} = {width * height} pixels exceeds the limit "
                f"of {limit} (raise max_pixels if the image is genuine)")
        if width == 0 or height == 0:
            raise ImageDecodeError(path, f"image has no pixels ({width}x{height})")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)  # a copy: the result no longer reads `stream`
            return _to_rgb(image)
        except ImageDecodeError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
            reason = str(error) or type(error).__name__
            if "truncated" in reason or isinstance(error, EOFError):
                reason = f"truncated file ({reason})"
            raise ImageDecodeError(path, reason) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: rescale the full 0..65535 range to 0..255.
        array = np.asarray(image, dtype=np.float64) if mode != "I" else np.asarray(image).astype(np.float64)
        array = np.clip(array / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        # Float images come either in 0..1 or in 0..255; a maximum of at most 1 means the former.
        scale = 255.0 if np.nanmax(array) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
