"""Writing files so that a crash (kill -9 included) leaves the old file or the new one, never half of one;
removing the temporary files such a crash leaves; and values made fit for JSON.

Files are created with the mode the umask gives (`open`'s 0o666 less the umask), as any other
program's output: a model written to a shared folder is readable by whoever may read the folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionzoo.errors import SettingError

__all__ = ["atomic_write", "atomic_write_json", "remove_stale_temporaries", "jsonable"]


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path` (`.NAME.tmpPID`), fsync it, and rename it over
    `path`. A failed write (a full disk) removes its temporary file; a killed process leaves it, for
    `remove_stale_temporaries`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


_TEMPORARY = re.compile(r"\..+\.tmp(\d+)")  # what atomic_write names its temporary files


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files `atomic_write` left in `folder` and below when its process was killed:
    those whose process is no longer alive, and this process's own (call it before this process
    writes there). Returns the files removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.rglob(".*.tmp*")):
        match = _TEMPORARY.fullmatch(path.name)
        if match and path.is_file() and not _alive_elsewhere(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive_elsewhere(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    atomic_write(path, json.dumps(data, indent=indent).encode())


def jsonable(value: Any, *, strict: bool = False) -> Any:
    """`value` with tuples as lists and keys as strings. Anything else JSON cannot hold becomes its
    str(), or, with `strict`, raises a ValueError naming it (a setting that must load back as it was)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, strict=strict) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if strict:
        raise SettingError(f"cannot save the value {value!r} ({type(value).__name__}) in config.json")
    return str(value)
