"""Stage 3 of the bake-off: the finalists fine-tuned with the transfer recipe, one worker process per
device (`python -m visionzoo.training.worker SPEC.json`), within a total budget, halved at the rungs.

Each run is described by OUT/runs/NAME.spec.json and reports through OUT/runs/NAME.result.json (see
`visionzoo.training.worker`); its output goes to OUT/runs/NAME.log. The state file records each run's
state (running, done, stopped, failed, skipped) and why, so a rerun resumes an interrupted run from
its checkpoint and leaves finished and stopped ones as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionzoo.choose.bakeoff.decision import halving_verdict, rung_every
from visionzoo.choose.bakeoff.state import BakeoffRequest, BakeoffState, kill_point
from visionzoo.choose.candidates import Candidate
from visionzoo.training.worker import command_line

__all__ = ["FineTuneScheduler", "fine_tune_all", "finetune_recipe", "planned_epochs", "record_outcomes", "run_result",
           "run_spec"]

Progress = Callable[[str, int, int], None]  # (candidate, epochs validated so far, epochs planned)


def finetune_recipe() -> str:
    """The recipe every fine-tune runs: the data-size-aware transfer recipe."""
    from visionzoo.training.settings import RECIPES

    return "auto" if "auto" in RECIPES else "finetune"


def planned_epochs(name: str, splits, num_val: int, image_size: int | None, settings: dict[str, Any]) -> int:
    """The epochs the transfer recipe gives this model and data, so that the rungs can be placed."""
    from visionzoo.training.settings import TrainSettings, resolve_settings

    if settings.get("epochs"):
        return int(settings["epochs"])
    requested = TrainSettings(recipe=finetune_recipe(), image_size=image_size,
                              **{k: v for k, v in settings.items() if k != "epochs"})
    return int(resolve_settings(requested, name, native_size=splits.native_size, pretrained=True,
                                num_train=len(splits.train), num_val=num_val).epochs)


def run_spec(c: Candidate, data: str, run_dir: Path, epochs: int, image_size: int | None,
             settings: dict[str, Any], device: str, resume: bool) -> dict[str, Any]:
    """The worker's spec for candidate `c`'s fine-tune (see `visionzoo.training.worker`)."""
    train_settings: dict[str, Any] = {"recipe": finetune_recipe(), "epochs": epochs, "val_every": rung_every(epochs)}
    if image_size:
        train_settings["image_size"] = image_size
    train_settings.update({k: v for k, v in settings.items() if k != "epochs"})
    train_settings.update(device=device, progress=False)
    if resume:  # the run folder holds every other setting
        train_settings = {"device": device, "progress": False}
    return {"model": c.name, "pretrained": c.weights, "data": data, "run_dir": str(run_dir), "resume": resume,
            "settings": train_settings, "result": str(_result_path(run_dir))}


def _result_path(run_dir: str | Path) -> Path:
    return Path(run_dir).parent / f"{Path(run_dir).name}.result.json"  # OUT/runs/NAME.result.json


def run_result(run_dir: str | Path) -> dict[str, Any]:
    """What the worker last reported for the run in `run_dir` ({} before its first report)."""
    path = _result_path(run_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def _curve(report: dict[str, Any]) -> dict[int, float]:
    """{epoch: validation top-1} from a worker's report (JSON keys are text)."""
    return {int(epoch): top1 for epoch, top1 in report.get("curve", {}).items()}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A fine-tune process dies with the bake-off (kill -9 included), so a rerun never races an orphan."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _terminate(process: subprocess.Popen, grace_s: float | None = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class FineTuneScheduler:
    """The finalists' fine-tunes: started cheapest first on free devices, polled, halved, stopped at the budget."""

    finalists: list[Candidate]
    state: BakeoffState
    data: str  # what the workers train on (the selection as validation, when val was larger)
    request: BakeoffRequest
    epochs_of: dict[str, int]
    progress: Progress
    num_val: int | None = None  # validation images each run is scored on (the selection): the halving's noise
    queue: list[Candidate] = field(init=False)  # waiting to start
    free: list[str] = field(init=False)  # devices with no run
    running: dict[str, tuple[subprocess.Popen, str]] = field(init=False, default_factory=dict)  # name -> (process, device)
    curves: dict[str, dict[int, float]] = field(init=False)  # name -> {epoch: validation top-1}, as last reported

    def __post_init__(self):
        # Cheapest first: a run that starts while no other has reached its rungs cannot be stopped by
        # them, so the one that goes unchallenged should be the one that costs least.
        self.queue = sorted((c for c in self.finalists if self._entry(c.name).get("state") not in ("done", "stopped")),
                            key=lambda c: (c.params, c.latency_ms or 0.0))
        self.free = list(self.request.devices)
        self.curves = {c.name: _curve(run_result(self._entry(c.name)["run_dir"])) for c in self.finalists
                       if self._entry(c.name).get("run_dir")}
        self.runs = self.request.out / "runs"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        devices = self.request.devices
        if len(devices) > 1 and all(d == "cpu" for d in devices):
            self.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // len(devices))))

    def _entry(self, key: str) -> dict[str, Any]:
        return self.state.get(key).get("finetune", {})

    def start(self, c: Candidate) -> None:
        device = self.free.pop(0)
        entry = self.state.finetune(c.name)
        run_dir = Path(entry.get("run_dir") or self.runs / c.name)
        epochs = self.epochs_of[c.name]
        resume = (run_dir / "checkpoint").exists() and (run_dir / "config.json").exists()
        fresh = run_spec(c, self.data, run_dir, epochs, self.request.image_size, self.request.finetune_settings,
                         device, resume=False)
        spec = fresh
        if resume:
            spec = run_spec(c, self.data, run_dir, epochs, self.request.image_size, self.request.finetune_settings,
                            device, resume=True)
        else:  # started but never checkpointed: start again
            shutil.rmtree(run_dir, ignore_errors=True)
            _result_path(run_dir).unlink(missing_ok=True)
        entry.update(state="running", run_dir=str(run_dir), device=device, epochs=epochs, command=command_line(fresh))
        self.state.save()
        self.runs.mkdir(parents=True, exist_ok=True)
        spec_file = self.runs / f"{c.name}.spec.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        with open(self.runs / f"{c.name}.log", "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "visionzoo.training.worker", str(spec_file)],
                                       stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                       preexec_fn=_die_with_parent if os.name == "posix" else None)
        self.running[c.name] = (process, device)

    def stop(self, key: str, reason: str) -> None:
        process, device = self.running.pop(key)
        _terminate(process)
        self.free.append(device)
        self.state.finetune(key).update(state="stopped", reason=reason)
        self.state.save()

    def poll(self, key: str) -> None:
        """Read run `key`'s report: halve it at a rung, or record how it ended."""
        process, device = self.running[key]
        entry = self.state.finetune(key)
        code = process.poll()  # before the report: a worker that has exited has written its last one
        report = run_result(entry["run_dir"])
        self.curves[key] = _curve(report)
        self.progress(key, max(self.curves[key], default=0), entry["epochs"])
        verdict = halving_verdict(key, self.curves, entry["epochs"], self.num_val)
        if verdict and code is None:
            epoch, mine, leader = verdict
            self.stop(key, f"stopped at epoch {epoch} of {entry['epochs']} by successive halving: val top-1 "
                           f"{100 * mine:.1f}% below the leader's {100 * leader:.1f}% at the same epoch, by more "
                           "than the selection's standard error")
            return
        if code is None:
            return
        self.running.pop(key)
        self.free.append(device)
        if code == 0 and report.get("state") == "done":
            entry.update(state="done")
        else:
            entry.update(state="failed", reason=f"visionzoo train exited with code {code}; see "
                                                f"{self.runs / (key + '.log')}")
        self.state.save()
        kill_point("after-finetune")

    def spend_budget(self, budget_s: float) -> None:
        """The budget is spent: stop what runs, skip what waits."""
        for key in list(self.running):
            self.stop(key, "stopped: --budget-min spent")
        for c in self.queue:
            self.state.finetune(c.name).update(state="skipped", reason="--budget-min spent before it could start")
        self.queue.clear()

    def shutdown(self) -> None:
        """An exception in the loop: leave the runs resumable, not orphaned."""
        for key in list(self.running):
            process, _ = self.running.pop(key)
            _terminate(process, grace_s=None)


