"""The training and validation loaders of a run, built from samples and a data config.

`build_loaders` picks one of three input paths, fastest first:

- resident: decoded arrays that fit (`fits_on_device`) stay whole on the training device and
  are cropped and flipped a batch at a time there (`ResidentBatches`), with no per-image
  host work;
- fast: for the `crop` and `none` presets with whole-image evaluation (crop_pct 1), uint8
  images are cropped and flipped per sample from the sampler's seed (`SeededCropFlip`) and
  normalised as a batch on the device (`Loaders.normalize`);
- photos: arrays from the decoded-uint8 photo cache (`data.cache.cache_photos`, `photo_cache=True`)
  are augmented as uint8 per sample (RandomResizedCrop and flip, `uint8_train_transform`) and
  normalised as a batch on the device;
- otherwise torchvision transforms per sample (`train_transform`).

Whichever path, the validation images are the evaluation view (`eval_view`, the pixels `eval`
computes): applied per image, or stored so by a cache (`ViewSamples`), and normalised with
`eval_transform`'s arithmetic, so a run's last validation and `eval` of the saved model agree.

Tar shards (`data.shards.ShardSamples`) take a path of their own, `stream_loaders`: training batches
streamed in order by `data.streaming`, through torchvision transforms per sample.

The three give the same batches where they overlap (the resident and fast paths are tested
equal). `cache_splits` and `scan_splits` are the optional steps before: decode once into the
memory-mapped pixel cache, or check that every file decodes. This module knows nothing of
training settings: the trainer passes what each choice needs.

BatchNorm cannot train on one image (its batch statistics need two values per channel), so with
`no_single_image_batches` (`NoSingleImageBatches`) an epoch whose last batch would hold one image
(N % batch == 1) ends with that image merged into the batch before it, and a batch that unreadable
files shrink to one image is left out, with a note through `say`, once each.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from visionzoo.data.cache import uint8_train_transform
from visionzoo.data.datasets import (
    ImageDataset,
    ResidentBatches,
    ResumableSampler,
    Skipped,
    ViewSamples,
    cache_pixels,
    collate_skipping,
    scan_files,
)
from visionzoo.data.resize import resize_mode_of
from visionzoo.data.samples import ArraySamples, FileSamples, Samples
from visionzoo.data.shards import ShardSamples
from visionzoo.data.streaming import ShardStream, StreamBatches, StreamPlan
from visionzoo.data.transforms import (
    NormalizeInput,
    SeededCropFlip,
    crop_padding,
    eval_transform,
    eval_view,
    image_hw,
    normalize_view,
    train_transform,
)
from visionzoo.errors import SettingError

__all__ = ["Loaders", "build_loaders", "cache_splits", "cache_size", "scan_splits", "default_workers",
           "fits_on_device", "class_counts", "NoSingleImageBatches", "RESIDENT_LIMIT_BYTES", "stream_loaders"]

RESIDENT_LIMIT_BYTES = 2 << 30


def default_workers(samples: Samples) -> int:
    """Loader processes for `samples`: most cores for files to decode, few for decoded arrays."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(samples, ArraySamples):
        return 0 if cpus <= 2 else min(4, cpus // 2)  # decoded arrays: transforms only
    return max(1, min(8, cpus - 1))


def fits_on_device(train: Any, val: Any, device: torch.device) -> bool:
    """Whether the decoded train (and val) arrays can live whole on `device`: at most 2 GiB, and on a
    GPU at most a quarter of its free memory, so the model keeps the rest."""
    if not isinstance(train, ArraySamples) or (val is not None and not isinstance(val, ArraySamples)):
        return False
    size = train.images.nbytes + (val.images.nbytes if val is not None else 0)
    if size > RESIDENT_LIMIT_BYTES:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return size <= free // 4
    return True


def class_counts(labels: Iterable[int], num_classes: int) -> np.ndarray:
    """Images per class, as float64 (for balanced sampling and class-weighted losses)."""
    return np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)


