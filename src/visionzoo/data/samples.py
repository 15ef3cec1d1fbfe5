"""Image paths as a user gives them on a command line: files, folders and shell globs."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from visionzoo.data.decode import is_image_file

__all__ = ["expand_image_paths"]


def expand_image_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, folders as their image files (recursively, sorted), shell globs expanded.

    A path that does not exist and matches no glob is kept, so it is reported as an error
    in the results instead of silently skipped.
    """
    paths: list[str] = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            paths += sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and is_image_file(p.name))
        elif os.path.exists(item):
            paths.append(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            paths += [m for m in matches if os.path.isfile(m)] or [item]
        else:
            paths.append(item)
    return paths
