"""One training run in its own process, described by a JSON file: `python -m visionzoo.training.worker SPEC.json`.

A parent that runs several trainings at once (the bake-off) writes a run spec and starts this;
the worker trains and writes what happened to the spec's result file, atomically, after every
validated epoch and at the end, so the parent reads one JSON file and never the run's own outputs.

The spec:

    {"model": "convnext_atto", "pretrained": "convnext_atto.fb_in1k" or a weight file,
     "data": "DIR, CSV or builtin:...", "run_dir": "OUT/runs/convnext_atto",
     "resume": false,                  # true: continue run_dir from its checkpoint (model and data unused)
     "settings": {"recipe": "auto", "epochs": 6, "val_every": 2, "device": "cpu", ...},  # TrainSettings fields
     "result": "OUT/runs/convnext_atto.result.json"}

The result: {"state": "running" | "done" | "interrupted" | "failed", "run_dir": ..., "curve": {"2": 0.61, ...}
(validation top-1 by epoch), "best_top1": ..., "best_epoch": ..., "error": "..." (failed only)}. A resumed
run keeps the curve its earlier attempts wrote. Exit codes are `visionzoo train`'s: 0 finished, 3 the
loss became non-finite, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from visionzoo.files import atomic_write_json

__all__ = ["command_line", "run_spec"]


class _ResultFile:
    """The spec's result file, rewritten whole after every change."""

    def __init__(self, spec: dict[str, Any]):
        self.path = Path(spec["result"])
        self.data: dict[str, Any] = {"state": "running", "run_dir": spec["run_dir"], "curve": {},
                                     "best_top1": None, "best_epoch": None}
        if spec.get("resume") and self.path.is_file():
            self.data["curve"] = json.loads(self.path.read_text()).get("curve", {})

    def epoch(self, record: dict[str, Any]) -> None:
        if record.get("val_top1") is None:
            return  # not validated this epoch (--val-every)
        curve = self.data["curve"]
        curve[str(record["epoch"])] = record["val_top1"]
        best = max(curve, key=lambda epoch: curve[epoch])
        self.update(best_top1=curve[best], best_epoch=int(best))

    def update(self, **changes: Any) -> None:
        self.data.update(changes)
        atomic_write_json(self.path, self.data)


def run_spec(spec: dict[str, Any]) -> int:
    """Train as `spec` says, keeping its result file current; returns the exit code."""
    from visionzoo.resolve import parse_pretrained
    from visionzoo.training.trainer import NonFiniteLossError, train

    result_file = _ResultFile(spec)
    result_file.update()
    settings = dict(spec.get("settings", {}))
    try:
        if spec.get("resume"):
            result = train(None, None, resume=spec["run_dir"], on_epoch=result_file.epoch, **settings)
        else:
            result = train(spec["model"], spec["data"], pretrained=parse_pretrained(spec.get("pretrained")) or False,
                           out=spec["run_dir"], on_epoch=result_file.epoch, **settings)
    except NonFiniteLossError as error:
        result_file.update(state="failed", error=str(error))
        return 3
    if result.interrupted:
        result_file.update(state="interrupted")
        return 130
    best_epoch = None if result.best_epoch is None else result.best_epoch + 1
    result_file.update(state="done", best_top1=result.best_metric, best_epoch=best_epoch)
    return 0


def command_line(spec: dict[str, Any]) -> list[str]:
    """The `visionzoo train` arguments that run the spec's training (a fresh start; settings that
    belong to this machine, device and progress, left out): the command to show people."""
    argv = ["train", "--model", spec["model"], "--pretrained", spec["pretrained"], "--data", spec["data"]]
    settings = spec.get("settings", {})
    for key in ("recipe", "epochs", "val_every"):  # the run's shape first, as people read it
        if key in settings:
            argv += ["--" + key.replace("_", "-"), str(settings[key])]
    argv += ["--out", spec["run_dir"]]
    for key, value in settings.items():
        if key in ("recipe", "epochs", "val_every", "device", "progress"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m visionzoo.training.worker SPEC.json", file=sys.stderr)
        return 2
    return run_spec(json.loads(Path(args[0]).read_text()))


if __name__ == "__main__":
    sys.exit(main())
