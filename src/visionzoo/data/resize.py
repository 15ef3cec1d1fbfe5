"""How a photo of any shape becomes the model's H x W input: the three resize modes, torch-free.

    crop       the shorter side (for a rectangular input, the side that leaves the image covering it)
               resized to size / crop_pct, then the centre H x W: the ImageNet evaluation, which cuts
               off the ends of a panorama or a tall phone photo
    squash     both sides resized to H x W: nothing is cut, shapes are stretched
    letterbox  the whole photo resized to fit inside H x W with its aspect ratio kept, the rest filled
               with the mean colour (which normalises to zero): nothing is cut and nothing is stretched

A data config names its mode as `resize_mode`; weights whose preprocessing says timm's
`crop_mode="squash"` mean squash (`resize_mode_of`). `fit_image` is the one Pillow implementation:
the PyTorch transforms (`data.transforms`) call it on decoded photos, and so does the torch-free
preprocessing of exported files (`deploy.runtimes.preprocess_image`), so training, `predict` and
every runtime see the same pixels. Imports only Pillow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from visionzoo.errors import SettingError

__all__ = ["RESIZE_MODES", "RESIZE_HELP", "resize_mode_of", "check_resize_mode", "letterbox_box", "cover_size", "fill_colour",
           "fit_image", "PIL_RESAMPLE"]

RESIZE_MODES = ("crop", "squash", "letterbox")
RESIZE_HELP = ("how a photo of another shape becomes the input: crop (the centre), squash (stretched) or letterbox "
               "(aspect kept, padded with the mean colour) (default: the model's preprocessing, crop for most)")

PIL_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise SettingError(f"unknown resize mode {mode!r}; choose crop, squash or letterbox")
    return mode


def resize_mode_of(config: Mapping[str, Any]) -> str:
    """The config's `resize_mode`; without one, squash where the weights' `crop_mode` says so, else crop."""
    mode = config.get("resize_mode")
    if mode is None:
        mode = "squash" if config.get("crop_mode") == "squash" else "crop"
    return check_resize_mode(str(mode))


def letterbox_box(width: int, height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """(new width, new height, left, top): the photo scaled to fit inside the output, centred."""
    scale = min(out_width / width, out_height / height)
    new_width = min(out_width, max(1, round(width * scale)))
    new_height = min(out_height, max(1, round(height * scale)))
    return new_width, new_height, (out_width - new_width) // 2, (out_height - new_height) // 2


def cover_size(width: int, height: int, out_width: int, out_height: int, crop_pct: float) -> tuple[int, int]:
    """The size the crop mode resizes a photo to before its centre crop. Square outputs: the shorter
    side to floor(size / crop_pct), the other truncated, as torchvision's Resize(int) computes it;
    rectangular ones: the smallest scale at which the photo covers (H, W) / crop_pct."""
    if out_width == out_height:
        side = int(math.floor(out_width / crop_pct))
        return (side, int(side * height / width)) if width <= height else (int(side * width / height), side)
    scale = max(out_width / crop_pct / width, out_height / crop_pct / height)
    return max(out_width, round(width * scale)), max(out_height, round(height * scale))


def fill_colour(mean: Sequence[float]) -> tuple[int, ...]:
    """The letterbox bars' colour: the normalisation mean in 0..255, so the bars normalise to about zero."""
    return tuple(int(round(255 * float(m))) for m in mean)


def fit_image(image: Image.Image, mode: str, height: int, width: int, *, crop_pct: float = 1.0,
              mean: Sequence[float] = (0.5, 0.5, 0.5), interpolation: str = "bicubic") -> Image.Image:
    """`image` (RGB) as an H x W Pillow image by `mode` (see the module docstring)."""
    resample = PIL_RESAMPLE.get(interpolation, Image.BICUBIC)
    if mode == "squash":
        return image.resize((width, height), resample)
    if mode == "letterbox":
        new_width, new_height, left, top = letterbox_box(*image.size, width, height)
        canvas = Image.new("RGB", (width, height), fill_colour(mean))
        canvas.paste(image.resize((new_width, new_height), resample), (left, top))
        return canvas
    check_resize_mode(mode)
    new_width, new_height = cover_size(*image.size, width, height, crop_pct)
    image = image.resize((new_width, new_height), resample)
    left, top = int(round((new_width - width) / 2.0)), int(round((new_height - height) / 2.0))
    return image.crop((left, top, left + width, top + height))
