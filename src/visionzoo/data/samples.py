"""Samples: the images of a dataset with their labels, and image files as a user names them.

`FileSamples` is a list of files (decoded lazily); `ArraySamples` a uint8 array in memory or
memory-mapped (generated data and the pixel cache). `DataSplits` holds the class names and a
train and a validation part. `expand_image_paths` turns a command line's files, folders and
globs into image paths; `image_files` lists a folder's image files the one way that training
(`visionzoo.data.layout`) and prediction both use.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from visionzoo.data.decode import decode_image, is_image_file
from visionzoo.errors import DataError

__all__ = ["FileSamples", "ArraySamples", "EncodedSamples", "Samples", "DataSplits", "image_files", "expand_image_paths"]


@dataclass
class FileSamples:
    """Image files with integer labels; `paths[i]` has class `labels[i]`."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> FileSamples:
        return FileSamples([self.paths[i] for i in indices], self.labels[indices])


@dataclass
class ArraySamples:
    """Decoded images as a (N, H, W, 3) uint8 array (possibly memory-mapped) with labels."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str] | None = None  # where each image came from, for reports

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ArraySamples:
        names = [self.names[i] for i in indices] if self.names is not None else None
        return ArraySamples(self.images[indices], self.labels[indices], names)


class EncodedSamples:
    """Images held as encoded bytes (a validation shard read whole into memory), decoded on access by
    `decode(index)`; `names[index]` says where each came from. `data.hf.TableSamples` (rows of a
    Hugging Face dataset) is the other kind of samples that decode themselves."""

    def __init__(self, records: list[bytes], labels: np.ndarray, names: list[str]):
        self.records, self.labels, self.names = records, np.asarray(labels), names

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, index: int):
        """The RGB PIL image of sample `index` (an `ImageDecodeError` naming it when it does not decode)."""
        return decode_image(self.records[index], path=self.names[index])

    def subset(self, indices: np.ndarray) -> EncodedSamples:
        return EncodedSamples([self.records[i] for i in indices], self.labels[indices], [self.names[i] for i in indices])


Samples = FileSamples | ArraySamples | EncodedSamples


@dataclass
class DataSplits:
    classes: list[str]
    train: Samples
    val: Samples | None
    description: str
    native_size: int | None = None  # side of the images when known without decoding (generated data)
    task: str = "multiclass"  # or "multilabel": labels are (N, C) multi-hot


def _unreadable_folder(error: OSError) -> None:
    raise DataError(f"cannot read the folder {error.filename}: {error.strerror or error}; its images would be "
                    "left out unnoticed. Make it readable (chmod +rx) or move it out of the data")


def image_files(folder: str | os.PathLike) -> list[str]:
    """The image files under `folder` (by extension), recursively: each folder's files sorted, then
    its subfolders in sorted order. Links that lead nowhere (dangling, or a loop) are listed too, so
    that reading them reports them instead of their vanishing; a folder that cannot be read is a
    `DataError` naming it. Linked folders are not followed (a link to a parent would loop)."""
    found: list[str] = []
    for directory, subfolders, files in os.walk(folder, onerror=_unreadable_folder):
        subfolders.sort()
        found += [os.path.join(directory, name) for name in sorted(files) if is_image_file(name)]
    return found


def expand_image_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, folders as their image files (recursively, sorted), shell globs expanded.

    A path that does not exist and matches no glob is kept, so it is reported as an error
    in the results instead of silently skipped; so are a folder's dangling links and link loops.
    """
    paths: list[str] = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            paths += sorted(str(Path(found)) for found in image_files(item))
        elif os.path.exists(item):
            paths.append(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            paths += [m for m in matches if os.path.isfile(m)] or [item]
        else:
            paths.append(item)
    return paths
