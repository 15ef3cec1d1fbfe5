"""Which files the audit reads, in which split: the layout rules of `visionzoo.data.layout`.

A tree's split folders (train, val, validation, valid, test) are the splits, in that order (a
leak's `path` is the image in the later split); a tree without them is one split, `train`. A CSV
is read by `resolve_data` (its split column makes train and val); an archive is unpacked first, and
tar shards (`data.shards`) are written once as such a tree in the cache folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionzoo.data.archives import is_archive, unpack_archive
from visionzoo.data.layout import class_folders, scan_tree, split_folders, tree_root
from visionzoo.data.samples import FileSamples
from visionzoo.data.shards import looks_like_shards, unpack_shards
from visionzoo.data.sources import resolve_data
from visionzoo.errors import DataError

__all__ = ["AuditFiles", "collect_files"]


@dataclass
class AuditFiles:
    """Every file of the data with its class and split."""

    paths: list[str]
    labels: np.ndarray  # (N,) int64 into classes
    splits: np.ndarray  # (N,) int: index into split_names
    classes: list[str]
    split_names: list[str]


def collect_files(data: str | os.PathLike, *, max_unpack_gb: float | None = None) -> AuditFiles:
    """The files of a folder, CSV or archive (`max_unpack_gb`: the archive cap of `data.archives`)."""
    text = str(data)
    if text.startswith("builtin:"):
        raise DataError(f"audit reads image files; {text} is generated in memory (give a folder, CSV or archive)")
    if looks_like_shards(text):  # tar shards: written once as a tree in the cache, as an archive is unpacked
        return collect_files(unpack_shards(text), max_unpack_gb=max_unpack_gb)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data {text!r} does not exist; give a folder, a .csv or a .tar/.tar.gz")
    archive = path.is_file() and is_archive(path)
    if archive:
        path = unpack_archive(path, max_unpack_gb=max_unpack_gb)
    if path.is_file():  # a CSV: resolve_data reads it (its split column makes train and val)
        splits = resolve_data(path, split="eval")
        parts = [("train", splits.train)] if splits.val is splits.train else [("train", splits.train), ("val", splits.val)]
        return _join(parts, splits.classes)
    path = tree_root(path, archive=archive)
    present = split_folders(path)
    if not present:
        classes = class_folders(path)
        if not classes:
            raise DataError(f"{path} holds no class folders; expected {path}/CLASS/IMAGE or {path}/train/CLASS/IMAGE")
        return _join([("train", scan_tree(path, classes))], classes)
    classes = sorted({name for split in present for name in class_folders(path / split)})
    return _join([(split, scan_tree(path / split, classes)) for split in present], classes)


def _join(parts: list[tuple[str, FileSamples]], classes: list[str]) -> AuditFiles:
    parts = [(name, samples) for name, samples in parts if len(samples)]
    if not parts:
        raise DataError("no images found in the data")
    # Absolute paths: `train --exclude audit/label_issues.csv` then finds them from any working folder.
    return AuditFiles([os.path.abspath(p) for _, s in parts for p in s.paths], np.concatenate([s.labels for _, s in parts]),
                      np.concatenate([np.full(len(s), i) for i, (_, s) in enumerate(parts)]), classes,
                      [name for name, _ in parts])
