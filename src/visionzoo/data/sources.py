"""Where training images come from: a folder tree, a CSV, a tar archive or `builtin:shapes`.

`resolve_data(spec)` turns what the user typed after `--data` into `DataSplits`: the class
names and a train and a validation `Samples` each. `Samples` is either a list of files
(`FileSamples`, decoded lazily) or a uint8 array in memory or memory-mapped
(`ArraySamples`: generated data and the pixel cache).

Accepted specs:
    DIR                 class-per-folder tree; DIR/train + DIR/val (or test, validation)
                        when present, else one tree split by a seeded stratified split
                        (the folder rules: `visionzoo.data.layout`)
    FILE.csv            rows of `path,label` (header optional; paths relative to the CSV),
                        with an optional third column `split` (train / val / test; empty: train);
                        an unknown split, an empty label or a class with no training rows is
                        an error naming the rows (each would otherwise drop data silently)
    FILE.tar[.gz|.tgz]  an archive holding such a tree, usually in one wrapping folder; unpacked
                        once into the cache folder, within a size cap (`data.archives`)
    builtin:shapes      procedurally generated shapes, 10 classes, no download;
                        options as a query: builtin:shapes?size=32&train=2000&val=500&seed=0,
                        classes=circle,ring,... (only these), task=multilabel (1-3 shapes each)
    shards/, PATTERN    WebDataset tar shards, streamed: a folder packed by `visionzoo data pack`, or
                        train-{000000..000099}.tar (local, or any URL fsspec opens) (`data.shards`)
    hf://datasets/O/N   a Hugging Face dataset; offline, a save_to_disk folder or parquet files (`data.hf`)

Multi-label data (a CSV of `path,labels` with `|`-separated labels, a CSV of 0/1 class columns,
a folder with a labels.csv; see `visionzoo.data.multilabel`) gives `DataSplits.task == "multilabel"`
and (N, C) multi-hot labels.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from visionzoo.data.archives import is_archive, unpack_archive
from visionzoo.data.hf import hf_splits, looks_like_hf
from visionzoo.data.layout import VAL_FOLDER_NAMES, class_folders, scan_tree, split_folders, tree_classes, tree_root
from visionzoo.data.multilabel import iterative_split, looks_multilabel, read_multilabel_csv
from visionzoo.data.samples import DataSplits, FileSamples
from visionzoo.data.shapes import builtin_splits
from visionzoo.data.shards import looks_like_shards, shard_splits
from visionzoo.errors import DataError, SettingError

__all__ = ["resolve_data", "stratified_split", "SPLIT_VALUES"]

SPLIT_VALUES = ("", "train", *VAL_FOLDER_NAMES)  # a CSV's split column; empty means train


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train and a validation part holding `val_fraction` of every class (at least one
    image per class in validation when the class has two or more)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        val.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def resolve_data(spec: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0, split: str = "train",
                 task: str | None = None, max_unpack_gb: float | None = None, image_column: str | None = None,
                 label_column: str | None = None) -> DataSplits:
    """Interpret a `--data` value. `split="eval"` makes a tree without a validation folder count
    wholly as validation data (for `visionzoo eval`) instead of being split. `task` ("multiclass"
    or "multilabel"; None: inferred from the data) reads single-label rows as multi-label too.
    `max_unpack_gb` raises the cap on what an archive may unpack to (`data.archives`).
    `image_column` and `label_column` name the image and label of shards' samples and of a Hugging
    Face dataset's rows (found when not named)."""
    if task not in (None, "multiclass", "multilabel"):
        raise SettingError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    text = str(spec)
    if text.startswith("builtin:"):
        splits = builtin_splits(text)
        if task == "multilabel" and splits.task != "multilabel":
            raise DataError(f"{text} is single-label; add task=multilabel to its query for multi-label shapes")
        return splits
    if looks_like_shards(text):  # WebDataset tar shards (data.shards, streamed by data.streaming)
        return shard_splits(text, val_fraction=val_fraction, image_key=image_column, label_key=label_column,
                            split=split)
    if looks_like_hf(text):  # a Hugging Face dataset (data.hf)
        return _from_table(text, image_column, label_column, val_fraction, seed, split)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data {text!r} does not exist; give a folder, a .csv, a .tar/.tar.gz or builtin:shapes")
    if path.is_dir() and (path / "labels.csv").is_file():
        return _multilabel_csv(path / "labels.csv", path, val_fraction, seed, split, task, f"folder {path}")
    if path.is_dir():
        if task == "multilabel":
            raise DataError(f"{path} is a class-per-folder tree (one label per image); multi-label data needs "
                             f"{path / 'labels.csv'} or a CSV of path,labels")
        return _from_tree(tree_root(path), val_fraction, seed, split)
    if path.name.lower().endswith(".csv"):
        if task == "multilabel" or (task is None and looks_multilabel(path)):
            return _multilabel_csv(path, path.parent, val_fraction, seed, split, task, f"csv {path}")
        if task == "multiclass" and looks_multilabel(path):
            raise DataError(f"{path} holds several labels per image (multi-label data); drop --task multiclass")
        return _from_csv(path, val_fraction, seed, split)
    if is_archive(path):
        root = tree_root(unpack_archive(path, max_unpack_gb=max_unpack_gb), archive=True)
        return _from_tree(root, val_fraction, seed, split, description=f"archive {path}")
    raise DataError(f"data {text!r} is neither a folder, a .csv nor a .tar/.tar.gz archive")


