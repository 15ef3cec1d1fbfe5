"""Hugging Face datasets as data: `hf://datasets/OWNER/NAME`, a `save_to_disk` folder, or parquet files.

    hf://datasets/OWNER/NAME       downloaded once into the Hugging Face cache (`datasets.load_dataset`)
    DIR (save_to_disk)             a Dataset or DatasetDict folder (dataset_dict.json or state.json), offline
    FILE.parquet, DIR of parquet   parquet files (DIR/*.parquet or DIR/data/*.parquet), offline; a file named
                                   train-*, validation-*, test-* goes to that split, anything else to train

Splits: `train`, and the first of validation, val, valid, test for validation; a set without one is
split by `data.sources` (seeded, stratified). The image column is the one named (`--image-column`),
else the first `Image` feature, else a column named image or img; the label column the one named
(`--label-column`), else the first `ClassLabel` feature (its names are the classes), else one named
label, labels, fine_label or class (its sorted values are the classes). A dataset is an Arrow table
on disk with random access, so training reads it as it reads files (`TableSamples`): shuffled,
split across processes and resumed by the ordinary sampler. Images are decoded by
`data.decode.decode_image` from the stored bytes, as files are.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from visionzoo.data.archives import cache_root
from visionzoo.data.decode import decode_image
from visionzoo.errors import DataError, require_extra

__all__ = ["TableSamples", "looks_like_hf", "hf_splits", "HF_PREFIX"]

HF_PREFIX = "hf://datasets/"
VAL_SPLITS = ("validation", "val", "valid", "test")
IMAGE_NAMES = ("image", "img", "picture", "photo")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "category")


class _RowNames:
    """`source#row` for each sample, made on access (a million names need not be held)."""

    def __init__(self, source: str, rows: np.ndarray):
        self.source, self.rows = source, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> str:
        return f"{self.source}#{int(self.rows[index])}"


class TableSamples:
    """Rows of a Hugging Face dataset: `table` (the dataset, reduced to its image column, images not
    decoded), `rows` (which of its rows), `labels` (their class indices)."""

    def __init__(self, table, column: str, rows: np.ndarray, labels: np.ndarray, source: str):
        self.table, self.column, self.rows, self.labels, self.source = table, column, rows, labels, source

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def names(self) -> _RowNames:
        return _RowNames(self.source, self.rows)

    def decode(self, index: int):
        name = self.names[index]
        value = self.table[int(self.rows[index])][self.column]
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if value is None:
            raise DataError(f"{name}: no image in column {self.column!r}")
        return decode_image(value, path=name)

    def subset(self, indices: np.ndarray) -> TableSamples:
        return TableSamples(self.table, self.column, self.rows[indices], self.labels[indices], self.source)


def looks_like_hf(text: str) -> bool:
    if text.startswith(HF_PREFIX):
        return True
    path = Path(text).expanduser()
    if text.endswith(".parquet"):
        return True
    if path.is_dir():
        # parquet files at the top or in data/ (the Hub's layout); never a walk of a big image tree
        return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() or \
            any(glob.iglob(str(path / "*.parquet"))) or any(glob.iglob(str(path / "data" / "*.parquet")))
    return False


def _split_of(path: str) -> str:
    parts = Path(path).parts
    for part in reversed(parts):
        stem = part.split("-")[0].split(".")[0].lower()
        if stem in ("train", *VAL_SPLITS):
            return stem
    return "train"


def _load(text: str) -> tuple[dict, str]:
    """The dataset's splits (name -> Dataset) and a description."""
    datasets = require_extra("datasets", "data", "reading a Hugging Face dataset")
    datasets.disable_progress_bars()  # its bars for preparing a split would interleave with ours
    if text.startswith(HF_PREFIX):
        name = text[len(HF_PREFIX):].strip("/")
        try:
            loaded = datasets.load_dataset(name)
        except Exception as error:  # the hub's errors are many kinds; each means the same to a user
            raise DataError(f"cannot load {text}: {error}; check the name, or that you are online "
                            "(offline: save it with save_to_disk and give that folder)") from None
        return dict(loaded), f"Hugging Face dataset {name}"
    path = Path(text).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        return (dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}), f"dataset {path}"
    files = sorted(glob.glob(str(path / "*.parquet")) + glob.glob(str(path / "data" / "*.parquet"))) if path.is_dir() else \
        sorted(glob.glob(os.path.expanduser(text)))
    if not files:
        raise FileNotFoundError(f"data {text!r}: no parquet file found")
    grouped: dict[str, list[str]] = {}
    for file in files:
        grouped.setdefault(_split_of(os.path.relpath(file, path) if path.is_dir() else file), []).append(file)
    loaded = datasets.load_dataset("parquet", data_files=grouped, cache_dir=str(cache_root() / "hf-datasets"))
    return dict(loaded), f"parquet {text}"


def _columns(dataset, image_column: str | None, label_column: str | None, where: str) -> tuple[str, str]:
    datasets = require_extra("datasets", "data", "reading a Hugging Face dataset")
    features = dataset.features
    for given, kind in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in features:
            raise DataError(f"{where} has no column {given!r} for the {kind}s; its columns: {', '.join(features)}")
    image = image_column or next((n for n, f in features.items() if isinstance(f, datasets.Image)), None) or \
        next((n for n in IMAGE_NAMES if n in features), None)
    label = label_column or next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None) or \
        next((n for n in LABEL_NAMES if n in features), None)
    if image is None or label is None:
        missing = "image" if image is None else "label"
        raise DataError(f"{where}: cannot tell which column holds the {missing}s (columns: {', '.join(features)}); "
                        f"name it with --{missing}-column")
    return image, label


def hf_splits(text: str, *, image_column: str | None = None, label_column: str | None = None
              ) -> tuple[list[str], TableSamples, TableSamples | None, str]:
    """(classes, train, validation or None, description) of a Hugging Face dataset."""
    datasets = require_extra("datasets", "data", "reading a Hugging Face dataset")
    splits, description = _load(text)
    train_name = "train" if "train" in splits else next(iter(splits))
    val_name = next((name for name in VAL_SPLITS if name in splits and name != train_name), None)
    train = splits[train_name]
    image, label = _columns(train, image_column, label_column, description)
    feature = train.features[label]
    if isinstance(feature, datasets.ClassLabel):
        classes, index = list(feature.names), None
    else:
        values = set(np.asarray(train.with_format("numpy")[label]).tolist())
        if val_name is not None:
            values |= set(np.asarray(splits[val_name].with_format("numpy")[label]).tolist())
        classes = [str(v) for v in sorted(values)]
        index = {value: i for i, value in enumerate(sorted(values))}

    def samples(dataset, split: str) -> TableSamples:
        raw = np.asarray(dataset.with_format("numpy")[label])
        if raw.ndim != 1:
            raise DataError(f"{description}: column {label!r} holds several labels per image; one class per image "
                            "is read from a Hugging Face dataset")
        labels = raw.astype(np.int64) if index is None else np.array([index[v] for v in raw.tolist()], np.int64)
        table = dataset.select_columns([image])
        if isinstance(table.features[image], datasets.Image):
            table = table.cast_column(image, datasets.Image(decode=False))
        return TableSamples(table, image, np.arange(len(dataset)), labels, f"{description}[{split}]")

    val = samples(splits[val_name], val_name) if val_name is not None else None
    return classes, samples(train, train_name), val, f"{description} (image {image!r}, label {label!r})"