def scan_splits(splits: dict[str, Samples | None]) -> dict[str, list[Skipped]]:
    """The files of each split that do not decode (`scan_files`), by split name; None splits are left out."""
    return {name: scan_files(samples, workers=default_workers(samples))
            for name, samples in splits.items() if samples is not None}


def cache_splits(train: Samples, val: Samples | None, size: int, *, data_config: dict[str, Any],
                 image_size: int, rank: int = 0, world: int = 1) -> tuple[Samples, Samples | None, list[Skipped]]:
    """`train` decoded once into the memory-mapped pixel cache at `size` (`cache_pixels`), `val` as
    its evaluation view at `image_size` (`eval_view`: what `eval` computes, cut once), and the files
    that did not decode. Under torchrun rank 0 builds each cache first and the other ranks then open it."""
    cached: list[Samples | None] = []
    bad: list[Skipped] = []
    for samples, side, view in ((train, size, None), (val, image_size, eval_view(data_config, image_size))):
        if samples is None:
            cached.append(None)
            continue
        if world > 1 and rank != 0:
            dist.barrier()  # let rank 0 build the cache first
        array, skipped = cache_pixels(samples, side, workers=default_workers(samples), view=view)
        if world > 1 and rank == 0:
            dist.barrier()
        bad.extend(skipped)
        cached.append(array)
    return cached[0], cached[1], bad


@dataclass
class Loaders:
    """What `build_loaders` made. `train` yields `collate_skipping` batches
    `(images, labels, indices, skipped)` of one micro-batch each, in the order `sampler` gives
    (call `sampler.set_position(epoch, samples_done)` before each epoch); `val` the same for
    validation, or None without validation data. With `normalize`, images arrive as uint8 and
    must pass through it on the device (it is the first layer of the model at evaluation too)."""

    train_set: ImageDataset
    val_set: ImageDataset | None
    sampler: ResumableSampler
    train: Any  # torch DataLoader or ResidentBatches
    val: Any | None
    normalize: NormalizeInput | None
    resident: bool

    @property
    def train_samples(self) -> Samples:
        return self.train_set.samples

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train)


