"""Tar shards: packing a folder, naming shards (folder, brace pattern, one tar, no index), and the
streaming plan: every image once per epoch across ranks, the same batches whatever the number of
loader workers, and a resume at any batch giving the batches an unbroken epoch gives."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import visionzoo
from visionzoo.data.pack import pack_shards, parse_size
from visionzoo.data.samples import EncodedSamples
from visionzoo.data.shards import ShardSamples
from visionzoo.data.sources import resolve_data
from visionzoo.data.streaming import ShardStream, StreamBatches, StreamPlan
from visionzoo.data.transforms import train_transform
from visionzoo.errors import DataError, SettingError


def image_folder(root: Path, per_class: int = 12, classes: int = 2, size: int = 16) -> Path:
    """A class-per-folder tree of small PNGs, each class its own colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 120).astype(np.uint8)
            pixels[..., label % 3] += 120
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def packed(tmp_path: Path, per_class: int = 12, shard_size: str | int = 6000) -> Path:
    image_folder(tmp_path / "photos", per_class)
    visionzoo.pack_shards(tmp_path / "photos", tmp_path / "shards", shard_size=shard_size, val_fraction=0.25)
    return tmp_path / "shards"


def test_pack_writes_every_image_once_with_its_class_and_an_index(tmp_path):
    shards = packed(tmp_path)
    index = json.loads((shards / "index.json").read_text())
    assert index["classes"] == ["class0", "class1"]
    train, val = index["splits"]["train"], index["splits"]["val"]
    assert len(train) >= 2 and sum(e["count"] for e in train) == 18 and sum(e["count"] for e in val) == 6
    originals = {p.read_bytes(): p.parent.name for p in (tmp_path / "photos").rglob("*.png")}
    seen = []
    for entry in train + val:
        with tarfile.open(shards / entry["path"]) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
        keys = sorted({name.split(".")[0] for name in members})
        assert len(keys) == entry["count"]
        counts = [0, 0]
        for key in keys:
            image, label = members[f"{key}.png"], int(members[f"{key}.cls"])
            assert originals[image] == index["classes"][label]  # the file's bytes, under its class
            counts[label] += 1
            seen.append(image)
        assert counts == entry["class_counts"]
    assert sorted(seen) == sorted(originals)
    with pytest.raises(SettingError, match="already holds packed shards"):
        pack_shards(tmp_path / "photos", shards)
    assert parse_size("1GB") == 10**9 and parse_size("64MiB") == 64 << 20
    with pytest.raises(SettingError, match="like 1GB"):
        parse_size("big")


def test_shards_are_named_by_folder_pattern_tar_or_url_without_an_index(tmp_path):
    shards = packed(tmp_path)
    by_folder = resolve_data(shards)
    assert isinstance(by_folder.train, ShardSamples) and isinstance(by_folder.val, EncodedSamples)
    assert len(by_folder.train) == 18 and len(by_folder.val) == 6 and by_folder.classes == ["class0", "class1"]
    count = len(list(shards.glob("train-*.tar")))
    pattern = resolve_data(str(shards / f"train-{{000000..{count - 1:06d}}}.tar"))
    assert len(pattern.train) == 18 and len(pattern.val) == 6  # val from the index beside them
    one = resolve_data(shards / "train-000000.tar")
    assert len(one.train) == json.loads((shards / "index.json").read_text())["splits"]["train"][0]["count"]
    # no index: counted by reading the shards, class indices as names, the last shard held out
    bare = tmp_path / "bare"
    bare.mkdir()
    for tar in shards.glob("train-*.tar"):
        shutil.copy(tar, bare / tar.name)
    counted = resolve_data(f"file://{bare}/train-{{000000..{count - 1:06d}}}.tar", val_fraction=0.1)  # through fsspec
    assert counted.classes == ["0", "1"] and len(counted.train) + len(counted.val) == 18
    assert "counted by reading them" in counted.description
    assert counted.train.shard_class_counts.sum() == len(counted.train)
    assert counted.val.names[0].startswith("file://") and counted.val.decode(0).size == (16, 16)
    with pytest.raises(DataError, match="--label-column"):
        resolve_data(str(bare / f"train-{{000000..{count - 1:06d}}}.tar"), label_column="txt")


def _epoch(samples: ShardSamples, *, rank: int, world: int, workers: int, epoch: int = 0, start: int = 0,
           batch_size: int = 4) -> list[tuple[list[int], torch.Tensor]]:
    plan = StreamPlan(samples, rank=rank, world=world, batch_size=batch_size, seed=5)
    config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
              "interpolation": "bilinear"}
    loader = StreamBatches(ShardStream(samples, plan, train_transform(config, "light", 16)), workers=workers)
    loader.set_position(epoch, start * batch_size)
    return [(ids.tolist(), images) for images, _, ids, _ in loader]


def test_each_image_once_per_epoch_across_ranks_whatever_the_workers_and_resumes_mid_epoch(tmp_path):
    samples = resolve_data(packed(tmp_path, per_class=20, shard_size=9000)).train  # 30 images, several shards
    assert len(samples.urls) >= 4
    plan = StreamPlan(samples, rank=0, world=2, batch_size=4, seed=5)
    ranks = [_epoch(samples, rank=rank, world=2, workers=0) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == plan.batches  # the ranks step together
    seen = [i for batches in ranks for ids, _ in batches for i in ids]
    assert len(seen) == len(set(seen)) == len(samples) - plan.left_out  # none twice
    assert plan.left_out <= 2 * max(samples.counts)  # at most about a shard per rank
    rank_shards = [{i >> 32 for ids, _ in batches for i in ids} for batches in ranks]
    assert not rank_shards[0] & rank_shards[1]  # each rank reads its own shards
    with_workers = _epoch(samples, rank=0, world=2, workers=2)
    assert [ids for ids, _ in with_workers] == [ids for ids, _ in ranks[0]]
    for (_, a), (_, b) in zip(with_workers, ranks[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same augmentations too
    resumed = _epoch(samples, rank=0, world=2, workers=2, start=2)
    assert [ids for ids, _ in resumed] == [ids for ids, _ in ranks[0]][2:]
    torch.testing.assert_close(resumed[0][1], ranks[0][2][1], rtol=0, atol=0)
    next_epoch = _epoch(samples, rank=0, world=2, workers=0, epoch=1)
    assert [ids for ids, _ in next_epoch] != [ids for ids, _ in ranks[0]]  # reshuffled every epoch


def test_too_few_shards_for_the_processes_and_random_access_settings_are_refused(tmp_path):
    samples = resolve_data(packed(tmp_path)).train
    with pytest.raises(DataError, match="at least 50"):
        StreamPlan(samples, rank=0, world=50, batch_size=4, seed=0)
    with pytest.raises(SettingError, match="random access"):
        visionzoo.train("resnet18", str(tmp_path / "shards"), class_balance="sampler", epochs=1, image_size=16,
                        out=tmp_path / "run", progress=False)


def test_audit_reads_shards_as_the_tree_they_were_packed_from(tmp_path):
    from visionzoo.diagnose.data_audit.collect import collect_files

    files = collect_files(packed(tmp_path))
    assert files.classes == ["class0", "class1"] and files.split_names == ["train", "val"]
    assert len(files.paths) == 24 and np.bincount(files.splits).tolist() == [18, 6]
    originals = {p.read_bytes(): p.parent.name for p in (tmp_path / "photos").rglob("*.png")}
    for path, label in zip(files.paths, files.labels):
        assert originals[Path(path).read_bytes()] == files.classes[label]
    assert collect_files(tmp_path / "shards").paths == files.paths  # written once, then reused
