"""Leaving files out of a dataset: `visionzoo train --exclude audit/label_issues.csv`.

The list is either a CSV whose header has a `path` column (every CSV that `visionzoo audit`
writes has one) or a plain text file of paths, one a line (`#` starts a comment). Paths are
compared after `os.path.abspath`, so a list written from one working folder applies from
another as long as the paths in it are absolute, as the audit writes them; relative paths
in the list are taken relative to the list's own folder.

The audit's CSVs neutralise cells a spreadsheet would run as a formula (a file named
`=HYPERLINK(...).png`): such a cell is written with a leading `'` (`spreadsheet_cell`), which
a spreadsheet shows as text and `read_path_list` takes off again.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from visionzoo.data.samples import DataSplits, FileSamples
from visionzoo.errors import DataError

__all__ = ["exclude_files", "read_path_list", "spreadsheet_cell", "FORMULA_STARTS"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)


def spreadsheet_cell(value):
    """`value` as a CSV cell a spreadsheet shows as text: a string starting a formula gets a leading `'`."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def _from_cell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


def _normal(path: str, base: Path) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def read_path_list(path: str | os.PathLike) -> set[str]:
    """The absolute paths listed in `path` (a CSV with a `path` column, or one path a line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exclude list {path}; give a CSV with a 'path' column (such as "
                                "audit/label_issues.csv) or a text file of paths, one a line")
    base = path.parent
    text = path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return set()
    header = next(csv.reader([lines[0]]))
    if "path" in [cell.strip().lower() for cell in header]:
        column = [cell.strip().lower() for cell in header].index("path")
        rows = csv.reader(lines[1:])
        return {_normal(_from_cell(row[column].strip()), base) for row in rows
                if len(row) > column and row[column].strip()}
    return {_normal(line.strip(), base) for line in lines}


def exclude_files(splits: DataSplits, exclude: str | os.PathLike) -> tuple[DataSplits, int]:
    """`splits` without the files listed in `exclude` (from train and validation), and how many were left out."""
    listed = read_path_list(exclude)
    removed = 0

    def keep(samples):
        nonlocal removed
        if samples is None or not listed:
            return samples
        if not isinstance(samples, FileSamples):
            raise DataError(f"--exclude {exclude} lists image files, but this data is generated in memory "
                             f"({splits.description}); use it with a folder, CSV or archive")
        kept = np.array([i for i, p in enumerate(samples.paths) if os.path.abspath(p) not in listed], dtype=np.int64)
        removed += len(samples) - len(kept)
        return samples.subset(kept) if len(kept) < len(samples) else samples

    train, val = keep(splits.train), keep(splits.val)
    if listed and not removed:
        raise DataError(f"none of the {len(listed)} paths in {exclude} is in the data ({splits.description}); "
                         "check that the list was made from the same folder")
    if len(train) == 0:
        raise DataError(f"--exclude {exclude} leaves no training images")
    description = f"{splits.description}, {removed} files excluded by {exclude}" if removed else splits.description
    return dataclasses.replace(splits, train=train, val=val, description=description), removed