def build_loaders(train: Samples, val: Samples | None, *, data_config: dict[str, Any], image_size: int | tuple[int, int],
                  batch_size: int, val_batch_size: int, augment: str, crop_padding_px: int | None = None,
                  alternate_flip: bool = False, balanced: bool = False, num_classes: int, workers: int | None = None,
                  seed: int = 0, device: torch.device, rank: int = 0, world: int = 1,
                  photo_cache: bool = False, no_single_image_batches: bool = False,
                  say: Callable[[str], None] = print) -> Loaders:
    """The loaders of one process (`rank` of `world`).

    Args:
        train, val: the samples (after `cache_splits`, if caching); `val` may be None or empty.
        data_config: the model's preprocessing (`crop_pct`, `mean`, `std`, ...).
        image_size: the training and evaluation size in pixels.
        batch_size: images per micro-batch on this process; `val_batch_size` for validation.
        augment: the augmentation preset; `crop_padding_px` its crop range (None: size / 8).
        alternate_flip: mirror each image every other epoch (airbench); needs the fast path.
        balanced: draw training images in inverse proportion to their class's size.
        workers: loader processes; None: `default_workers(train)`.
        photo_cache: `train` and `val` come from `data.cache.cache_photos` (uint8 arrays, the
            validation ones at the evaluation view, `ViewSamples`).
        no_single_image_batches: never a training batch of one image (`NoSingleImageBatches`; for
            models with BatchNorm), saying so through `say`.
    """
    if isinstance(train, ShardSamples):  # streamed from tar shards
        return stream_loaders(train, val, data_config=data_config, image_size=image_size, batch_size=batch_size,
                              val_batch_size=val_batch_size, augment=augment, crop_padding_px=crop_padding_px,
                              workers=workers, seed=seed, device=device, rank=rank, world=world,
                              refused={"balanced": balanced, "alternate_flip": alternate_flip}, say=say)

    def fits(samples) -> bool:  # SeededCropFlip fits files by the crop resize mode only
        square = isinstance(image_size, int)
        return (isinstance(samples, FileSamples) and square and resize_mode_of(data_config) == "crop") or (
            isinstance(samples, ArraySamples) and samples.images.shape[1:3] == image_hw(data_config, image_size))

    has_val = val is not None and len(val) > 0
    fast_input = (not photo_cache and augment in ("crop", "none") and fits(train) and (val is None or fits(val))
                  and float(data_config.get("crop_pct", 0.875)) == 1.0)
    # Validation sees what `eval` sees: the evaluation view (`eval_view`), applied here or stored so by a
    # cache (`ViewSamples`), normalised with eval's arithmetic (on the device by `NormalizeInput`).
    # Only the training images take the faster resizes.
    viewed = isinstance(val, ViewSamples)
    if fast_input:
        padding = crop_padding(image_size, crop_padding_px) if augment == "crop" else 0
        normalize = NormalizeInput(data_config["mean"], data_config["std"]).to(device)
        train_set = ImageDataset(train, SeededCropFlip(padding, image_size))
        val_view = None if viewed else eval_view(data_config, image_size)
    elif photo_cache:  # uint8 in, uint8 out (float for the presets without a uint8 form), normalised on the device
        normalize = NormalizeInput(data_config["mean"], data_config["std"]).to(device)
        train_set = ImageDataset(train, uint8_train_transform(data_config, augment, image_size)
                                 or train_transform(data_config, augment, image_size, crop_padding_px))
        val_view = None if viewed else eval_view(data_config, image_size)
    else:
        normalize = None
        train_set = ImageDataset(train, train_transform(data_config, augment, image_size, crop_padding_px))
        val_view = normalize_view(data_config) if viewed else eval_transform(data_config, image_size)
    val_set = ImageDataset(val, val_view) if has_val else None
    weights = None
    if balanced:
        if np.ndim(train.labels) == 2:  # multi-label: per label (see data.multilabel)
            from visionzoo.data.multilabel import balanced_sample_weights

            weights = balanced_sample_weights(train.labels)
        else:
            weights = 1.0 / np.maximum(class_counts(train.labels, num_classes), 1)[train.labels]
    if alternate_flip and not fast_input:
        raise SettingError("alternate_flip works with the crop augmentation (augment='crop') and whole-image "
                         f"evaluation; this run uses augment={augment!r}")
    sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, weights=weights,
                               alternate_flip=alternate_flip)
    workers = workers if workers is not None else default_workers(train)
    # Decoded arrays that fit are kept whole on the device and augmented a batch at a time
    # (the same batches as the per-sample path); otherwise a DataLoader feeds the device.
    # Validation arrays on the device are used as they are: the view already (`ViewSamples`), or arrays
    # at the size, which the evaluation view at crop_pct 1 (the fast path's) leaves unchanged.
    resident = fast_input and fits_on_device(train, val, device)
    if resident:
        train_loader = ResidentBatches(train, batch_size, sampler=sampler, padding=train_set.transform.padding,
                                       device=device)
    else:
        train_loader = torch.utils.data.DataLoader(
            train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
            collate_fn=collate_skipping, pin_memory=device.type == "cuda", drop_last=False,
            generator=torch.Generator())  # its own generator: creating an iterator must not draw from the global RNG
    if no_single_image_batches:
        train_loader = NoSingleImageBatches(train_loader, sampler, batch_size, say)
    val_loader = None
    if val_set is not None and resident:
        val_loader = ResidentBatches(val, val_batch_size, device=device)
    elif val_set is not None:
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=val_batch_size, num_workers=workers,
                                                 collate_fn=collate_skipping, pin_memory=device.type == "cuda")
    return Loaders(train_set, val_set, sampler, train_loader, val_loader, normalize, resident)


