"""Writing files so that a crash (kill -9 included) leaves the old file or the new one, never half of one;
and values made fit for JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionzoo.errors import SettingError

__all__ = ["atomic_write", "atomic_write_json", "jsonable"]


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


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
