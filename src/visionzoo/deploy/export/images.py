"""The images an export is checked and calibrated on: a folder's image files, or drawn photos when
no folder is given (good for verification and speed, not for calibrating what users will see)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visionzoo.errors import SettingError

__all__ = ["image_files", "synthetic_photos"]


def image_files(folder: Path, limit: int | None = None) -> list[Path]:
    """The image files under `folder` (sorted; with `limit`, an even sample of that many)."""
    from visionzoo.data.decode import is_image_file

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise SettingError(f"no images (.jpg, .png, ...) found under {folder}")
    if limit is not None and len(files) > limit:  # an even sample across classes, not the first folder only
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def synthetic_photos(count: int = 4) -> list:
    """A few drawn images (gradients and shapes), PIL images of 256 x 256, always the same."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        base = np.linspace(0, 255, 256, dtype=np.float32)
        pixels = np.stack([np.outer(np.ones(256), base), np.outer(base, np.ones(256)),
                           np.full((256, 256), 40.0 * i)], axis=-1)
        image = Image.fromarray(np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        x, y = rng.integers(20, 140, size=2)
        draw.ellipse([int(x), int(y), int(x) + 90, int(y) + 70], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        images.append(image)
    return images
