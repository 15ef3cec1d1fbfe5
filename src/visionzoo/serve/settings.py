"""What one server allows: batching, and the limits that keep one request from taking its memory.

Every limit is a `visionzoo serve` flag of the same name (`max_image_pixels` is `--max-image-pixels`).
Memory is bounded in three steps: the body (`max_upload_mb`, counted while reading), the pixels an
upload may become (`max_image_pixels` per image, tied to the model's input size, and
`max_request_pixels` per request, both checked from the image headers before any pixel is decoded),
and how many images are decoded at once (`max_decodes`), so the decoded pixels held at any moment are
at most `max_decodes * max_image_pixels`, however many requests arrive together.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionzoo.errors import SettingError

__all__ = ["ServeSettings", "PixelLimits"]

# An image may decode to this many times the pixels the model sees (10x each side: 2240x2240 for a
# 224x224 model), and at least MIN_IMAGE_PIXELS: more only costs memory, the model sees its input size.
PIXELS_PER_INPUT_PIXEL = 100
MIN_IMAGE_PIXELS = 4_000_000
IMAGES_PER_REQUEST_PIXELS = 8  # a request may hold this many full-size images' pixels in all
# Preprocessing resizes the shorter side to the model's input (over crop_pct): a 65535x1 strip, 65 kpx,
# would become 16.7M x 256 pixels, 17 GB. Within 20:1, and crop_pct >= 0.5, the resized image has at most
# 20 x (2 x side)^2 = 80x the input's pixels: within the default per-image cap.
MAX_ASPECT_RATIO = 20


@dataclass(frozen=True)
class PixelLimits:
    """The pixel caps in force for one model: per image and per request, with why the image cap is what it is."""

    image: int
    request: int
    reason: str  # 'set by --max-image-pixels', or the rule that tied it to the model's input size
    aspect_ratio: float = MAX_ASPECT_RATIO  # longer side over shorter side


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_mb: float = 10.0
    queue: int = 256
    read_timeout_s: float = 30.0  # a client must finish sending its body within this time
    # A body over max_upload_mb is still read, and thrown away, up to this many MB before the 413:
    # clients that send the whole body before reading the reply (Python's urllib, requests) would
    # otherwise get a connection reset instead. Beyond it the connection is closed unread.
    max_discard_mb: float = 256.0
    max_topk: int = 100
    reject: bool = True  # answer "unknown" below the model's OOD threshold, when it has one
    max_images: int = 32  # images in one request (a multipart form's files)
    max_image_pixels: int | None = None  # per image after JPEG draft decoding; None: tied to the model's input
    max_request_pixels: int | None = None  # all images of one request; None: IMAGES_PER_REQUEST_PIXELS images' worth
    max_decodes: int = 4  # images being decoded at once, across all requests
    header_timeout_s: float = 10.0  # a client must finish sending a request's headers within this time
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this long
    docs: bool = False  # /docs (Swagger UI, which loads its scripts from a CDN) and /openapi.json

    def __post_init__(self):
        positive = (self.max_batch, self.queue, self.max_upload_mb, self.max_images, self.max_decodes,
                    self.header_timeout_s, self.keep_alive_s, self.max_image_pixels or 1, self.max_request_pixels or 1)
        if min(positive) <= 0 or self.max_wait_ms < 0 or self.max_discard_mb < 0:
            raise SettingError(f"invalid serve settings: {self}")

    def pixel_limits(self, input_size: tuple[int, int] | None) -> PixelLimits:
        """The caps for a model whose input is `input_size` (height, width; None when unknown)."""
        if self.max_image_pixels is not None:
            image, reason = self.max_image_pixels, "set by --max-image-pixels"
        elif input_size:
            height, width = input_size
            image = max(MIN_IMAGE_PIXELS, PIXELS_PER_INPUT_PIXEL * height * width)
            reason = f"{PIXELS_PER_INPUT_PIXEL}x the model's {height}x{width} input; --max-image-pixels to change"
        else:
            image, reason = MIN_IMAGE_PIXELS, "the default for a model of unknown input size; --max-image-pixels to change"
        request = self.max_request_pixels or IMAGES_PER_REQUEST_PIXELS * image
        return PixelLimits(image, request, reason)
