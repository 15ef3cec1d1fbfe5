"""From an upload's bytes to the pixels the model sees, within the server's limits.

An upload is probed first (its header only: format and size, which for a JPEG over the per-image cap
is the size of its reduced-scale draft decode), so that every cap is checked before a pixel is decoded;
then decoded by `visionzoo.data.decode.decode_image`, the one decoder. Both run in `DecodePool`, whose
threads bound how many images are probed or decoded at once across all requests.
"""

from __future__ import annotations

import asyncio
import io
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from visionzoo.data.decode import ImageDecodeError, decode_image, draft_jpeg
from visionzoo.serve.errors import ApiError
from visionzoo.serve.settings import PixelLimits

__all__ = ["DecodePool", "probe_upload", "decode_upload"]

NOT_AN_IMAGE = "is not an image (JPEG, PNG, WebP, GIF, BMP or TIFF content expected)"

# What Pillow's parsers raise on hostile bytes (a PNG text chunk that inflates past its limit is a
# ValueError, a short TIFF tag a struct.error): the bytes are the client's, so the answer is a 422.
# A TypeError or AttributeError stays a 500: that would be a bug on our side.
MALFORMED = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, struct.error, ZeroDivisionError,
             OverflowError)


class DecodePool:
    """At most `size` images probed or decoded at once, across all requests.

    A pool of `size` threads rather than a semaphore around the shared executor: a request cancelled
    while its image decodes (the client went away) would free a semaphore's slot at once, while the
    thread still holds the pixels; a pool's slot frees only when the decode ends.
    """

    def __init__(self, size: int):
        self.size = size
        self.executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="visionzoo-decode")

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = None

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.executor is None:
            raise RuntimeError("the decode pool is not running")
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)


def probe_upload(name: str, data: bytes, limits: PixelLimits) -> int:
    """The pixels `data` will decode to, read from its header, or ApiError: 415 for bytes that are no
    image (by content, whatever the client declared), 422 for an unreadable header, a decompression bomb,
    an image over the per-image cap or a strip longer than `limits.aspect_ratio` to 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below is tighter
        try:
            with Image.open(io.BytesIO(data)) as image:
                declared = image.size
                draft_jpeg(image, limits.image)
                width, height = image.size
        except (UnidentifiedImageError, OSError):
            raise ApiError(415, f"{name} {NOT_AN_IMAGE}") from None
        except Image.DecompressionBombError as error:
            raise ApiError(422, f"{name} refused: {error}") from None
        except MALFORMED as error:
            raise ApiError(422, f"{name} has an unreadable image header ({type(error).__name__}: {error})") from None
    if min(width, height) == 0:
        raise ApiError(422, f"{name} has no pixels ({width}x{height})")
    if max(width, height) > limits.aspect_ratio * min(width, height):
        raise ApiError(422, f"{name} is {width}x{height}, longer than {limits.aspect_ratio:g}:1; resizing its shorter "
                            "side to the model's input would take too much memory: crop it first")
    if width * height > limits.image:
        scaled = f" even at 1/8 scale ({width}x{height})" if (width, height) != declared else ""
        raise ApiError(422, f"{name} is {declared[0]}x{declared[1]} = {declared[0] * declared[1]} pixels{scaled}, "
                            f"over this server's limit of {limits.image} pixels per image ({limits.reason}); "
                            "send a smaller image")
    return width * height


def decode_upload(name: str, data: bytes, limits: PixelLimits) -> Image.Image:
    """`data` as an RGB image (a JPEG over the cap decoded at a reduced scale), or ApiError 422."""
    try:
        return decode_image(data, path=name, max_pixels=limits.image, draft=True)
    except ImageDecodeError as error:
        raise ApiError(422, f"{name} cannot be decoded: {error.reason}") from None
    except MALFORMED as error:
        raise ApiError(422, f"{name} cannot be decoded: {type(error).__name__}: {error}") from None
