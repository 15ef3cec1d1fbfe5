"""`pack_shards`: a folder or CSV written once as WebDataset tar shards, for streaming.

    visionzoo data pack photos/ --out shards/ --shard-size 1GB

writes `shards/train-000000.tar, ...` and `shards/val-000000.tar, ...` (the splits `--data` would
make of the source: its val/ folder or CSV split column, else a seeded stratified split), and
`shards/index.json` (`data.shards.INDEX_NAME`): the class names, every shard's sample count and
class counts, so a run knows its epoch without reading a shard. Samples are shuffled (seeded)
before they are written, so each shard holds a mix of the classes: a stream reads shards in
order, and a shard of one class would make batches of one class. Each sample is `KEY.<ext>`, the
image file's bytes as they are (no re-encoding; arrays are written as PNG), and `KEY.cls`, its
class index. Shards are written to a temporary name and renamed, so a stopped pack leaves no
half shard under a shard's name.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from visionzoo.data.samples import ArraySamples, FileSamples, Samples
from visionzoo.data.shards import INDEX_FORMAT, INDEX_NAME
from visionzoo.data.sources import resolve_data
from visionzoo.errors import DataError, SettingError, require_extra

__all__ = ["pack_shards", "parse_size"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}
MEMBER_OVERHEAD = 1024  # a tar header and padding per member, about


def parse_size(size: str | int) -> int:
    """Bytes of a size such as 1GB, 500MB, 64MiB or 1000000."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    if not match or match.group(2).upper() not in _UNITS:
        raise SettingError(f"shard size {size!r} is not a size; write it like 1GB, 500MB or 64MiB")
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise SettingError(f"shard size {size!r} must be above zero")
    return value


def _encoded(samples: Samples, index: int) -> tuple[str, bytes]:
    """(member extension, bytes) of one image."""
    if isinstance(samples, FileSamples):
        path = samples.paths[index]
        extension = Path(path).suffix.lower().lstrip(".") or "jpg"
        return ("jpg" if extension == "jpeg" else extension), Path(path).read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(samples.images[index])).save(buffer, format="PNG")
    return "png", buffer.getvalue()


def _write_split(samples: Samples, name: str, out: Path, shard_bytes: int, num_classes: int, seed: int,
                 progress: Callable[[int], None] | None) -> list[dict]:
    """Write one split's shards; their index entries."""
    wds = require_extra("webdataset", "data", "visionzoo data pack")
    order = np.random.default_rng(seed).permutation(len(samples))
    entries: list[dict] = []
    writer = handle = None
    scratch = None

    def close() -> None:
        if writer is not None:
            writer.close()
            handle.close()
            os.replace(scratch, out / entries[-1]["path"])

    for number, index in enumerate(order.tolist()):
        extension, data = _encoded(samples, index)
        size = len(data) + 2 * MEMBER_OVERHEAD
        if writer is None or (entries[-1]["count"] and entries[-1]["bytes"] + size > shard_bytes):
            close()
            entries.append({"path": f"{name}-{len(entries):06d}.tar", "count": 0, "bytes": 0,
                            "class_counts": [0] * num_classes})
            scratch = out / (entries[-1]["path"] + f".tmp{os.getpid()}")
            handle = open(scratch, "wb")
            writer = wds.TarWriter(handle, encoder=False)
        label = int(samples.labels[index])
        writer.write({"__key__": f"{name}{number:09d}", extension: data, "cls": str(label).encode()})
        entry = entries[-1]
        entry["count"] += 1
        entry["bytes"] += size
        entry["class_counts"][label] += 1
        if progress:
            progress(1)
    close()
    return entries


def pack_shards(data: str | os.PathLike, out: str | os.PathLike, *, shard_size: str | int = "1GB",
                val_fraction: float = 0.1, seed: int = 0, overwrite: bool = False,
                progress: Callable[[int], None] | None = None) -> dict:
    """Write the images of `data` (a folder, CSV, archive or `builtin:`, as `--data` takes them) as
    WebDataset shards of about `shard_size` each in `out`, with `out/index.json`; returns the index.

    The splits are those training would make (`val_fraction` and `seed` for a tree without a val/
    folder). Multi-label data is refused (the `.cls` member holds one class)."""
    shard_bytes = parse_size(shard_size)
    out = Path(out)
    if (out / INDEX_NAME).exists() and not overwrite:
        raise SettingError(f"{out} already holds packed shards ({out / INDEX_NAME}); choose another --out or "
                           "pass --overwrite")
    splits = resolve_data(data, val_fraction=val_fraction, seed=seed)
    if splits.task != "multiclass":
        raise DataError(f"{data} is multi-label data; packing writes one class per image (.cls)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tar.tmp*"):
        stale.unlink()
    index = {"format": INDEX_FORMAT, "classes": list(splits.classes), "image_key": None, "label_key": "cls",
             "source": str(data), "seed": seed, "splits": {}}
    parts = [("train", splits.train)] + ([("val", splits.val)] if splits.val is not None and len(splits.val) else [])
    for name, samples in parts:
        if not isinstance(samples, (FileSamples, ArraySamples)):
            raise DataError(f"{data} is not a folder, CSV or array set; pack takes those")
        index["splits"][name] = _write_split(samples, name, out, shard_bytes, len(splits.classes), seed, progress)
    temporary = out / f"{INDEX_NAME}.tmp{os.getpid()}"
    temporary.write_text(json.dumps(index, indent=1))
    os.replace(temporary, out / INDEX_NAME)
    return index