def _from_tree(root: Path, val_fraction: float, seed: int, split: str, description: str | None = None) -> DataSplits:
    """The splits of the tree at `root` (already unwrapped by `tree_root`)."""
    description = description or f"folder {root}"
    present = split_folders(root)
    if present:
        val_name = next((name for name in present if name in VAL_FOLDER_NAMES), None)
        train_root = root / "train"
        classes = tree_classes(root)
        if not classes:
            raise DataError(f"{train_root} holds no class folders; expected {train_root}/<class>/<image>")
        train = scan_tree(train_root, classes) if train_root.is_dir() else FileSamples([], np.zeros(0, np.int64))
        val = scan_tree(root / val_name, classes) if val_name else None
        if val is None and split != "eval":
            train_part, val_part = stratified_split(train.labels, val_fraction, seed)
            train, val = train.subset(train_part), train.subset(val_part)
        elif val is None:
            val = train
        if len(train) == 0 and split != "eval":
            raise DataError(f"no images found under {train_root}")
        return DataSplits(classes, train, val, description)
    classes = class_folders(root)
    if not classes:
        raise DataError(f"{root} holds no class folders; expected {root}/<class>/<image> "
                         f"or {root}/train/<class>/<image> and {root}/val/<class>/<image>")
    samples = scan_tree(root, classes)
    if len(samples) == 0:
        raise DataError(f"no images (extensions .jpg, .png, ...) found in the class folders of {root}")
    if split == "eval":
        return DataSplits(classes, samples, samples, description)
    train_part, val_part = stratified_split(samples.labels, val_fraction, seed)
    return DataSplits(classes, samples.subset(train_part), samples.subset(val_part),
                      f"{description} (split {1 - val_fraction:.0%}/{val_fraction:.0%}, seed {seed})")


def _from_table(text: str, image_column: str | None, label_column: str | None, val_fraction: float, seed: int,
                split: str) -> DataSplits:
    classes, train, val, description = hf_splits(text, image_column=image_column, label_column=label_column)
    if split == "eval":
        return DataSplits(classes, val or train, val or train, description)
    if val is None:
        train_part, val_part = stratified_split(train.labels, val_fraction, seed)
        train, val = train.subset(train_part), train.subset(val_part)
        description += f" (split {1 - val_fraction:.0%}/{val_fraction:.0%}, seed {seed})"
    return DataSplits(classes, train, val, description)


