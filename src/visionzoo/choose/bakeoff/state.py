"""What a bake-off was asked, and OUT/bakeoff-state.json: that request and every finished piece of work.

The file is rewritten atomically after each piece, so a rerun with the same --out after any
interruption (kill -9 included) reuses what was finished. `kill_point` lets the tests kill the
process at a named point to prove it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionzoo.errors import SettingError
from visionzoo.files import atomic_write_json

__all__ = ["KILL_ENV", "STATE_FILE", "BakeoffRequest", "BakeoffState", "BudgetSpent", "Deadline", "kill_point"]

STATE_FILE = "bakeoff-state.json"
KILL_ENV = "VISIONZOO_BAKEOFF_KILL_AT"  # tests: SIGKILL this process at a named point (kill -9 resume)


def kill_point(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class BudgetSpent(Exception):
    """--budget-min ran out in the middle of a piece of work (raised from its progress callback)."""


@dataclass(frozen=True)
class Deadline:
    """When the whole bake-off must end (`time.monotonic()` seconds; None: no budget). Every stage asks
    it before each piece of work, so `--budget-min` bounds the run, not only the fine-tunes."""

    at: float | None = None
    budget_min: float | None = None

    @classmethod
    def after(cls, budget_min: float | None) -> Deadline:
        return cls(time.monotonic() + 60 * budget_min if budget_min else None, budget_min)

    def left_s(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def reason(self, what: str) -> str:
        return f"{what}: --budget-min {self.budget_min:g} ran out"

    def check(self) -> None:
        """Raise `BudgetSpent` once the deadline has passed (for long pieces of work, per batch)."""
        if self.passed():
            raise BudgetSpent(f"--budget-min {self.budget_min:g} ran out")


class BakeoffState:
    """{"request": ..., "candidates": {name: {latency_ms, engine, probe_top1, knn_top1, scores: {score:
    {value, per_class}}, finetune: {...}, full_val_top1}}, "finetune_seconds": ..., "winner": {...}}; a saved
    state of another request is an error. Fields are only ever added: a state written before one existed
    still resumes (`probe.probe_all` fills the scores in from the embedding cache)."""

    def __init__(self, out: Path, request: dict[str, Any]):
        self.path = out / STATE_FILE
        self.data: dict[str, Any] = {"request": request, "candidates": {}}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("request") != request:
                changed = sorted(k for k in set(request) | set(saved.get("request", {}))
                                 if request.get(k) != saved.get("request", {}).get(k))
                raise SettingError(f"{out} holds a bake-off of a different request ({', '.join(changed)} differ); "
                                   "rerun with the same arguments to resume, or give a new --out")
            self.data = saved

    def get(self, key: str) -> dict[str, Any]:
        """The saved work of candidate `key` (a dict to update, then `save`)."""
        return self.data["candidates"].setdefault(key, {})

    def finetune(self, key: str) -> dict[str, Any]:
        """Candidate `key`'s fine-tune entry: state, reason, run_dir, device, epochs, command."""
        return self.get(key).setdefault("finetune", {})

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


@dataclass(frozen=True)
class BakeoffRequest:
    """What `bakeoff` was asked, its defaults filled in (see `visionzoo.choose.bakeoff.bakeoff`)."""

    data: str
    target: str
    out: Path
    cache_dir: Path
    devices: tuple[str, ...]
    latency_ms: float | None = None
    max_params_m: float | None = None
    commercial: bool = False
    weights: dict[str, str] | None = None
    candidates: int = 8
    finetune_top: int = 2
    finalists: str = "adaptive"  # "adaptive": by the gaps in the ranking score (decision.choose_finalists); "top"
    names: tuple[str, ...] = ()  # the zoo models asked for by name (--candidates NAME,NAME)
    rank_by: str = "logme"  # the transferability score that ranks the candidates (decision.SCORE_NAMES)
    budget_min: float | None = None
    plot: str | None = None
    image_size: int | None = None
    finetune_settings: dict[str, Any] = field(default_factory=dict)
    selection_images: int = 1000
    progress: bool = True
    max_measured: int | None = None

    @property
    def constraints(self) -> dict[str, Any]:
        return {k: v for k, v in {"latency_ms": self.latency_ms, "max_params_m": self.max_params_m,
                                  "commercial": self.commercial or None}.items() if v is not None}

    def saved(self) -> dict[str, Any]:
        """The part that decides the results, as the state file records it: a rerun must match it to resume."""
        return {"data": os.path.abspath(self.data) if Path(self.data).exists() else self.data,
                "target": self.target, "constraints": self.constraints, "weights": self.weights or None,
                "image_size": self.image_size, "finetune_settings": self.finetune_settings,
                "selection_images": self.selection_images}
