"""Dataset sources, skipping bad files with loader workers, scanning, the pixel cache, the sampler."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.data.datasets import ImageDataset, ResumableSampler, cache_pixels, collate_skipping, scan_files
from visionzoo.data.samples import ArraySamples
from visionzoo.data.shapes import SHAPE_CLASSES, make_shapes
from visionzoo.data.sources import resolve_data, stratified_split
from visionzoo.data.transforms import PRESETS, batch_mixer, eval_transform, train_transform
from visionzoo.factory import data_config as model_data_config

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 210)}


def _tree(root, per_class: int = 4, size: int = 12):
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size + i, size), colour).save(root / name / f"{i}.png")
    return root


def _add_bad_files(folder):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    good = folder / "0.png"
    data = good.read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "readme.txt").write_text("ignored: not an image extension")


def test_tree_with_train_and_val_folders(tmp_path):
    _tree(tmp_path / "d" / "train")
    _tree(tmp_path / "d" / "val", per_class=2)
    splits = resolve_data(tmp_path / "d")
    assert splits.classes == ["blue", "green", "red"]
    assert len(splits.train) == 12 and len(splits.val) == 6
    assert splits.train.paths[0].endswith("train/blue/0.png")


def test_single_tree_is_split_stratified_and_seeded(tmp_path):
    _tree(tmp_path / "d", per_class=10)
    first = resolve_data(tmp_path / "d", val_fraction=0.2, seed=1)
    again = resolve_data(tmp_path / "d", val_fraction=0.2, seed=1)
    other = resolve_data(tmp_path / "d", val_fraction=0.2, seed=2)
    assert np.bincount(first.val.labels).tolist() == [2, 2, 2]
    assert first.val.paths == again.val.paths and first.val.paths != other.val.paths
    assert not set(first.val.paths) & set(first.train.paths)
    evaluation = resolve_data(tmp_path / "d", split="eval")
    assert len(evaluation.val) == 30


def test_stratified_split_keeps_one_of_each_class_in_validation():
    train, val = stratified_split(np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2]), 0.1, seed=0)
    assert sorted(np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2])[val].tolist()) == [0, 1]
    assert len(train) + len(val) == 11


def test_csv_source_with_relative_paths_and_split_column(tmp_path):
    _tree(tmp_path / "images")
    rows = ["path,label"] + [f"images/{c}/{i}.png,{c},{'val' if i == 0 else 'train'}" for c in COLOURS for i in range(4)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = resolve_data(tmp_path / "labels.csv")
    assert splits.classes == ["blue", "green", "red"] and len(splits.train) == 9 and len(splits.val) == 3
    assert ImageDataset(splits.val).load(0).size[1] == 12


def test_tar_gz_archive_is_unpacked_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    _tree(tmp_path / "src" / "pets" / "train")
    _tree(tmp_path / "src" / "pets" / "test", per_class=1)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pets", arcname="pets")
    splits = resolve_data(archive)
    assert len(splits.train) == 12 and len(splits.val) == 3
    assert str(tmp_path / "cache") in splits.train.paths[0]
    assert resolve_data(archive).train.paths == splits.train.paths


def test_builtin_shapes_is_deterministic_and_balanced():
    a = make_shapes(40, size=24, seed=5)
    b = make_shapes(40, size=24, seed=5)
    c = make_shapes(40, size=24, seed=6)
    assert a.images.shape == (40, 24, 24, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert np.bincount(a.labels).tolist() == [4] * len(SHAPE_CLASSES)
    splits = resolve_data("builtin:shapes?size=16&train=20&val=10&seed=1")
    assert splits.native_size == 16 and len(splits.train) == 20 and len(splits.val) == 10
    with pytest.raises(ValueError, match="builtin:shapes"):
        resolve_data("builtin:cats")


def test_missing_data_names_the_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_data(tmp_path / "nowhere")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_and_reported_with_loader_workers(tmp_path, workers):
    _tree(tmp_path / "d" / "train")
    _tree(tmp_path / "d" / "val", per_class=1)
    _add_bad_files(tmp_path / "d" / "train" / "red")
    splits = resolve_data(tmp_path / "d")
    assert len(splits.train) == 15  # readme.txt is not listed
    dataset = ImageDataset(splits.train, eval_transform(model_data_config("resnet18"), 16))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_skipping)
    seen, skipped = 0, []
    for images, labels, indices, bad in loader:
        assert len(images) == len(labels) == len(indices)
        if len(labels):  # a batch of bad files only comes back empty
            assert images.shape[1:] == (3, 16, 16)
        seen += len(labels)
        skipped += bad
    assert seen == 12
    reasons = {item.path.rsplit("/", 1)[-1]: item.reason for item in skipped}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "cut.png"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["notes.jpg"]
    assert {item.path for item in scan_files(splits.train)} == {item.path for item in skipped}


def test_pixel_cache_is_memory_mapped_reused_and_leaves_out_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    _tree(tmp_path / "d", per_class=3)
    _add_bad_files(tmp_path / "d" / "blue")
    samples = resolve_data(tmp_path / "d", split="eval").val
    cached, bad = cache_pixels(samples, 8)
    assert isinstance(cached.images, np.memmap) and cached.images.shape == (9, 8, 8, 3)
    assert len(bad) == 3
    red = cached.labels.tolist().index(2)
    assert tuple(cached.images[red, 4, 4]) == COLOURS["red"]
    again, bad_again = cache_pixels(samples, 8)
    assert np.array_equal(np.asarray(again.images), np.asarray(cached.images)) and len(bad_again) == 3
    assert len(list((tmp_path / "cache" / "pixels").glob("*.npy"))) == 1


def test_sampler_shards_resumes_and_seeds_per_position():
    data = ArraySamples(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10) % 2)
    dataset = ImageDataset(data)
    full = list(ResumableSampler(dataset, seed=3))
    assert sorted(i for i, _ in full) == list(range(10))
    ranks = [list(ResumableSampler(dataset, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    interleaved = [pair for step in zip(*ranks) for pair in step]
    assert interleaved == full  # two processes see the same samples with the same augmentation seeds
    resumed = ResumableSampler(dataset, seed=3)
    resumed.set_position(0, 4)
    assert list(resumed) == full[4:]
    assert list(resumed) == full  # the skip applies once
    resumed.set_epoch(1)
    assert list(resumed) != full
    balanced = ResumableSampler(dataset, seed=0, weights=np.where(data.labels == 1, 1.0, 0.0))
    assert all(data.labels[i] == 1 for i, _ in balanced)


@pytest.mark.parametrize("size, ranks, drop_last", [(37, 1, False), (37, 2, False), (37, 2, True), (3, 5, False)])
def test_sampler_order_is_torchs_distributed_sampler_order(size, ranks, drop_last):
    """Same shuffle, padding (repeating from the start, also with fewer samples than ranks) and sharding."""
    dataset = ImageDataset(ArraySamples(np.zeros((size, 4, 4, 3), np.uint8), np.arange(size) % 3))
    for rank in range(ranks):
        ours = ResumableSampler(dataset, num_replicas=ranks, rank=rank, seed=3, drop_last=drop_last, augment_seed=False)
        reference = torch.utils.data.DistributedSampler(dataset, num_replicas=ranks, rank=rank, seed=3,
                                                        drop_last=drop_last)
        ours.set_epoch(2)
        reference.set_epoch(2)
        assert list(ours) == list(reference)
    seeds = ResumableSampler(dataset, seed=0).epoch_table()[:, 1]
    assert len(set(seeds.tolist())) == size and (seeds >= 0).all()  # distinct, non-negative per-sample seeds


def test_alternate_flip_mirrors_each_image_every_other_epoch():
    """airbench's scheme: a per-image coin decides epoch 0, then the flip alternates; shifts stay random,
    and the flip of an image does not depend on which rank or position draws it."""
    from visionzoo.data.datasets import crop_flip_shifts

    size = 64
    dataset = ImageDataset(ArraySamples(np.zeros((size, 4, 4, 3), np.uint8), np.arange(size) % 3))

    def flips(sampler, epoch):
        sampler.set_epoch(epoch)
        table = sampler.epoch_table()
        return dict(zip(table[:, 0].tolist(), crop_flip_shifts(table[:, 1], 2)[2].tolist())), table

    sampler = ResumableSampler(dataset, seed=5, alternate_flip=True)
    by_epoch = [flips(sampler, epoch)[0] for epoch in range(4)]
    assert 10 < sum(by_epoch[0].values()) < size - 10  # a coin per image at the start
    for index in range(size):
        assert [by_epoch[e][index] for e in range(4)] == [by_epoch[0][index], 1 - by_epoch[0][index]] * 2
    table = flips(sampler, 1)[1]
    assert len(set(zip(*(v.tolist() for v in crop_flip_shifts(table[:, 1], 2)[:2])))) > 15  # shifts still vary
    for rank in range(2):  # sharded: each rank sees the flips the single process would
        shard, _ = flips(ResumableSampler(dataset, num_replicas=2, rank=rank, seed=5, alternate_flip=True), 3)
        assert all(by_epoch[3][index] == flip for index, flip in shard.items())
    random_flips = [flips(ResumableSampler(dataset, seed=5), epoch)[0] for epoch in range(2)]
    assert any(random_flips[0][i] == random_flips[1][i] for i in range(size))  # without it: no alternation


@pytest.mark.parametrize("preset", PRESETS)
def test_train_presets_make_normalised_tensors(preset):
    config = model_data_config("resnet18")
    image = Image.new("RGB", (40, 30), (120, 60, 200))
    torch.manual_seed(0)
    out = train_transform(config, preset, image_size=24)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    array_image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert train_transform(config, preset, image_size=24)(array_image).shape == (3, 24, 24)


def test_unknown_preset_and_batch_mixing():
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        train_transform(model_data_config("resnet18"), "extreme")
    assert batch_mixer(5) is None
    mixer = batch_mixer(5, mixup_alpha=0.8, cutmix_alpha=1.0)
    images, labels = mixer(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert labels.shape == (4, 5) and torch.allclose(labels.sum(1), torch.ones(4))


def test_seeded_crop_flip_is_a_function_of_the_seed():
    from visionzoo.data.transforms import NormalizeInput, SeededCropFlip

    image = torch.arange(3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 8, 8)
    crop = SeededCropFlip(2)
    outputs = {tuple(crop(image, seed).flatten().tolist()) for seed in range(60)}
    assert len(outputs) > 20  # offsets and flips vary with the seed
    assert torch.equal(crop(image, 7), crop(image, 7)) and crop(image, 7).dtype == torch.uint8
    assert torch.equal(crop(image, None), image)
    centred = crop(image, 2 * 2 + 10 * 2)  # dx = dy = 2 (no shift), no flip
    assert torch.equal(centred, image)
    for seed in range(50):  # against numpy's reflect padding, sliced by hand
        flip, dx, dy = seed % 2, (seed // 2) % 5, (seed // 10) % 5
        expected = np.pad(image.numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")[:, dy:dy + 8, dx:dx + 8]
        expected = expected[:, :, ::-1] if flip else expected
        assert torch.equal(crop(image, seed), torch.from_numpy(expected.copy())), seed
    normalized = NormalizeInput((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(normalized, torch.full((1, 3, 2, 2), 2.0))


def test_seeded_crop_flip_fits_decoded_files_like_the_pixel_cache(tmp_path):
    from visionzoo.data.datasets import resize_short_center_crop
    from visionzoo.data.transforms import SeededCropFlip

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    fitted = SeededCropFlip(0, 16)(photo, None)
    assert fitted.shape == (3, 16, 16) and fitted.dtype == torch.uint8
    assert torch.equal(fitted, torch.from_numpy(resize_short_center_crop(photo, 16)).permute(2, 0, 1))
    assert SeededCropFlip(2, 16)(photo, 9).shape == (3, 16, 16)
    with pytest.raises(TypeError, match="size"):
        SeededCropFlip(2)(photo, 9)


def test_crop_padding_sets_the_largest_shift():
    from visionzoo.data.transforms import crop_padding
    from visionzoo.training.settings import TrainSettings, resolve_settings

    assert crop_padding(32) == 4 and crop_padding(32, 2) == 2 and crop_padding(4) == 1
    steps = train_transform(model_data_config("resnet18"), "crop", 32, padding=2).transforms
    assert [step.padding for step in steps if type(step).__name__ == "RandomCrop"] == [[2, 2, 2, 2]]
    with pytest.raises(ValueError, match="crop_padding"):
        resolve_settings(TrainSettings(crop_padding=-1), "resnet18")
    with pytest.raises(ValueError, match="tta_shift must be 0"):
        resolve_settings(TrainSettings(tta_shift=-1), "resnet18")


def test_crop_flip_shifts_agree_on_ints_and_tensors():
    """ResidentBatches computes shifts from a tensor of seeds on the device; the per-sample path from ints."""
    from visionzoo.data.datasets import crop_flip_shifts

    seeds = [0, 1, 7, 24, 25, 2**40 + 3, 2**63 - 1, 123456789]
    for padding in (1, 2, 4):
        dx, dy, flip = crop_flip_shifts(torch.tensor(seeds, dtype=torch.long), padding)
        assert [tuple(int(v) for v in triple) for triple in zip(dx, dy, flip)] == \
            [crop_flip_shifts(seed, padding) for seed in seeds]


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_resident_batches_equal_the_per_sample_loader(padding):
    """Same order (including a mid-epoch resume), same shifts and flips, same items."""
    from visionzoo.data.datasets import ResidentBatches
    from visionzoo.data.transforms import SeededCropFlip

    rng = np.random.default_rng(0)
    samples = ArraySamples(rng.integers(0, 255, (37, 8, 8, 3), dtype=np.uint8), np.arange(37) % 3)
    for rank in (0, 1):
        sampler = ResumableSampler(ImageDataset(samples), num_replicas=2, rank=rank, seed=5)
        sampler.set_position(2, 8)
        expected = list(torch.utils.data.DataLoader(ImageDataset(samples, SeededCropFlip(padding)), batch_size=8,
                                                    sampler=sampler, collate_fn=collate_skipping))
        sampler.set_position(2, 8)
        resident = ResidentBatches(samples, 8, sampler=sampler, padding=padding)
        actual = list(resident)
        assert len(resident) == 3 and len(actual) == len(expected) == 2  # 19 per rank, 8 already done
        for (images, labels, indices, bad), (images2, labels2, indices2, bad2) in zip(expected, actual):
            assert torch.equal(images, images2) and torch.equal(labels, labels2) and torch.equal(indices, indices2)
            assert bad == bad2 == []
    in_order = list(ResidentBatches(samples, 16))
    assert torch.equal(torch.cat([b[2] for b in in_order]), torch.arange(37))
    assert torch.equal(in_order[0][0][0], torch.from_numpy(samples.images[0]).permute(2, 0, 1))
