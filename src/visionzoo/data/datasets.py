"""Datasets, the resumable sampler, skipping bad files, scanning, and the pixel cache.

Bad files never crash a run: `ImageDataset.__getitem__` turns an `ImageDecodeError` into a
`Skipped(path, reason)` record and `collate_skipping` takes those out of the batch and hands
them to the main process, so they are reported (and written to the run folder's
bad_files.txt) even when several loader workers decode.

Augmentation randomness is a function of (seed, epoch, position in the epoch) only: the
sampler yields `(index, sample_seed)` pairs and the dataset seeds torch's generator from
`sample_seed` before transforming. Results therefore do not depend on the number of loader
workers or processes, and a run resumed mid-epoch sees exactly the augmentations that the
interrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from visionzoo.data.archives import cache_root, remove_stale_scratch
from visionzoo.data.decode import ImageDecodeError, decode_image
from visionzoo.data.samples import ArraySamples, FileSamples, Samples

__all__ = ["ImageDataset", "Skipped", "collate_skipping", "ResumableSampler", "ResidentBatches", "crop_flip_batch",
           "crop_flip_shifts", "crop_shifted", "scan_files", "cache_pixels", "resize_short_center_crop", "ViewSamples"]


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class ImageDataset(Dataset):
    """Samples plus a transform; items are `(image_tensor, label, index)` or `Skipped`."""

    def __init__(self, samples: Samples, transform: Callable | None = None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        if isinstance(self.samples, FileSamples):
            return self.samples.paths[index]
        return self.samples.names[index] if self.samples.names else f"#{index}"

    def load(self, index: int):
        """The decoded image before transforms: PIL image (files) or CHW uint8 tensor (arrays)."""
        if isinstance(self.samples, FileSamples):
            return decode_image(self.samples.paths[index])
        if not isinstance(self.samples, ArraySamples):  # samples that decode themselves (EncodedSamples, data.hf)
            return self.samples.decode(index)
        return torch.from_numpy(np.array(self.samples.images[index])).permute(2, 0, 1)  # a writable copy

    def __getitem__(self, item):
        index, sample_seed = item if isinstance(item, tuple) else (item, None)
        try:
            image = self.load(index)
        except ImageDecodeError as error:
            return Skipped(error.path, error.reason)
        if self.transform is not None:
            if getattr(self.transform, "takes_seed", False):
                image = self.transform(image, sample_seed)
            elif sample_seed is None:
                image = self.transform(image)
            else:
                # Transforms draw from the CPU generator only; seeding just that one costs ~1 us
                # (torch.manual_seed, which also seeds every accelerator, ~100 us per image).
                generator = torch.default_generator
                # in the main process, leave the caller's generator (dropout, mixup) undisturbed
                saved = generator.get_state() if torch.utils.data.get_worker_info() is None else None
                generator.manual_seed(sample_seed)
                try:
                    image = self.transform(image)
                finally:
                    if saved is not None:
                        generator.set_state(saved)
        label = self.samples.labels[index]
        if np.ndim(label):  # multi-label: the image's multi-hot row, as floats for the loss
            return image, torch.as_tensor(np.asarray(label), dtype=torch.float32), index
        return image, int(label), index


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Skipped]]:
    """Stack the good items; return the skipped ones separately so the caller can report them."""
    skipped = [item for item in batch if isinstance(item, Skipped)]
    good = [item for item in batch if not isinstance(item, Skipped)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([item[0] for item in good])
    if isinstance(good[0][1], torch.Tensor):  # multi-hot rows of multi-label data
        labels = torch.stack([item[1] for item in good])
    else:
        labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return images, labels, indices, skipped


def _mix_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """Per-sample augmentation seeds in [0, 2**63): SplitMix64's finaliser over (seed, epoch, position),
    for a whole epoch at once (a hash per sample in Python cost ~0.1 s per 50,000 samples)."""
    mask = (1 << 64) - 1
    x = (positions.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    x ^= np.uint64((seed * 0xBF58476D1CE4E5B9) & mask) ^ np.uint64((epoch * 0x94D049BB133111EB) & mask)
    with np.errstate(over="ignore"):  # multiplication modulo 2**64 is the point
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(1)).astype(np.int64)


class ResumableSampler(DistributedSampler):
    """A `DistributedSampler` that can start mid-epoch, sample by class weights, and yields
    `(index, sample_seed)` so augmentation is seeded per sample.

    With `weights`, each epoch draws `len(dataset)` indices with replacement in proportion to
    the weights (balanced sampling), from a generator seeded by (seed, epoch), then shards
    them across ranks like the uniform case. `start_batch` skips the batches this rank has
    already trained on in the current epoch (resume); it applies to one epoch only.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, weights: np.ndarray | None = None, augment_seed: bool = True,
                 alternate_flip: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.skip = 0
        self.augment_seed = augment_seed
        self.alternate_flip = alternate_flip

    def set_position(self, epoch: int, samples_done: int) -> None:
        self.set_epoch(epoch)
        self.skip = samples_done

    def _global_order(self) -> np.ndarray:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=generator).numpy()
        elif self.shuffle:
            order = torch.randperm(n, generator=generator).numpy()
        else:
            order = np.arange(n)
        # drop_last cuts to a multiple of the ranks; otherwise repeat from the start to fill the last round
        return order[: self.total_size] if self.drop_last else np.resize(order, self.total_size)

    def epoch_table(self) -> np.ndarray:
        """This rank's rest of the epoch as an (N, 2) int64 array of (index, sample seed) rows, the
        seed column -1 without `augment_seed`; consumes the resume skip, as iterating does."""
        order = self._global_order().astype(np.int64)
        positions = np.arange(self.rank, self.total_size, self.num_replicas, dtype=np.int64)[self.skip:]
        self.skip = 0
        indices = order[positions]
        if not self.augment_seed:
            return np.stack([indices, np.full(len(positions), -1)], axis=1)
        seeds = _mix_seeds(self.seed, self.epoch, positions)
        if self.alternate_flip:
            # airbench's alternating flip: the flip bit (the seed's lowest, see crop_flip_shifts) is a
            # per-image coin, the same every epoch, inverted on odd epochs: each image is seen mirrored
            # every other epoch, instead of at random
            coins = _mix_seeds(self.seed, -1, indices) & 1
            seeds = (seeds & ~1) | (coins ^ (self.epoch & 1))
        return np.stack([indices, seeds], axis=1)

    def __iter__(self) -> Iterator:
        for index, seed in self.epoch_table().tolist():
            yield (index, seed) if self.augment_seed else index

    def __len__(self) -> int:
        return self.num_samples


