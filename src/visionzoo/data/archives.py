"""Tar archives of a tree (`.tar`, `.tar.gz`, `.tgz`), unpacked once into the cache folder.

`unpack_archive(path)` checks the archive before writing anything: the sizes its headers claim
must stay under a cap (default the smaller of 50 GB and 100 times the archive's own size, but
at least 1 GB), since a 2 MB .tar.gz of zeros unpacks to gigabytes. A genuine archive over the
cap unpacks with an explicit `max_unpack_gb` (`--max-unpack-gb`), which replaces both limits.
Extraction uses tarfile's "data" filter (no absolute paths, no links out, no devices) into a
scratch folder `NAME.tmpPID` renamed into place when complete; scratch folders of processes
that no longer run (killed mid-unpack) are removed by the next unpack.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tarfile
from pathlib import Path

from visionzoo.errors import DataError

__all__ = ["ARCHIVE_SUFFIXES", "DEFAULT_MAX_UNPACK_GB", "MAX_COMPRESSION_RATIO", "cache_root", "is_archive",
           "unpack_archive", "remove_stale_scratch"]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DEFAULT_MAX_UNPACK_GB = 50.0
MAX_COMPRESSION_RATIO = 100  # images barely compress: a tar.gz of JPEGs or PNGs is about 1x, of BMPs a few x
RATIO_FLOOR_BYTES = 1 << 30  # small archives may unpack to this much whatever their ratio


def cache_root() -> Path:
    """Where unpacked archives and pixel caches live: $VISIONZOO_CACHE or ~/.cache/visionzoo."""
    return Path(os.environ.get("VISIONZOO_CACHE", Path.home() / ".cache" / "visionzoo"))


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_scratch(folder: Path) -> None:
    """Remove `folder`'s scratch entries (`NAME.tmpPID`, `NAME.tmpPID.SUFFIX`) of processes no longer running."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        _, tmp, rest = entry.name.rpartition(".tmp")
        pid = rest.split(".")[0]
        if not tmp or not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _check_size(archive: Path, tar: tarfile.TarFile, max_unpack_gb: float | None) -> None:
    """Refuse, before extracting, an archive whose members add up to more than the cap."""
    total = sum(member.size for member in tar.getmembers() if member.isfile())
    packed = max(archive.stat().st_size, 1)
    if max_unpack_gb is not None:
        limit, why = max_unpack_gb * 1e9, f"--max-unpack-gb {max_unpack_gb:g}"
    else:
        by_ratio = max(MAX_COMPRESSION_RATIO * packed, RATIO_FLOOR_BYTES)
        limit = min(DEFAULT_MAX_UNPACK_GB * 1e9, by_ratio)
        why = (f"{MAX_COMPRESSION_RATIO}x the archive's size" if by_ratio < DEFAULT_MAX_UNPACK_GB * 1e9
               else f"the default cap of {DEFAULT_MAX_UNPACK_GB:g} GB")
    if total > limit:
        raise DataError(f"{archive} would unpack to {total / 1e9:.2f} GB from {packed / 1e6:.1f} MB "
                        f"({total / packed:.0f}x), over the limit of {limit / 1e9:.2f} GB ({why}); refused before "
                        f"unpacking, as an archive bomb would be. If the archive is genuine, raise the limit with "
                        f"--max-unpack-gb {math.ceil(total / 1e9 * 1.01 + 0.01):g}")


def unpack_archive(archive: str | os.PathLike, *, max_unpack_gb: float | None = None) -> Path:
    """The folder `archive` unpacks to, unpacked once into the cache; the folder's name carries the
    archive's path, size and mtime, so a changed archive unpacks again. See the module docstring."""
    archive = Path(archive)
    stat = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = archive.name.split(".")[0]
    target = cache_root() / "datasets" / f"{stem}-{key}"
    remove_stale_scratch(target.parent)  # what a killed unpack left, whichever archive it was
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            _check_size(archive, tar, max_unpack_gb)
            tar.extractall(scratch, filter="data")  # 'data' refuses absolute paths, links out, devices
    except (tarfile.TarError, OSError, EOFError) as error:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DataError(f"cannot unpack {archive}: {error}") from None
    (scratch / ".complete").write_text("")
    try:
        scratch.rename(target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(scratch, ignore_errors=True)
    return target
