"""Multi-label data: images with any number of classes each, as users have them.

Labels are a (N, C) uint8 multi-hot array in `Samples.labels` (1 where image i shows class c);
`DataSplits.task` is "multilabel". Three sources, read by `resolve_data`:

    FILE.csv   `path,labels` rows, labels separated by `|` or `;` (`cat|dog`), an optional third
               column `split` (train / val / test); header optional
    FILE.csv   one 0/1 column per class after the path column (Roboflow's multi-label export:
               `filename, cat, dog`); header required, it names the classes
    DIR        a folder of images with `DIR/labels.csv` in either form, paths relative to DIR

Without a split column the data is split by iterative stratification (Sechidis et al., 2011,
via the `iterative-stratification` package), which keeps every label's share, and the pairs'
shares, close in both parts; a per-label random split would starve rare labels in validation.

`data.shapes.make_shape_sets` generates multi-label images offline (`builtin:shapes?task=multilabel`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from visionzoo.errors import DataError, SettingError, require_extra

__all__ = ["LABEL_SEPARATORS", "read_multilabel_csv", "looks_multilabel", "iterative_split",
           "label_counts", "balanced_sample_weights"]

LABEL_SEPARATORS = re.compile(r"[|;]")
_PATH_HEADERS = {"path", "file", "filename", "file_name", "image", "image_path", "img"}


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel writes a byte-order mark
        return [[cell.strip() for cell in row] for row in csv.reader(handle) if row and not row[0].startswith("#")]


def looks_multilabel(path: Path) -> bool:
    """Whether a CSV is in one of the multi-label forms: a `labels` header, a row with `|`/`;`
    in its label cell, or 0/1 class columns."""
    rows = _rows(path)
    if not rows:
        return False
    header = [c.lower() for c in rows[0]]
    if len(header) >= 2 and header[1] == "labels":
        return True
    if _one_hot_columns(rows) is not None:
        return True
    return any(len(row) >= 2 and LABEL_SEPARATORS.search(row[1]) for row in rows)


def _one_hot_columns(rows: list[list[str]]) -> list[str] | None:
    """The class names when `rows` are a header and 0/1 columns (Roboflow's export), else None."""
    if len(rows) < 2 or len(rows[0]) < 3 or rows[0][0].lower() not in _PATH_HEADERS:
        return None
    body = rows[1:]
    if all(len(row) == len(rows[0]) and all(cell in ("0", "1") for cell in row[1:]) for row in body):
        return rows[0][1:]
    return None


def read_multilabel_csv(path: Path, base: Path | None = None, *, force: bool = False):
    """`(paths, classes, labels (N, C) uint8, splits or None)` from a multi-label CSV; `force`
    reads a `path,label` CSV of one label per row as multi-label too (`--task multilabel`)."""
    path = Path(path)
    base = Path(base) if base is not None else path.parent
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path} lists no images; expected rows of 'path,labels' (labels separated by '|')")
    classes = _one_hot_columns(rows)
    if classes is not None:
        if len(set(classes)) != len(classes):
            raise DataError(f"{path}: the header names a class twice: {rows[0]}")
        body = rows[1:]
        labels = np.array([[int(c) for c in row[1:]] for row in body], dtype=np.uint8)
        return [str(base / row[0]) for row in body], list(classes), labels, None
    header = [c.lower() for c in rows[0]]
    if len(header) >= 2 and header[0] in _PATH_HEADERS and header[1] in ("label", "labels"):
        rows = rows[1:]
    sets, splits = [], []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise DataError(f"{path}: row {number} {row!r} has no labels; expected 'path,labels' with labels "
                             f"separated by '|' or ';' (an image of no class: leave the cell empty after a comma)")
        sets.append([name.strip() for name in LABEL_SEPARATORS.split(row[1]) if name.strip()])
        splits.append(row[2].lower() if len(row) >= 3 else "")
    if not force and not any(len(names) > 1 for names in sets):
        raise DataError(f"{path} has one label per row; it is single-label data (use --task multilabel to treat it "
                         "as multi-label)")
    classes = sorted({name for names in sets for name in names})
    index = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for i, names in enumerate(sets):
        labels[i, [index[name] for name in names]] = 1
    has_splits = any(splits)
    return [str(base / row[0]) for row in rows], classes, labels, (splits if has_splits else None)


def label_counts(labels: np.ndarray) -> np.ndarray:
    """Images per class of a (N, C) multi-hot array."""
    return np.asarray(labels, dtype=np.int64).sum(axis=0)


def balanced_sample_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling weights for class balance per label: an image is drawn with the mean inverse frequency
    of its labels (images of no class at the mean weight), so rare labels are seen about as often as
    common ones."""
    labels = np.asarray(labels, dtype=np.float64)
    inverse = 1.0 / np.maximum(labels.sum(0), 1)
    shown = labels.sum(1)
    weights = (labels * inverse).sum(1) / np.maximum(shown, 1)
    weights[shown == 0] = weights[shown > 0].mean() if (shown > 0).any() else 1.0
    return weights


def iterative_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices of multi-hot `labels`, by iterative stratification."""
    if not 0.0 < val_fraction < 1.0:
        raise SettingError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    stratifiers = require_extra("iterstrat.ml_stratifiers", "multilabel", "splitting multi-label data")
    labels = np.asarray(labels)
    splitter = stratifiers.MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed % 2**32)
    train, val = next(splitter.split(np.zeros((len(labels), 1)), labels))
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)
