"""WebDataset tar shards as data: named, counted and read in order, never unpacked.

A shard is a tar of samples, each a group of members sharing a key (`000123.jpg`, `000123.cls`),
the WebDataset layout. `--data` names shards three ways:

    shards/                               a folder written by `visionzoo data pack` (its index.json
                                          lists the train and val shards, the classes and the counts)
    shards/train-{000000..000099}.tar     a brace pattern (local paths, or any URL fsspec opens:
    s3://bucket/train-{0..9}.tar          s3://, gs://, https://, ...)
    shards/train-000000.tar               one tar listed by the index.json beside it (a tar
                                          without one is an archive of a folder tree, `data.archives`)

The index (`INDEX_NAME`, written by `data.pack`) holds the class names, each shard's sample count
and class counts, and the image and label keys, so nothing is read before training starts. Shards
without one are read once, headers and labels only, to count them (said in the description).
Labels are the `.cls` member (a class index, WebDataset's convention) or the member named by
`label_key` (`--label-column`), an index or a class name; the image is the first member with an
image extension, or the one named by `image_key` (`--image-column`).

Validation: the index's val shards, else the last shards of the pattern (`val_fraction` of them, at
least one). Validation shards are read whole into memory as encoded bytes (`EncodedSamples`), so
evaluation, reports and the worst-images plot index them as they do files. Training shards stream
(`data.streaming`).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from visionzoo.data.decode import IMAGE_EXTENSIONS
from visionzoo.data.samples import DataSplits, EncodedSamples
from visionzoo.errors import DataError, require_extra

__all__ = ["INDEX_NAME", "INDEX_FORMAT", "ShardSamples", "Record", "looks_like_shards", "expand_shards",
           "shard_splits", "read_records", "read_index", "open_shard", "all_shards", "unpack_shards"]

INDEX_NAME = "index.json"
INDEX_FORMAT = "visionzoo-shards/1"
IMAGE_KEYS = tuple(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)


@dataclass
class ShardSamples:
    """The training shards of a set: their URLs, sample counts and class counts (per shard, (S, C)),
    and how a sample's image and label are found. No random access: `data.streaming` reads them."""

    urls: list[str]
    counts: list[int]
    shard_class_counts: np.ndarray  # (S, C) images of each class in each shard
    image_key: str | None  # None: the first member with an image extension
    label_key: str  # "cls" by default
    label_index: dict[str, int] | None  # class name -> index when labels are names; None: labels are indices

    def __len__(self) -> int:
        return int(sum(self.counts))

    @property
    def labels(self) -> np.ndarray:
        """Every sample's class, grouped by class: the multiset of the labels (their counts are what
        class-weighted losses and the imbalance report need), not their order in the shards."""
        totals = self.shard_class_counts.sum(axis=0).astype(np.int64)
        return np.repeat(np.arange(len(totals)), totals)


@dataclass
class Record:
    """One sample read from a shard: its name (`URL#key`), encoded image and class index."""

    name: str
    image: bytes
    label: int
    extension: str = "jpg"  # the image member's


def looks_like_shards(text: str) -> bool:
    """Whether a `--data` value names shards: a brace pattern or URL of .tar files, a folder holding a
    shard index, or a .tar listed by the index beside it."""
    if ".tar" in text and ("{" in text or "://" in text):
        return True
    path = Path(text).expanduser()
    if path.is_dir():
        return (path / INDEX_NAME).is_file() and _is_index(path / INDEX_NAME)
    index = path.parent / INDEX_NAME
    return path.name.endswith(".tar") and index.is_file() and _is_index(index)