def _reflect(positions: torch.Tensor, length: int) -> torch.Tensor:
    """Indices into a length-`length` axis for positions up to `length - 1` beyond either end,
    mirrored without repeating the edge (numpy's and PyTorch's 'reflect' padding)."""
    positions = positions.abs()
    return torch.where(positions > length - 1, 2 * (length - 1) - positions, positions)


def crop_flip_shifts(seed, padding: int):
    """(horizontal shift, vertical shift, flip) of the crop-flip augmentation for a seed: the flip is
    its lowest bit, the shifts the next two digits in base 2 * padding + 1. `seed` is an int, or an
    int64 tensor of seeds (then each of the three is a tensor of the same shape)."""
    span = 2 * padding + 1
    return (seed // 2) % span, (seed // (2 * span)) % span, seed % 2


def crop_flip_batch(images: torch.Tensor, seeds: list[int] | torch.Tensor, padding: int) -> torch.Tensor:
    """Reflect-pad by `padding`, crop back at a shift and maybe mirror, each image of an (N, C, H, W)
    batch by its own seed, on the batch's device: two gathers, no Python call per image.

    Shifts and flips come from `crop_flip_shifts`, as in `SeededCropFlip` (per sample, in numpy),
    so the per-sample path and `ResidentBatches` augment a sample identically.
    """
    if padding == 0:
        return images
    seeds = torch.as_tensor(seeds, dtype=torch.long, device=images.device)[:, None]  # (N, 1)
    return crop_shifted(images, *crop_flip_shifts(seeds, padding), padding)


def crop_shifted(images: torch.Tensor, dx, dy, flip, padding: int) -> torch.Tensor:
    """Reflect-pad an (N, C, H, W) batch by `padding` and crop it back with its top-left corner at
    (dx, dy) of the padded image, mirrored where `flip`: ints for the whole batch, or (N, 1)
    tensors for one value per image."""
    n, channels, height, width = images.shape
    dx, dy, flip = (torch.as_tensor(v, device=images.device).reshape(-1, 1).expand(n, 1) for v in (dx, dy, flip))
    flip = flip.bool()
    rows = _reflect(torch.arange(height, device=images.device) + dy - padding, height)  # (N, H)
    columns = torch.arange(width, device=images.device).expand(n, width)
    columns = torch.where(flip, width - 1 - columns, columns)  # mirrored: output column j reads cropped W-1-j
    columns = _reflect(columns + dx - padding, width)  # (N, W)
    images = images.gather(2, rows[:, None, :, None].expand(n, channels, height, width))
    return images.gather(3, columns[:, None, None, :].expand(n, channels, height, width))


class ResidentBatches:
    """Batches of an array dataset kept whole on the training device, augmented there a batch at a time.

    A drop-in for `DataLoader(ImageDataset(samples, SeededCropFlip(padding)), sampler=sampler,
    collate_fn=collate_skipping)` when the decoded uint8 images fit in memory: same order (the
    sampler's, so resuming mid-epoch and sharding across ranks work unchanged), same shifts and
    flips (from the sampler's seeds), same `(images, labels, indices, skipped)` items, with the
    images already on `device`. It spends no Python call per image, and on a GPU no time copying
    images from the host: what per-sample loading costs a fast GPU run.
    """

    def __init__(self, samples: ArraySamples, batch_size: int, *, sampler: ResumableSampler | None = None,
                 padding: int = 0, device: torch.device | str = "cpu"):
        images = torch.from_numpy(np.array(samples.images))  # a writable copy (the cache is a read-only memmap)
        self.images = images.to(device).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        labels = np.asarray(samples.labels)
        self.labels = torch.as_tensor(labels, dtype=torch.long if labels.ndim == 1 else torch.float32).to(device)
        self.batch_size = batch_size
        self.sampler = sampler
        self.padding = padding

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else len(self.labels)
        return -(-count // self.batch_size)

    def __iter__(self) -> Iterator:
        if self.sampler is None:  # evaluation: in order, unaugmented
            table = np.stack([np.arange(len(self.labels)), np.full(len(self.labels), -1)], axis=1)
        else:
            table = self.sampler.epoch_table()
        augment = bool(self.padding) and self.sampler is not None and self.sampler.augment_seed
        for start in range(0, len(table), self.batch_size):
            chunk = torch.from_numpy(table[start:start + self.batch_size])
            on_device = self._to_device(chunk)  # indices and seeds travel together
            images = self.images[on_device[:, 0]]
            if augment:
                images = crop_flip_batch(images, on_device[:, 1], self.padding)
            yield images.contiguous(), self.labels[on_device[:, 0]], chunk[:, 0].clone(), []

    def _to_device(self, table: torch.Tensor) -> torch.Tensor:
        """Pinned first on a GPU, so the copy is queued behind the GPU's work instead of waiting for it."""
        if self.images.device.type == "cuda":
            return table.pin_memory().to(self.images.device, non_blocking=True)
        return table.to(self.images.device)


# --- scanning --------------------------------------------------------------------------------


def _check(path: str) -> Skipped | None:
    try:
        decode_image(path)
    except ImageDecodeError as error:
        return Skipped(error.path, error.reason)
    return None


def scan_files(samples: Samples, *, workers: int = 0, progress: Callable[[int], None] | None = None) -> list[Skipped]:
    """Decode every file once; return those that fail, with their reasons."""
    if not isinstance(samples, FileSamples):
        return []
    paths = samples.paths
    if workers <= 1:
        bad = []
        for path in paths:
            result = _check(path)
            if result is not None:
                bad.append(result)
            if progress:
                progress(1)
        return bad
    from concurrent.futures import ProcessPoolExecutor

    bad = []
    with ProcessPoolExecutor(workers) as pool:
        for result in pool.map(_check, paths, chunksize=64):
            if result is not None:
                bad.append(result)
            if progress:
                progress(1)
    return bad


# --- the pixel cache ---------------------------------------------------------------------------


@dataclass
class ViewSamples(ArraySamples):
    """Decoded images stored as a view already (`cache_pixels` with `view`: the evaluation view), so
    validating them is a normalisation only: applying the view again would resize twice."""

    def subset(self, indices: np.ndarray) -> ViewSamples:
        names = [self.names[i] for i in indices] if self.names is not None else None
        return ViewSamples(self.images[indices], self.labels[indices], names)


def resize_short_center_crop(image, size: int) -> np.ndarray:
    """PIL image -> (size, size, 3) uint8: shorter side resized to `size`, then centre-cropped. For
    training inputs only (Pillow's `reducing_gap` shortcut: fast on large photos, a little softer);
    validation and evaluation take the evaluation view (`transforms.eval_view`)."""
    from PIL import Image

    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.BICUBIC, reducing_gap=3.0)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.array(image, dtype=np.uint8)  # writable (np.asarray of a PIL image is read-only)


class _CacheDecode(Dataset):
    def __init__(self, paths: list[str], size: int, view: Callable | None = None):
        self.paths, self.size, self.view = paths, size, view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = decode_image(self.paths[index])
        except ImageDecodeError as error:
            return index, None, Skipped(error.path, error.reason)
        if self.view is None:
            return index, resize_short_center_crop(image, self.size), None
        array = self.view(image)  # (3, size, size) uint8, as the evaluation transform computes it
        return index, np.ascontiguousarray(array.numpy().transpose(1, 2, 0)), None


def cache_pixels(samples: Samples, size: int, *, workers: int = 0, view: Callable | None = None,
                 in_memory: bool = False,
                 progress: Callable[[int], None] | None = None) -> tuple[ArraySamples, list[Skipped]]:
    """Decode `samples` once into a memory-mapped (N, size, size, 3) uint8 file in the cache folder.

    Later runs over the same files (same paths, sizes and mtimes) and size reopen the file
    without decoding. Images are resized on the shorter side and centre-cropped square; with
    `view`, a transform of the decoded image to a (3, size, size) uint8 tensor (the evaluation view,
    `transforms.eval_view`), each image is stored as that view instead, computed once, and the
    result is `ViewSamples` (arrays given are returned as they are: they were not viewed).
    With `in_memory`, the pixels are decoded into an ordinary array instead (no file, nothing
    reused across runs): for sets that fit in memory (`visionzoo.data.cache` decides).
    Bad files are left out and returned.
    """
    if isinstance(samples, ArraySamples):
        return samples, []
    cached = ArraySamples if view is None else ViewSamples
    side = size
    if in_memory:
        images = np.empty((len(samples), side, side, 3), dtype=np.uint8)
        ok, bad = _decode_into(images, samples, size, view, workers, progress)
        keep = np.flatnonzero(ok)
        images = images if len(keep) == len(samples) else images[keep]
        return cached(images, samples.labels[keep], [samples.paths[i] for i in keep]), bad
    fingerprint = hashlib.sha1((str(size) if view is None else f"{size}:{view!r}").encode())
    for path in samples.paths:
        try:
            stat = os.stat(path)
            fingerprint.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        except OSError:
            fingerprint.update(f"{path}:missing\n".encode())
    fingerprint.update(samples.labels.tobytes())
    folder = cache_root() / "pixels"
    stem = folder / f"{fingerprint.hexdigest()[:20]}-{side}px"
    pixels, meta_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if pixels.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        keep = np.array(meta["kept"], dtype=np.int64)
        images = np.load(pixels, mmap_mode="r")
        bad = [Skipped(p, r) for p, r in meta["bad"]]
        if progress:
            progress(len(samples))
        return cached(images, samples.labels[keep], [samples.paths[i] for i in keep]), bad

    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(folder)  # the half-written files of a killed run
    scratch = stem.with_name(f"{stem.name}.tmp{os.getpid()}.npy")
    images = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8, shape=(len(samples), side, side, 3))
    ok, bad = _decode_into(images, samples, size, view, workers, progress)
    keep = np.flatnonzero(ok)
    if len(keep) < len(samples):  # compact: the cache holds good images only
        compact = np.lib.format.open_memmap(scratch.with_name(scratch.name + ".c.npy"), mode="w+", dtype=np.uint8,
                                            shape=(len(keep), side, side, 3))
        compact[:] = images[keep]
        del images
        os.replace(compact.filename, scratch)
        del compact
    else:
        images.flush()
        del images
    os.replace(scratch, pixels)
    tmp_meta = meta_path.with_suffix(f".tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps({"kept": keep.tolist(), "bad": [[b.path, b.reason] for b in bad]}))
    os.replace(tmp_meta, meta_path)
    return cached(np.load(pixels, mmap_mode="r"), samples.labels[keep], [samples.paths[i] for i in keep]), bad


def _decode_into(images: np.ndarray, samples: FileSamples, size: int, view: Callable | None, workers: int,
                 progress: Callable[[int], None] | None) -> tuple[np.ndarray, list[Skipped]]:
    """Decode every file into its row of `images`; (which rows are good, the bad files)."""
    ok = np.zeros(len(samples), dtype=bool)
    bad: list[Skipped] = []
    loader = torch.utils.data.DataLoader(_CacheDecode(samples.paths, size, view), batch_size=16, num_workers=workers,
                                         collate_fn=list)
    for batch in loader:
        for index, array, skipped in batch:
            if skipped is not None:
                bad.append(skipped)
            else:
                images[index] = array
                ok[index] = True
        if progress:
            progress(len(batch))
    return ok, bad
