"""Training's validation sees exactly the pixels `eval` sees (issue 30), on every input path of
`build_loaders`: the fast path of files and of arrays (kept on the device), the pixel cache of the
crop preset, the photo cache, and the plain transforms. Each path's validation batches, normalised as
the trainer normalises them, are compared bit for bit with `eval_transform` of the same images, the
transform `visionzoo eval` applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.data.cache import cache_photos, plan_cache
from visionzoo.data.config import resolve_data_config
from visionzoo.data.datasets import ImageDataset, ViewSamples, cache_pixels
from visionzoo.data.loaders import build_loaders, cache_splits
from visionzoo.data.samples import ArraySamples, FileSamples
from visionzoo.data.transforms import NormalizeInput, eval_transform, eval_view

SIZE = 16
SHAPES = ((37, 53), (80, 45), (64, 64), (29, 90), (120, 70), (50, 31), (16, 16))


def _files(root, count: int, seed: int) -> FileSamples:
    """Noisy photos of several shapes (a large one among them: Pillow's fast downscale would show)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    paths = []
    for i in range(count):
        width, height = SHAPES[i % len(SHAPES)]
        path = root / f"{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return FileSamples(paths, np.arange(count) % 2)


def _arrays(count: int, seed: int) -> ArraySamples:
    rng = np.random.default_rng(seed)
    return ArraySamples(rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8), np.arange(count) % 2)


def _config(crop_pct: float) -> dict:
    return resolve_data_config({"crop_pct": crop_pct, "interpolation": "bicubic"}, input_size=(3, SIZE, SIZE))


def _validation_images(loaders) -> torch.Tensor:
    """The normalised validation images in dataset order, as `training.validation.validate` feeds them."""
    batches, order = [], []
    for images, _labels, indices, skipped in loaders.val:
        assert not skipped
        batches.append(loaders.normalize(images) if loaders.normalize is not None else images)
        order.append(indices)
    return torch.cat(batches)[torch.cat(order).argsort()]


def _eval_images(samples, config: dict) -> torch.Tensor:
    dataset = ImageDataset(samples, eval_transform(config, SIZE))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _loaders(train, val, config, augment, photo_cache=False):
    return build_loaders(train, val, data_config=config, image_size=SIZE, batch_size=4, val_batch_size=5,
                         augment=augment, num_classes=2, workers=0, device=torch.device("cpu"),
                         photo_cache=photo_cache)


@pytest.mark.parametrize("path", ["fast-files", "fast-arrays", "pixel-cache", "pixel-cache-crop-pct",
                                  "photo-cache", "photo-cache-arrays", "plain"])
def test_every_validation_path_feeds_the_pixels_eval_feeds(tmp_path, monkeypatch, path):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    arrays = path.endswith("arrays")
    train = _arrays(8, 0) if arrays else _files(tmp_path / "train", 8, 0)
    val = _arrays(9, 1) if arrays else _files(tmp_path / "val", 9, 1)
    config = _config(0.875 if path in ("pixel-cache-crop-pct", "photo-cache", "photo-cache-arrays", "plain") else 1.0)
    expected = _eval_images(val, config)
    photo_cache = path.startswith("photo-cache")
    if path.startswith("pixel-cache"):
        train_in, val_in, bad = cache_splits(train, val, int(SIZE / config["crop_pct"]), data_config=config,
                                             image_size=SIZE)
        assert not bad and isinstance(val_in, ViewSamples)
    elif photo_cache:
        plan = plan_cache(train, val, SIZE, config["crop_pct"], "light")
        train_in, val_in, bad = cache_photos(train, val, plan, data_config=config)
        assert not bad and isinstance(val_in, ViewSamples) is (not arrays)  # arrays are not cached again
    else:
        train_in, val_in = train, val
    loaders = _loaders(train_in, val_in, config, "light" if photo_cache or path == "plain" else "crop", photo_cache)
    # each path is the one named: the fast ones normalise on the device, arrays stay there whole
    assert (loaders.normalize is not None) is (path not in ("plain", "pixel-cache-crop-pct"))
    assert loaders.resident is (path in ("fast-arrays", "pixel-cache"))
    images = _validation_images(loaders)
    assert images.dtype == torch.float32 and images.shape == expected.shape
    assert torch.equal(images, expected)


def test_normalising_on_the_device_is_eval_transforms_arithmetic():
    config = _config(1.0)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8))
    normalise = NormalizeInput(config["mean"], config["std"])
    assert torch.equal(normalise(image[None])[0], eval_transform(config, SIZE)(image))


@pytest.mark.parametrize("mode", ["crop", "squash", "letterbox"])
def test_the_whole_image_view_leaves_arrays_at_the_size_as_they_are(mode):
    """What lets the fast path keep validation arrays on the device unresized: at crop_pct 1, the
    evaluation view of an array already at the size is that array."""
    image = torch.from_numpy(_arrays(1, 3).images[0]).permute(2, 0, 1)
    config = {**_config(1.0), "resize_mode": mode}
    assert torch.equal(eval_view(config, SIZE)(image), image)
    assert not torch.equal(eval_view(_config(0.875), SIZE)(image), image)  # the crop zooms in: not so


def test_the_cached_view_is_found_again_by_the_next_run(tmp_path, monkeypatch):
    """The cache fingerprints the stored view by its repr: one that named an object's address would
    decode into a new file on every run."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    samples = _files(tmp_path / "val", 3, 0)
    first, _ = cache_pixels(samples, SIZE, view=eval_view(_config(0.875), SIZE))
    again, _ = cache_pixels(samples, SIZE, view=eval_view(_config(0.875), SIZE))
    other, _ = cache_pixels(samples, SIZE, view=eval_view(_config(1.0), SIZE))
    assert isinstance(again, ViewSamples) and np.array_equal(np.asarray(first.images), np.asarray(again.images))
    assert len(list((tmp_path / "cache" / "pixels").glob("*.npy"))) == 2  # the other crop_pct: a file of its own
    assert not np.array_equal(np.asarray(first.images), np.asarray(other.images))