def _is_index(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def expand_shards(pattern: str) -> list[str]:
    """The shard URLs of a brace pattern (`train-{000000..000009}.tar`, `{a,b}.tar`), in order."""
    braceexpand = require_extra("braceexpand", "data", "reading WebDataset shards").braceexpand
    urls = [os.path.expanduser(url) if "://" not in url else url for url in braceexpand(pattern)]
    if not urls:
        raise DataError(f"the shard pattern {pattern!r} names no file")
    return urls


def open_shard(url: str):
    """A binary stream of the shard at `url`: a local path, or any URL fsspec opens."""
    if "://" not in url:
        try:
            return open(url, "rb")
        except OSError as error:
            raise DataError(f"cannot read the shard {url}: {error.strerror or error}") from None
    fsspec = require_extra("fsspec", "data", f"reading the shard {url}")
    try:
        return fsspec.open(url, "rb").open()
    except (OSError, ValueError, ImportError) as error:
        raise DataError(f"cannot open the shard {url}: {error}") from None


def read_index(path: str | os.PathLike) -> dict:
    index = json.loads(Path(path).read_text())
    if index.get("format") != INDEX_FORMAT:
        raise DataError(f"{path} is not a shard index (no format {INDEX_FORMAT!r}); write shards with visionzoo data pack")
    return index


def _members(url: str) -> Iterator[dict]:
    """The samples of one shard as dicts of member suffix -> bytes, plus "__key__", in tar order."""
    tariterators = require_extra("webdataset.tariterators", "data", "reading WebDataset shards")
    with open_shard(url) as stream:
        members = tariterators.tar_file_iterator(stream)
        yield from tariterators.group_by_keys({**member, "__url__": url} for member in members)


def _image_of(sample: dict, image_key: str | None, name: str) -> tuple[str, bytes]:
    if image_key is not None:
        if image_key not in sample:
            raise DataError(f"sample {name} has no {image_key!r} member (it has {sorted(k for k in sample if not k.startswith('__'))}); "
                            "name the image member with --image-column")
        return image_key, sample[image_key]
    for key in IMAGE_KEYS:
        if key in sample:
            return key, sample[key]
    raise DataError(f"sample {name} holds no image member ({', '.join(IMAGE_KEYS[:5])}, ...); "
                    "name it with --image-column")


def _label_text(sample: dict, label_key: str, name: str) -> str:
    if label_key not in sample:
        raise DataError(f"sample {name} has no {label_key!r} member (it has "
                        f"{sorted(k for k in sample if not k.startswith('__'))}); name the label member with --label-column")
    return sample[label_key].decode("utf-8").strip()


def read_records(samples: ShardSamples, shard: int) -> Iterator[Record]:
    """The records of shard number `shard` of `samples`, in the order the tar holds them."""
    url = samples.urls[shard]
    for sample in _members(url):
        name = f"{url}#{sample['__key__']}"
        text = _label_text(sample, samples.label_key, name)
        label = samples.label_index[text] if samples.label_index is not None else int(text)
        extension, image = _image_of(sample, samples.image_key, name)
        yield Record(name, image, label, extension)


def _scan(url: str, label_key: str) -> Counter:
    """Label text -> count in one shard, reading the tar's headers and its label members only."""
    found: Counter = Counter()
    key, label = None, None
    with open_shard(url) as stream:
        try:
            archive = tarfile.open(fileobj=stream, mode="r|*")
            for member in archive:
                if not member.isreg():
                    continue
                stem, _, suffix = os.path.basename(member.name).partition(".")
                if stem != key:
                    if key is not None:
                        found[label] += 1
                    key, label = stem, None
                if suffix.lower() == label_key:
                    label = archive.extractfile(member).read().decode("utf-8").strip()
        except tarfile.TarError as error:
            raise DataError(f"{url} is not a readable tar shard: {error}") from None
    if key is not None:
        found[label] += 1
    if None in found:
        raise DataError(f"{url}: {found[None]} samples have no {label_key!r} member; name the label member "
                        "with --label-column")
    return found


def _classes_of(labels: set[str]) -> tuple[list[str], dict[str, int] | None]:
    """Class names and the name -> index map (None when the labels are indices 0..K-1 already)."""
    if all(text.lstrip("-").isdigit() for text in labels):
        count = max(int(text) for text in labels) + 1
        return [str(i) for i in range(count)], None
    names = sorted(labels)
    return names, {name: i for i, name in enumerate(names)}


def _described(urls: list[str], label_key: str, image_key: str | None, counted: list[Counter]) -> ShardSamples:
    classes, label_index = _classes_of(set().union(*counted))
    index_of = (lambda text: int(text)) if label_index is None else label_index.__getitem__
    table = np.zeros((len(urls), len(classes)), dtype=np.int64)
    for row, counts in enumerate(counted):
        for text, count in counts.items():
            table[row, index_of(text)] += count
    return ShardSamples(urls, [int(sum(c.values())) for c in counted], table, image_key, label_key, label_index)


def _load_val(samples: ShardSamples) -> EncodedSamples:
    records = [record for shard in range(len(samples.urls)) for record in read_records(samples, shard)]
    return EncodedSamples([r.image for r in records], np.array([r.label for r in records], dtype=np.int64),
                          [r.name for r in records])


def _from_index(folder: Path, only: list[str] | None, image_key: str | None, label_key: str | None) -> tuple:
    index = read_index(folder / INDEX_NAME)
    classes = index["classes"]

    def part(entries: list[dict]) -> ShardSamples:
        urls = [str(folder / entry["path"]) for entry in entries]
        table = np.array([entry["class_counts"] for entry in entries], dtype=np.int64).reshape(len(urls), len(classes))
        return ShardSamples(urls, [entry["count"] for entry in entries], table, image_key or index.get("image_key"),
                            label_key or index.get("label_key", "cls"), None)

    train_entries, val_entries = index["splits"].get("train", []), index["splits"].get("val", [])
    if only is not None:  # a tar or a pattern inside the folder: those shards are the training data
        wanted = {os.path.abspath(url) for url in only}

        def chosen(entry: dict) -> bool:
            return os.path.abspath(folder / entry["path"]) in wanted

        train_entries, val_entries = [e for e in train_entries + val_entries if chosen(e)], \
            [e for e in val_entries if not chosen(e)]
        if len(train_entries) != len(wanted):
            raise DataError(f"{folder / INDEX_NAME} does not list every shard named ({len(wanted)} named, "
                            f"{len(train_entries)} listed); name the folder {folder} instead, or pack again")
    return classes, part(train_entries), part(val_entries) if val_entries else None


def _named(spec: str, image_key: str | None, label_key: str | None) -> tuple[list[str], ShardSamples,
                                                                            ShardSamples | None, str]:
    """(classes, train shards, val shards or None, description) of `spec`, nothing read but an index."""
    path = Path(spec).expanduser()
    folder = path if path.is_dir() else path.parent
    urls = None if path.is_dir() else (expand_shards(spec) if "{" in spec else [spec])
    if "://" not in spec and (folder / INDEX_NAME).is_file():
        classes, train, val = _from_index(folder, urls, image_key, label_key)
        return classes, train, val, f"shards {spec} ({len(train.urls)} train shards, index {folder / INDEX_NAME})"
    key = (label_key or "cls").lower()
    train = _described(urls, key, image_key, [_scan(url, key) for url in urls])
    classes = [str(i) for i in range(train.shard_class_counts.shape[1])] if train.label_index is None \
        else sorted(train.label_index, key=train.label_index.get)
    return classes, train, None, f"shards {spec} ({len(urls)} shards, counted by reading them: no {INDEX_NAME})"


def _joined(first: ShardSamples, second: ShardSamples | None) -> ShardSamples:
    if second is None:
        return first
    return ShardSamples(first.urls + second.urls, first.counts + second.counts,
                        np.concatenate([first.shard_class_counts, second.shard_class_counts]), first.image_key,
                        first.label_key, first.label_index)


def _part(samples: ShardSamples, part: slice) -> ShardSamples:
    return ShardSamples(samples.urls[part], samples.counts[part], samples.shard_class_counts[part],
                        samples.image_key, samples.label_key, samples.label_index)


def all_shards(spec: str, *, image_key: str | None = None, label_key: str | None = None
               ) -> tuple[list[str], ShardSamples, list[str]]:
    """(classes, every shard of `spec` as one `ShardSamples`, each shard's split name): for reading
    every image once (`embed`)."""
    classes, train, val, _ = _named(spec, image_key, label_key)
    return classes, _joined(train, val), ["train"] * len(train.urls) + ["val"] * (len(val.urls) if val else 0)


def shard_splits(spec: str, *, val_fraction: float = 0.1, image_key: str | None = None,
                 label_key: str | None = None, split: str = "train") -> DataSplits:
    """The `DataSplits` of shards named by `spec` (see the module's docstring): train as
    `ShardSamples`, val as `EncodedSamples`. `split="eval"` makes every shard validation data."""
    classes, train, val, description = _named(spec, image_key, label_key)
    if split == "eval":
        samples = _load_val(_joined(train, val))
        return DataSplits(classes, samples, samples, description)
    if val is None:
        if len(train.urls) < 2:
            raise DataError(f"{spec} is one shard and no validation shards are listed; pack with a smaller "
                            "--shard-size, or give the validation shards in the index (visionzoo data pack)")
        held = max(1, int(round(len(train.urls) * val_fraction)))
        train, val = _part(train, slice(None, -held)), _part(train, slice(-held, None))
        description += f"; the last {held} held out for validation"
    return DataSplits(classes, train, _load_val(val), description)


def unpack_shards(spec: str, *, image_key: str | None = None, label_key: str | None = None) -> Path:
    """The images of `spec` written once as a class tree (SPLIT/CLASS/KEY.EXT) in the cache folder,
    for the tools that read files (`visionzoo audit`); a later call over the same shards reuses it."""
    import hashlib

    from visionzoo.data.archives import cache_root

    classes, samples, split_of = all_shards(spec, image_key=image_key, label_key=label_key)
    digest = hashlib.sha1(json.dumps([samples.urls, samples.counts]).encode()).hexdigest()[:20]
    root = cache_root() / "shards" / digest
    if (root / ".complete").is_file():
        return root
    for shard, split in enumerate(split_of):
        for record in read_records(samples, shard):
            key = record.name.rsplit("#", 1)[-1]
            folder = root / split / classes[record.label]
            folder.mkdir(parents=True, exist_ok=True)
            extension = record.extension if record.extension in IMAGE_KEYS else "jpg"  # decoders read the bytes
            (folder / f"{os.path.basename(key)}.{extension}").write_bytes(record.image)
    (root / ".complete").write_text(spec)
    return root

