"""Checkpoints that always load: atomic writes, weights in safetensors, the rest in one state file.

A run's `checkpoint/` folder holds, per step, `model-<step>.safetensors` and the rest of the
training state (optimizer, scheduler, scaler, EMA, position, RNG states, best metric, history,
settings) as `state-<step>.json` with its tensors in `state-<step>.safetensors`, and
`latest.json` naming the newest complete set. Nothing in a checkpoint is a pickle: a run folder
from someone else cannot run code when it is resumed (JSON and safetensors hold data only). Every file is written to a temporary
name, fsynced and renamed, and `latest.json` is replaced only after its pair is on disk, so
a crash at any moment leaves the previous checkpoint loadable. Older pairs are removed after
the pointer moves. The trainer hands checkpoints to a `CheckpointWriter`, which copies the state
at once and writes it in a background thread, so a fast GPU does not wait for the disk.

The models a run keeps (`best/`, `last/`) are written by `visionzoo.save_model`.
"""

from __future__ import annotations

import errno
import json
import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from visionzoo.errors import UsageError
from visionzoo.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "latest_step", "CheckpointWriter", "DiskFullError"]


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; copies are cheap next to the disk write.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(folder: Path, step: int, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    _write_checkpoint(folder, step, _tensors(model_state), state)


def _write_checkpoint(folder: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """`save_checkpoint` for weights already copied to contiguous CPU tensors (`_tensors`). A write that
    fails (a full disk) removes this step's files again; the previous checkpoint stays as it was."""
    folder = Path(folder)
    state_tensors: dict[str, torch.Tensor] = {}
    document = _encode(state, state_tensors)
    try:
        atomic_write(folder / f"model-{step}.safetensors", save(weights))
        atomic_write(folder / f"state-{step}.safetensors", save(_tensors(state_tensors)))
        atomic_write(folder / f"state-{step}.json", json.dumps(document).encode())
        atomic_write(folder / "latest.json", json.dumps({"step": step}).encode())
    except OSError:
        if latest_step(folder) != step:
            for name in (f"model-{step}.safetensors", f"state-{step}.safetensors", f"state-{step}.json"):
                (folder / name).unlink(missing_ok=True)
        raise
    for old in folder.iterdir():
        match = _CHECKPOINT_FILE.fullmatch(old.name)
        if match and int(match.group(1)) != step:
            old.unlink(missing_ok=True)


def latest_step(folder: Path) -> int | None:
    """The step of the newest complete checkpoint in `folder` (its `latest.json`), None without one."""
    try:
        return int(json.loads((Path(folder) / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class DiskFullError(UsageError, OSError):
    """The disk (or the quota) filled up while a checkpoint was written; the previous one is intact."""


# The only files a checkpoint folder's clean-up removes: those `_write_checkpoint` writes (and the
# pickled `state-<step>.pt` of checkpoints written before version 0.2).
_CHECKPOINT_FILE = re.compile(r"(?:model|state)-(\d+)\.(?:safetensors|json|pt)")


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON data: tensors and NumPy arrays go to `tensors` under a numbered key and are
    referenced by it; tuples, dicts with keys other than strings and non-finite floats are tagged,
    so that `_decode` gives back exactly the same Python values (an optimizer's state is keyed by
    int, Python's RNG state is a tuple)."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (np.integer, np.floating)):
        return {"__numpy_scalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"a training state holds a {type(value).__name__}, which a checkpoint cannot store as data")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__float__" in value:
        return float(value["__float__"])
    if "__numpy_scalar__" in value:
        return np.dtype(value["__numpy_scalar__"]).type(value["value"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _snapshot(value: Any) -> Any:
    """`value` with every tensor copied to the CPU and every dict, list and tuple rebuilt: what a
    training state is at this moment, unaffected by later steps that update tensors in place."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.clone() if value.device.type == "cpu" else value.to("cpu")
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return value


class CheckpointWriter:
    """Writes checkpoints (`save_checkpoint`) in a background thread, one at a time, in order.

    `submit` copies the weights and the state to the CPU before it returns, so the checkpoint holds
    the state of that moment whatever training does next; serialising, writing and fsyncing then
    overlap with training (on a GPU run of a few seconds, ten epoch-end checkpoints of a 2M-parameter
    network took about as long as two epochs). A second `submit` first waits for the one in flight.
    `flush` waits for the pending write and raises its error, if it failed. The thread is not a
    daemon: an interpreter that exits lets a started write finish.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, folder: Path, step: int, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.flush()
        weights, state = _tensors(model_state), _snapshot(state)
        self._thread = threading.Thread(target=self._write, args=(folder, step, weights, state),
                                        name="visionzoo-checkpoint")
        self._thread.start()

    def _write(self, folder: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        try:
            _write_checkpoint(folder, step, weights, state)  # copied once, in submit
        except OSError as error:
            self._error = _disk_full(folder, step) if error.errno in (errno.ENOSPC, errno.EDQUOT) else error
            self._error.__cause__ = error if self._error is not error else None
        except BaseException as error:  # handed to the training thread by flush()
            self._error = error

    def flush(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, DiskFullError):
                raise error
            raise RuntimeError(f"writing a checkpoint failed: {error}") from error


def _disk_full(folder: Path, step: int) -> DiskFullError:
    previous = latest_step(folder)
    kept = (f"the previous checkpoint (step {previous}) in {folder} is intact; free some space, then continue with "
            f"visionzoo train --resume {folder.parent}" if previous is not None else "no earlier checkpoint was written")
    return DiskFullError(f"the disk is full: the checkpoint of step {step} could not be written to {folder}; {kept}")


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest complete checkpoint in `folder`: (model weights, training state). Loading runs no
    code from the folder: JSON and safetensors only, and a pickled state of an older version is
    opened with `torch.load(weights_only=True)` and NumPy's array types allowed, nothing else."""
    folder = Path(folder)
    pointer = folder / "latest.json"
    if not pointer.exists():
        raise FileNotFoundError(f"no checkpoint in {folder} (latest.json is missing); nothing to resume")
    try:
        step = int(json.loads(pointer.read_text())["step"])
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{pointer} is not a checkpoint pointer ({error}); the run cannot be resumed") from error
    weights = _load_tensors(folder / f"model-{step}.safetensors")
    document = folder / f"state-{step}.json"
    if document.exists():
        tensors = _load_tensors(folder / f"state-{step}.safetensors")
        try:
            return weights, _decode(json.loads(document.read_text()), tensors)
        except (ValueError, KeyError, TypeError) as error:
            raise UsageError(f"{document} is not a visionzoo training state ({error}); "
                             "the run cannot be resumed from it") from error
    legacy = folder / f"state-{step}.pt"
    if not legacy.exists():
        raise UsageError(f"{folder} has model-{step}.safetensors but no state-{step}.json; the run cannot be resumed")
    numpy_types = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct]
    try:
        with torch.serialization.safe_globals(numpy_types):
            return weights, torch.load(legacy, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle's refusal of any other global, or a damaged file
        raise UsageError(f"{legacy} holds more than tensors and plain data, so it is not opened (it could run "
                         f"code); resume only checkpoints written by visionzoo. ({str(error).splitlines()[0]})") from error


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError:
        raise UsageError(f"{path} is missing; the checkpoint is incomplete and the run cannot be resumed") from None
    except Exception as error:  # safetensors raises its own errors for a bad header or a truncated file
        raise UsageError(f"{path} is not a readable safetensors file ({error}); the run cannot be resumed") from error
