"""Where a run's time goes, and how many threads it may use.

`MeasuringTimer` (the measuring `step.PhaseTimer`) adds up wall time per phase (data: waiting for the loader; forward_backward;
optimizer; validation; cache: decoding once; probe: LP-FT's probe phase). On a GPU the host
does not wait for the device between phases, so there the split shows where the host waited
(the loss is read back at log steps and before checkpoints); on a CPU it is exact.

`plan_threads` keeps intra-op threads plus loader workers at or below the cores: a worker
process busy with augmentation and two compute threads on two cores fight for them (and the
kernel time of that run showed it).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from visionzoo.training.step import PhaseTimer

__all__ = ["PHASES", "MeasuringTimer", "available_cores", "plan_threads"]

PHASES = ("cache", "probe", "data", "forward_backward", "optimizer", "validation")


class MeasuringTimer(PhaseTimer):
    """Per-phase seconds, for the run (`totals`) and the current epoch (`epoch`)."""

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals = {phase: 0.0 for phase in PHASES}
        self.totals.update(totals or {})
        self.epoch = {phase: 0.0 for phase in PHASES}

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] += seconds
        self.epoch[name] += seconds

    def start_epoch(self) -> None:
        self.epoch = {phase: 0.0 for phase in PHASES}

    @staticmethod
    def line(times: dict[str, float]) -> str:
        shown = [(name, seconds) for name, seconds in times.items() if seconds >= 0.05]
        return "time: " + ", ".join(f"{name.replace('_', '/')} {seconds:.1f} s" for name, seconds in shown)

    def summary(self) -> dict[str, float]:
        return {name: round(seconds, 4) for name, seconds in self.totals.items()}


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan_threads(workers: int, current: int, cores: int | None = None) -> int:
    """Intra-op threads for a run with `workers` loader processes: at most cores - workers (and at
    least 1), never more than the `current` setting (a user's torch.set_num_threads or OMP_NUM_THREADS)."""
    cores = cores or available_cores()
    return max(1, min(current, cores - workers))
