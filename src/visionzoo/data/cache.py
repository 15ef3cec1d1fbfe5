"""The decoded-uint8 cache of large photos for training: each image decoded once, at the size the run needs.

`cache_photos(train, val, plan)` turns files into `ArraySamples`:

- training images at `train_side`: the evaluation size (`image_size / crop_pct`) with room for
  RandomResizedCrop, whose smallest crops (`scale` 0.35 of the area, 0.59 of the side) are
  then cut from pixels instead of upsampled: `image_size / sqrt(min_scale)`, but never more
  than the largest shorter side among the photos (headers only are read for that), so small
  images are not blown up;
- validation images as the evaluation view itself (`transforms.eval_view`: shorter side to
  `image_size / crop_pct`, centre crop `image_size`, the very transform `eval` applies before it
  normalises), so validating is a normalisation only and gives `eval`'s numbers.

They are decoded into memory when both fit in `memory_budget()` (a quarter of the memory
available now, at most 4 GiB), and into the memory-mapped cache file of `cache_pixels`
otherwise (which later runs reuse). Augmentation then works on those uint8 arrays
(`uint8_train_transform`: RandomResizedCrop and flip on uint8 tensors, normalised as a batch
on the device), so no epoch decodes a JPEG again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torchvision.transforms import v2

from visionzoo.data.datasets import Skipped, cache_pixels
from visionzoo.data.samples import FileSamples, Samples
from visionzoo.data.transforms import AFFINE_INTERPOLATION, eval_view, interpolation_of

__all__ = ["CachePlan", "cache_photos", "memory_budget", "min_crop_scale", "plan_cache", "uint8_train_transform"]

MAX_IN_MEMORY_BYTES = 4 << 30


def min_crop_scale(preset: str) -> float:
    """The smallest RandomResizedCrop area fraction of a train preset (`visionzoo.data.transforms`)."""
    return {"strong": 0.08, "light": 0.35, "medium": 0.35}.get(preset, 1.0)


def memory_budget() -> int:
    """Bytes a run may hold in decoded images: a quarter of the memory available now, at most 4 GiB."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os

        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    return min(MAX_IN_MEMORY_BYTES, available // 4)


def _largest_short_side(samples: FileSamples, limit: int) -> int:
    """The largest shorter side among the files (headers only), stopping early once one reaches `limit`."""
    from PIL import Image

    largest = 0
    for path in samples.paths:
        try:
            with Image.open(path) as image:
                largest = max(largest, min(image.size))
        except Exception:  # noqa: BLE001, S112 - a bad file is reported by the decoding pass
            continue
        if largest >= limit:
            return limit
    return largest or limit


@dataclass(frozen=True)
class CachePlan:
    train_side: int
    eval_resize: int  # shorter side before the centre crop (image_size / crop_pct)
    image_size: int
    in_memory: bool
    bytes: int


def plan_cache(train: Samples, val: Samples | None, image_size: int, crop_pct: float, preset: str,
               cache_size: int | None = None) -> CachePlan:
    eval_resize = math.floor(image_size / crop_pct)
    wanted = cache_size or max(eval_resize, math.ceil(image_size / math.sqrt(min_crop_scale(preset))))
    train_side = wanted
    if isinstance(train, FileSamples) and cache_size is None and len(train):
        train_side = max(image_size, min(wanted, _largest_short_side(train, wanted)))
    size = len(train) * train_side ** 2 * 3 + (len(val) * image_size ** 2 * 3 if val is not None else 0)
    return CachePlan(train_side, eval_resize, image_size, size <= memory_budget(), size)


def cache_photos(train: Samples, val: Samples | None, plan: CachePlan, *, data_config: dict, workers: int = 0,
                 progress: Callable[[int], None] | None = None
                 ) -> tuple[Samples, Samples | None, list[Skipped]]:
    """Train and val decoded once as the plan says, val through `data_config`'s evaluation view; (train,
    val, bad files)."""
    bad: list[Skipped] = []
    train_cached, skipped = cache_pixels(train, plan.train_side, workers=workers, in_memory=plan.in_memory,
                                         progress=progress)
    bad += skipped
    val_cached = None
    if val is not None:
        val_cached, skipped = cache_pixels(val, plan.image_size, view=eval_view(data_config, plan.image_size),
                                           workers=workers, in_memory=plan.in_memory, progress=progress)
        bad += skipped
    return train_cached, val_cached, bad


def uint8_train_transform(config: dict, preset: str, image_size: int) -> v2.Compose | None:
    """The light and medium presets on (C, H, W) uint8 tensors, giving uint8 (normalised later, as a
    batch: `NormalizeInput`); None for the other presets, which keep their float transforms."""
    if preset not in ("light", "medium"):
        return None
    steps = [v2.RandomResizedCrop(image_size, scale=(min_crop_scale(preset), 1.0),
                                  interpolation=interpolation_of(config), antialias=True),
             v2.RandomHorizontalFlip()]
    if preset == "medium":
        steps.append(v2.TrivialAugmentWide(interpolation=AFFINE_INTERPOLATION))
    return v2.Compose(steps)

