"""Reading weight files safely and fetching them from the Hugging Face Hub or a URL.

safetensors files are read as they are. Pickle-based files (.pth, .pt, .bin) are opened
only with `torch.load(weights_only=True)`, whose unpickler refuses any object that is not
a tensor or a plain container; there is no fallback to unsafe loading, because unpickling
an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
from pathlib import Path

import torch

from visionzoo.data.archives import cache_root
from visionzoo.errors import SettingError, UsageError

__all__ = ["WEIGHT_SUFFIXES", "UnsafeCheckpointError", "DamagedWeightsError", "NonFiniteWeightsError",
           "WeightsNotAvailableError", "read_state_dict", "check_finite", "weights_home", "hub_download", "hub_snapshot",
           "url_download",
           "why_unobtainable"]

logger = logging.getLogger("visionzoo.weights")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Wrappers training scripts put around a state_dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")


class UnsafeCheckpointError(UsageError, pickle.UnpicklingError, ValueError):
    """A pickle-based checkpoint holding objects other than tensors; it was not unpickled."""


class DamagedWeightsError(SettingError):
    """A weight file that cannot be read: a bad header, truncated data, offsets or shapes that disagree."""


class NonFiniteWeightsError(SettingError):
    """A checkpoint with NaN or infinite values."""


class WeightsNotAvailableError(UsageError, FileNotFoundError):
    """Weights that are neither in the local cache nor downloadable (offline or missing)."""


def weights_home() -> Path:
    """Where visionzoo keeps downloaded or hand-placed weight files: $VISIONZOO_CACHE/weights."""
    return cache_root() / "weights"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weight file, unwrapped from the usual training-script containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise SettingError(f"{path}: unknown weight file type {path.suffix!r}; expected one of "
                         f"{', '.join(WEIGHT_SUFFIXES)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError) as error:  # a truncated or damaged zip archive or pickle stream
        raise DamagedWeightsError(f"cannot read {path}: {str(error).splitlines()[0] or type(error).__name__}; "
                                  "the file is damaged or truncated (download or save it again)") from None
    except pickle.UnpicklingError as error:
        refused = [g for g in _pickle_globals(path) if not g.startswith(_SAFE_GLOBAL_PREFIXES)]
        if not refused and (match := re.search(r"GLOBAL ([\w.]+)", str(error))):
            refused = [match.group(1)]
        what = f"the object {', '.join(refused[:3])}" if refused else "an object that is not a tensor"
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains {what}, and unpickling it could run arbitrary code. "
            "visionzoo loads pickle-based files with torch.load(weights_only=True) only; convert the file "
            "to .safetensors with the program that wrote it, if you trust it") from None
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise DamagedWeightsError(f"cannot read {path}: {_safetensors_damage(path, error)}; download or save "
                                  "the file again") from None


# bytes per element of the safetensors dtypes
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _safetensors_damage(path: Path, error: Exception) -> str:
    """What is wrong with a safetensors file the library refused, in words: its layout is an 8-byte
    little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the data."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        length = int.from_bytes(prefix, "little")
        if len(prefix) < 8:
            return f"it is {size} bytes long, too short for a safetensors header"
        if length > size - 8:
            return (f"its header claims {length:,} bytes but {size - 8:,} follow (truncated in its header, "
                    "or not a safetensors file)")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except ValueError as decode_error:  # JSONDecodeError and UnicodeDecodeError
        return f"its header is not valid JSON ({decode_error})"
    data = size - 8 - length
    for name, info in header.items() if isinstance(header, dict) else ():
        if name == "__metadata__":
            continue
        try:
            (begin, end), shape, dtype = info["data_offsets"], [int(d) for d in info["shape"]], info["dtype"]
        except (TypeError, KeyError, ValueError):
            return f"the header's entry for tensor '{name}' lacks a dtype, shape or pair of data_offsets"
        if end > data:
            return f"tensor '{name}' ends at byte {end:,} of the data, but the file holds {data:,} (truncated)"
        needed = math.prod(shape) * _DTYPE_BYTES.get(dtype, 0)
        if begin < 0 or end < begin or (dtype in _DTYPE_BYTES and needed != end - begin):
            return (f"tensor '{name}' of shape {tuple(shape)} and dtype {dtype} needs {needed:,} bytes, but its "
                    f"data_offsets [{begin}, {end}] give {end - begin:,}")
    return str(error).removeprefix("Error while deserializing header: ")


_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "numpy.")


