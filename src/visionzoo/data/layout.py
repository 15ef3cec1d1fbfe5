"""The rules of a class-per-folder tree: which folders are splits, which are classes, what is skipped.

    DIR/CLASS/IMAGE                      one tree (split by a seeded stratified split when training)
    DIR/train/CLASS/IMAGE, DIR/val/...   split folders: train, and val, validation, valid or test
    WRAPPER/...                          either form wrapped in one folder (cifar10/train/...)

Class folders are the visible subfolders, sorted: names starting with "." (hidden) or "__" (tools'
folders: `__pycache__`, the `__MACOSX` of a zip made on a Mac) are skipped. With split folders, the
classes are those of train/ (of the first split folder when there is none), whatever else lies
beside the splits (logs/, checkpoints/). A class's images are the files with an image extension
anywhere below its folder (`samples.image_files`).
An archive usually wraps its tree in one folder (`tar czf flowers.tar.gz flowers`), so in an
archive one folder holding subfolders and no images is always a wrapper, never a single class.
`data.sources` (training and evaluation), `embed` and `diagnose.data_audit` all read trees here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from visionzoo.data.decode import is_image_file
from visionzoo.data.samples import FileSamples, image_files
from visionzoo.errors import DataError

__all__ = ["SPLIT_FOLDERS", "VAL_FOLDER_NAMES", "class_folders", "scan_tree", "tree_root", "split_folders",
           "tree_classes"]

# In this order: training's validation folder is the first present, and the audit's `path` of a
# leak is the image in the later split.
SPLIT_FOLDERS = ("train", "val", "validation", "valid", "test")
VAL_FOLDER_NAMES = SPLIT_FOLDERS[1:]


def class_folders(root: str | os.PathLike) -> list[str]:
    """The visible subfolders of `root` (not hidden, not "__" tools' folders), sorted; a `DataError`
    naming `root` when it cannot be read."""
    try:
        with os.scandir(root) as entries:
            return sorted(entry.name for entry in entries
                          if not entry.name.startswith((".", "__")) and _is_folder(entry))
    except PermissionError as error:
        raise DataError(f"cannot read the folder {root}: {error.strerror}; make it readable (chmod +rx)") from None


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop is no folder; reading it as a file reports it
        return False


def scan_tree(root: str | os.PathLike, classes: list[str]) -> FileSamples:
    """The images of `root/CLASS/...` for each of `classes` (label = its index); absent classes have none."""
    root = Path(root)
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        if (root / name).is_dir():
            found = image_files(root / name)
            paths += found
            labels += [label] * len(found)
    return FileSamples(paths, np.array(labels, dtype=np.int64))


def tree_root(root: str | os.PathLike, *, archive: bool = False) -> Path:
    """Where the tree starts: `root`, or the one folder wrapping it: a folder that holds split
    folders, or, in an unpacked `archive`, a folder that holds subfolders and no images."""
    root = Path(root)
    folders = class_folders(root)
    if len(folders) != 1 or folders[0] in SPLIT_FOLDERS:
        return root
    inner = root / folders[0]
    inside = class_folders(inner)
    if set(inside) & set(SPLIT_FOLDERS):
        return inner
    if archive and inside and not any(is_image_file(name) for name in os.listdir(inner)):
        return inner
    return root


def split_folders(root: str | os.PathLike) -> list[str]:
    """The split folders present in `root`, in `SPLIT_FOLDERS` order ([] for a plain class tree)."""
    present = set(class_folders(root))
    return [name for name in SPLIT_FOLDERS if name in present]


def tree_classes(root: str | os.PathLike) -> list[str]:
    """The class names of the tree at `root` (already unwrapped by `tree_root`): with split folders, the
    class folders of train/ (of the first split folder present when there is no train/), which is what
    training learns; else the class folders of `root`."""
    present = split_folders(root)
    if not present:
        return class_folders(root)
    return class_folders(Path(root) / ("train" if "train" in present else present[0]))