def fine_tune_all(scheduler: FineTuneScheduler, budget_s: float | None) -> None:
    """Run the scheduler's queue to the end or until `budget_s` (counted across reruns) is spent."""
    state = scheduler.state
    used = float(state.data.get("finetune_seconds", 0.0))
    started = time.monotonic()
    spent = lambda: used + time.monotonic() - started  # noqa: E731
    try:
        while scheduler.queue or scheduler.running:
            while scheduler.queue and scheduler.free and (budget_s is None or spent() < budget_s):
                scheduler.start(scheduler.queue.pop(0))
            if not scheduler.running:
                break  # the budget is spent before the rest could start
            time.sleep(0.3)
            for key in list(scheduler.running):
                scheduler.poll(key)
            if budget_s is not None and spent() >= budget_s:
                scheduler.spend_budget(budget_s)
    finally:
        scheduler.shutdown()
        state.data["finetune_seconds"] = spent()
        state.save()


def record_outcomes(finalists: list[Candidate], state: BakeoffState) -> None:
    """Each finalist's run folder, best validation top-1 as its worker reported it, and status."""
    for c in finalists:
        entry = state.get(c.name).get("finetune", {})
        c.run_dir = entry.get("run_dir")
        c.finetune_top1 = run_result(c.run_dir).get("best_top1") if c.run_dir else None
        if entry.get("state") == "done":
            c.status = "fine-tuned"
        else:
            c.status = entry.get("reason") or f"fine-tune {entry.get('state', 'not started')}"