def _pickle_globals(path: Path) -> list[str]:
    """The `module.name` globals a pickle (or torch zip archive) refers to, read from its opcodes
    without executing anything."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = path.read_bytes()
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return list(dict.fromkeys(found))
    except Exception:  # a damaged pickle: the caller falls back to torch's message
        return []


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise SettingError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise SettingError(f"{path} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel / DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise, naming the tensors, when any floating-point value is NaN or infinite."""
    bad = [k for k, v in state_dict.items()
           if v.is_floating_point() and v.device.type != "meta" and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise NonFiniteWeightsError(f"{source}: non-finite values (NaN or inf) in {shown}; the file is damaged "
                                    "or came from a diverged training run")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_REACHABLE: dict[str, bool] = {}


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether `url`'s host resolves and accepts a TCP connection within `timeout` seconds (asked
    once per host and process). huggingface_hub retries a failed request with back-off for about
    23 s; without a network, this answers at once and the caches are used straight away."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, parts.port or (80 if parts.scheme == "http" else 443)), timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def why_unobtainable(hub: dict | None, url: str | None) -> str | None:
    """None when a weight file can be had now (placed by hand in `weights_home()`, in the Hugging Face
    cache, or downloadable: online and the host answering); else why not, in words.

    Asks the caches first and the network at most once per host (`_reachable`, 3 s), so a command can
    check every weight it will need before any work instead of failing on a download late."""
    if hub:
        repo, files = hub["repo"], list(hub["files"])
        if any((weights_home() / repo / name).is_file() for name in files):
            return None
        from huggingface_hub import constants, try_to_load_from_cache

        cache_dir = os.environ.get("HF_HUB_CACHE")  # read now, as `hub_download` does
        if any(isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir, revision=hub.get("revision")), str)
               for name in files):
            return None
        if not _offline() and _reachable(constants.ENDPOINT):
            return None
        return (f"{files[0]} of '{repo}' is not in the Hugging Face cache and the Hub is "
                + ("offline (HF_HUB_OFFLINE=1)" if _offline() else "unreachable"))
    if url:
        if (weights_home() / url.rsplit("/", 1)[-1]).is_file() or (not _offline() and _reachable(url)):
            return None
        why = "offline: HF_HUB_OFFLINE=1" if _offline() else "its host is unreachable"
        return f"{url.rsplit('/', 1)[-1]} is not in {weights_home()} ({why})"
    return None


def hub_download(repo: str, files: list[str] | tuple[str, ...], revision: str | None = None) -> Path:
    """The local path of the first of `files` that `repo` has, through huggingface_hub and its cache.

    A file placed by hand at `weights_home()/<repo>/<file>` is used first. Offline
    (HF_HUB_OFFLINE=1, or no network) only the caches are looked at; when the file is in
    neither, the error names the file and the folder where placing it makes loading work.
    """
    manual = weights_home() / repo
    for name in files:
        if (manual / name).is_file():
            return manual / name
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as error:  # pragma: no cover - a runtime dependency
        raise ImportError("downloading weights needs huggingface_hub: pip install huggingface_hub") from error
    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now: huggingface_hub reads it once, at import
    from huggingface_hub import constants

    offline = _offline()
    cache_only = offline or not _reachable(constants.ENDPOINT)
    reasons = []
    for name in files:
        try:
            path = huggingface_hub.hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir,
                                                   local_files_only=cache_only)
            return Path(path)
        except LocalEntryNotFoundError:  # before EntryNotFoundError: huggingface_hub derives it from that
            reasons.append(f"{name}: not cached" + ("" if offline else " and the Hub is unreachable"))
            cache_only = True  # no network: the remaining files can only come from the cache
        except EntryNotFoundError:
            reasons.append(f"{name}: not in the repository")
        except RepositoryNotFoundError:
            raise WeightsNotAvailableError(f"Hub repository '{repo}' does not exist or is private") from None
    raise WeightsNotAvailableError(
        f"cannot get weights from Hub repository '{repo}'{' offline' if _offline() else ''} ({'; '.join(reasons)}). Download {files[0]} from "
        f"https://huggingface.co/{repo} and place it in {manual}/ (or set HF_HUB_CACHE to a cache that holds it)")


def hub_snapshot(repo: str, revision: str | None = None, patterns: list[str] | None = None) -> Path:
    """The local folder of `repo` (the files matching `patterns`, default all), through huggingface_hub's
    snapshot cache, as `hub_download` gets one file: a folder placed by hand at `weights_home()/<repo>/`
    (holding config.json) first; offline (HF_HUB_OFFLINE=1, or no network) the cache only."""
    manual = weights_home() / repo
    if (manual / "config.json").is_file():
        return manual
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    cache_only = _offline() or not _reachable(constants.ENDPOINT)
    try:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=patterns,
                                                      cache_dir=os.environ.get("HF_HUB_CACHE"),
                                                      local_files_only=cache_only))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise WeightsNotAvailableError(f"Hub repository '{repo}'{'@' + revision if revision else ''} does not "
                                       "exist or is private (log in with `hf auth login` for a private one)") from None
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE=1)" if _offline() else "the Hub is unreachable"
        raise WeightsNotAvailableError(
            f"Hub repository '{repo}' is not in the Hugging Face cache and {why}; download it once online, or "
            f"place its files in {manual}/ (or set HF_HUB_CACHE to a cache that holds it)") from None


def url_download(url: str) -> Path:
    """A file from a URL, cached as `weights_home()/<file name>`; offline, the cache only."""
    folder = weights_home()
    target = folder / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if not _offline():
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        try:
            torch.hub.download_url_to_file(url, str(partial), progress=True)
            os.replace(partial, target)
            return target
        except OSError as error:
            logger.info("download of %s failed: %s", url, error)
        finally:
            partial.unlink(missing_ok=True)
    raise WeightsNotAvailableError(
        f"cannot download {url} ({'offline' if _offline() else 'no network'}); place the file {target.name} "
        f"in {folder}/ and retry")
