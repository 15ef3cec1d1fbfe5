"""The user's images as the bake-off uses them: the selection of validation images that probes and
halving rungs are scored on, and CSVs of samples for the fine-tune processes, which take data as text."""

from __future__ import annotations

import os
from pathlib import Path

from visionzoo.errors import DataError

__all__ = ["SELECTION_IMAGES", "selection", "split_csv"]

SELECTION_IMAGES = 1000  # validation images the probes and the halving rungs use at most


def selection(val, limit: int, seed: int = 0):
    """(samples, kept indices or None): at most `limit` validation samples, stratified by class."""
    import numpy as np

    from visionzoo.data.sources import stratified_split

    if len(val) <= limit:
        return val, None
    _, keep = stratified_split(val.labels, limit / len(val), seed)
    return val.subset(np.asarray(keep)), keep


def split_csv(path: Path, classes: list[str], parts) -> Path:
    """A CSV of path,label,split from (samples, split) pairs."""
    from visionzoo.data.samples import FileSamples
    from visionzoo.files import atomic_write

    lines = ["path,label,split"]
    for samples, split in parts:
        if not isinstance(samples, FileSamples):
            raise DataError("a validation set larger than the selection needs image files; pass "
                            f"selection_images >= {len(samples)}")
        for file, label in zip(samples.paths, samples.labels):
            lines.append(f"{os.path.abspath(file)},{classes[int(label)]},{split}")
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path