def stream_loaders(train: ShardSamples, val: Samples | None, *, data_config: dict[str, Any], image_size: int,
                   batch_size: int, val_batch_size: int, augment: str, crop_padding_px: int | None, workers: int | None,
                   seed: int, device: torch.device, rank: int, world: int, refused: dict[str, bool],
                   say: Callable[[str], None] = print) -> Loaders:
    """The loaders of a run on tar shards: training batches streamed (`data.streaming`), validation
    from the val shards read into memory, both through torchvision transforms per sample."""
    asked = [name for name, value in refused.items() if value]
    if asked:
        raise SettingError(f"{' and '.join(asked)} need random access to the images; shards are read in order. "
                           "Use --class-balance weights, or train from the folder")
    plan = StreamPlan(train, rank=rank, world=world, batch_size=batch_size, seed=seed)
    say(f"streaming {len(train.urls)} shards: {sum(map(len, plan.layout[rank]))} on this "
        f"process in {plan.lanes} lanes, {plan.batches} batches per epoch"
        + (f"; {plan.left_out} of {len(train)} images left out each epoch (a different part every epoch) so that "
           f"the {world} processes take the same number of steps" if plan.left_out else ""))
    stream = ShardStream(train, plan, train_transform(data_config, augment, image_size, crop_padding_px))
    workers = workers if workers is not None else default_workers(train)
    batches = StreamBatches(stream, workers=workers, pin_memory=device.type == "cuda")
    val_set = ImageDataset(val, eval_transform(data_config, image_size)) if val is not None and len(val) else None
    val_loader = None if val_set is None else torch.utils.data.DataLoader(
        val_set, batch_size=val_batch_size, num_workers=workers, collate_fn=collate_skipping,
        pin_memory=device.type == "cuda")
    return Loaders(stream, val_set, batches, batches, val_loader, None, False)


class NoSingleImageBatches:
    """Training batches of two images or more, from a loader of `collate_skipping` batches drawn
    from `sampler` in batches of `batch_size`.

    When this rank's epoch ends on a batch of one image (its sample count % `batch_size` == 1), that
    image joins the batch before it: one batch fewer per epoch (`len`), the last one larger by one.
    A batch left with one readable image (the rest skipped as unreadable) is yielded without images,
    its skipped files still listed: it counts as a batch that trains nothing, as one whose images
    are all unreadable. Each case is told through `say` once."""

    def __init__(self, loader: Any, sampler: ResumableSampler, batch_size: int, say: Callable[[str], None] = print):
        self.loader, self.sampler, self.batch_size, self.say = loader, sampler, batch_size, say
        self.merges = len(sampler) % batch_size == 1 and len(loader) > 1
        self.told: set[str] = set()

    def __len__(self) -> int:
        return len(self.loader) - self.merges

    def __iter__(self) -> Iterator:
        # the batches this pass yields before the last two: the sampler skips those done before a resume
        left = -(-(len(self.sampler) - self.sampler.skip) // self.batch_size)
        batches = iter(self.loader)
        for position in range(left):
            batch = next(batches)
            if self.merges and position == left - 2:
                batch = _concatenate(batch, next(batches))
                self._tell("merge", f"the last training batch of each epoch would hold one image, which BatchNorm "
                                    f"cannot train on: it joins the batch before it ({self.batch_size + 1} images)")
            elif len(batch[1]) == 1:
                self._tell("drop", "a training batch was left with one readable image, which BatchNorm cannot "
                                   "train on: such an image is left out of its step")
                images, labels, indices, skipped = batch
                batch = images[:0], labels[:0], indices[:0], skipped
            yield batch
            if self.merges and position == left - 2:
                return

    def _tell(self, case: str, line: str) -> None:
        if case not in self.told:
            self.told.add(case)
            self.say(line)


def _concatenate(first: tuple, second: tuple) -> tuple:
    images, labels, indices, skipped = first
    if not len(second[1]):
        return images, labels, indices, skipped + second[3]
    if not len(labels):
        return second[0], second[1], second[2], skipped + second[3]
    return (torch.cat([images, second[0]]), torch.cat([labels, second[1]]), torch.cat([indices, second[2]]),
            skipped + second[3])


def cache_size(image_size: int, data_config: dict[str, Any], requested: int | None = None) -> int:
    """The side of the cached images: `requested`, else the size evaluation resizes to before its crop."""
    return requested or int(math.floor(image_size / float(data_config.get("crop_pct", 0.875))))