def _which(names: list[str], limit: int = 5) -> str:
    """'row 3, row 7 and 4 more': the first few of `names`, for an error message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_splits(path: Path, splits: list[str], where: list[str], split: str) -> None:
    """Every split value known, and (when training) some training rows: a typo drops rows silently."""
    unknown = [(name, value) for name, value in zip(where, splits) if value not in SPLIT_VALUES]
    if unknown:
        values = sorted({value for _, value in unknown})
        raise DataError(f"{path}: unknown split {', '.join(map(repr, values))} in {_which([n for n, _ in unknown])}; "
                         f"the split column takes train, {', '.join(VAL_FOLDER_NAMES)} or nothing (train)")
    if split != "eval" and not any(value in ("", "train") for value in splits):
        raise DataError(f"{path}: no row is in the train split (its split column says only "
                         f"{', '.join(sorted(set(splits)))}); mark the training rows 'train'")


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(row number, stripped cells) of a `path,label[,split]` CSV, without comments and the header."""
    rows = []
    # utf-8-sig: Excel writes a byte-order mark, which would make the header a row of class 'label'
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#"):
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{number}: expected 'path,label', got {row!r}")
            rows.append((number, [c.strip() for c in row]))
    if not rows:
        raise DataError(f"{path} lists no images; expected rows of 'path,label'")
    unlabelled = [f"row {number}" for number, row in rows if not row[1]]
    if unlabelled:
        raise DataError(f"{path}: no label in {_which(unlabelled)}; give every row a class (or delete the row)")
    return rows


def _from_csv(path: Path, val_fraction: float, seed: int, split: str) -> DataSplits:
    numbered = _read_csv_rows(path)
    rows = [row for _, row in numbered]
    classes = sorted({row[1] for row in rows})
    index = {name: i for i, name in enumerate(classes)}
    base = path.parent

    def samples(selected: list[list[str]]) -> FileSamples:
        return FileSamples([str(base / row[0]) for row in selected],
                           np.array([index[row[1]] for row in selected], dtype=np.int64))

    if any(len(row) >= 3 and row[2] for row in rows):
        splits = [row[2].lower() if len(row) >= 3 else "" for row in rows]
        _check_splits(path, splits, [f"row {number}" for number, _ in numbered], split)
        train = samples([r for r, s in zip(rows, splits) if s in ("", "train")])
        val = samples([r for r, s in zip(rows, splits) if s in VAL_FOLDER_NAMES])
        untrained = sorted(set(classes) - {classes[label] for label in train.labels.tolist()})
        if untrained and split != "eval":
            where = [f"row {number}" for number, row in numbered if row[1] in untrained]
            raise DataError(f"{path}: class {', '.join(map(repr, untrained))} has no training images (only "
                             f"validation rows: {_which(where)}); a model cannot learn it. Add training rows "
                             "or remove the class")
        return DataSplits(classes, train, val, f"csv {path}")
    everything = samples(rows)
    if split == "eval":
        return DataSplits(classes, everything, everything, f"csv {path}")
    train_part, val_part = stratified_split(everything.labels, val_fraction, seed)
    return DataSplits(classes, everything.subset(train_part), everything.subset(val_part), f"csv {path}")


def _multilabel_csv(path: Path, base: Path, val_fraction: float, seed: int, split: str, task: str | None,
                    description: str) -> DataSplits:
    if task == "multiclass":
        raise DataError(f"{path} is multi-label data (several labels per image); drop --task multiclass")
    paths, classes, labels, splits = read_multilabel_csv(path, base, force=task == "multilabel")

    def samples(indices) -> FileSamples:
        return FileSamples([paths[i] for i in indices], labels[indices])

    if splits is not None:
        _check_splits(path, splits, [os.path.relpath(p, base) for p in paths], split)
        train = samples([i for i, s in enumerate(splits) if s in ("", "train")])
        val = samples([i for i, s in enumerate(splits) if s in VAL_FOLDER_NAMES])
        return DataSplits(classes, train, val, description, task="multilabel")
    everything = samples(range(len(paths)))
    if split == "eval":
        return DataSplits(classes, everything, everything, description, task="multilabel")
    train_part, val_part = iterative_split(labels, val_fraction, seed)
    return DataSplits(classes, everything.subset(train_part), everything.subset(val_part),
                      f"{description} (iterative stratified split {1 - val_fraction:.0%}/{val_fraction:.0%}, seed {seed})",
                      task="multilabel")
