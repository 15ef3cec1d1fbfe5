"""The end of a run: `finish_run` exports last/ (and best/ when no epoch was validated), runs the
after-training steps, writes the plots and summary.json.

Steps run once training ends, on the best model and the validation data.

Extension point: `after_training_steps(settings)` lists them, chosen from the settings. Today:
`heads.fit_head_step`, which fits temperature scaling, per-class decision thresholds (multi-label)
and the unknown rule (single-label) and writes them into best/'s config.json. Each step is given a
`TrainedRun` (the best model with its weights loaded back from `best/`, its validation logits
and labels) and may write what it fits next to the model in `best/`. The trainer runs them on rank 0, after
`best/` and `last/` are exported and before the plots and `summary.json`; with no steps,
nothing is loaded or evaluated.
"""

from __future__ import annotations

import copy
import json
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file

from visionzoo.factory import save_model
from visionzoo.metrics.calibration import with_head
from visionzoo.metrics.multilabel import plot_per_class_ap
from visionzoo.training.adapt import adapter_facts, parameter_counts
from visionzoo.training.heads import fit_run_head
from visionzoo.training.hooks import RunLogger
from visionzoo.training.prepare import PreparedRun
from visionzoo.training.settings import TrainSettings
from visionzoo.training.state import RunState
from visionzoo.training.timing import MeasuringTimer
from visionzoo.weights.lora import ADAPTER_FILE

__all__ = ["TrainedRun", "AfterTrainingStep", "after_training_steps", "finish_run", "cost_summary"]

Validate = Callable[[nn.Module | None], dict[str, Any] | None]  # metrics of a model (None: the run's) on validation


@dataclass
class TrainedRun:
    """What each step after training is given."""

    run_dir: Path
    best_dir: Path  # the best model's export (run_dir / "best")
    model: nn.Module  # that model (best/'s weights in a copy of the trained module), in eval mode, on the device
    validation: dict[str, Any] | None  # its metrics on the validation data (`evaluate.classification_metrics`)
    # with "_logits", "_labels" and "_indices" (dataset order); None when the run has no validation data
    classes: list[str]
    data_config: dict[str, Any]
    settings: TrainSettings


AfterTrainingStep = Callable[[TrainedRun], None]


def after_training_steps(settings: TrainSettings) -> list[AfterTrainingStep]:
    """The steps to run after training with `settings`, in order."""
    from visionzoo.training.heads import fit_head_step

    steps: list[AfterTrainingStep] = [fit_head_step]  # always: best/ at least records its task
    return steps


def finish_run(run: PreparedRun, state: RunState, *, best_val: dict[str, Any] | None,
               last_val: dict[str, Any] | None, validate: Validate, val_set: Any, logger: RunLogger,
               phases: MeasuringTimer, cost: dict[str, Any], stopped_early: str | None = None) -> None:
    """On rank 0 after the last epoch: last/ (with the head facts fitted on its own, the last,
    validation; best/ gets its own from `heads.fit_head_step`), best/ if no epoch wrote one, the
    after-training steps, plots and summary.json. `best_val`: the best epoch's validation when this
    process ran it; `cost`: `cost_summary`'s numbers; `stopped_early`: why early stopping ended the
    run before its last epoch (summary.json's `stopped_early`), None when it ran them all."""
    exported = run.exported
    with_head(exported, fit_run_head(last_val, run.task, run.settings) if last_val is not None
              else {"task": run.task})
    save_model(exported, run.run_dir / "last", classes=run.classes, preprocessing=run.data_config)
    if not (run.run_dir / "best").exists():
        save_model(exported, run.run_dir / "best", classes=run.classes, preprocessing=run.data_config)
    steps = after_training_steps(run.settings)
    if steps:
        _after_training(run, steps, best_val, validate)
    if run.task == "multilabel":
        if run.settings.plots and best_val is not None:
            plot_per_class_ap(best_val["per_class"], run.run_dir / "per_class_ap.png",
                              f"validation, mAP {best_val['mAP']:.2%}")
    elif run.settings.plots:
        from visionzoo.training.report import write_plots

        best = best_val
        if best is None and state.best_metric is not None:  # resumed after the best epoch: evaluate again
            best = validate(None)
        write_plots(run.run_dir, state.history, best, run.classes, val_set, run.data_config, model=exported)
    # the metric that chose best/: top-1, or mAP for multi-label runs (whose top-1 is not defined)
    metric = "val_map" if run.task == "multilabel" else "val_top1"
    summary = {f"best_{metric}": state.best_metric, "best_metric": metric,
               "best_epoch": None if state.best_epoch is None else state.best_epoch + 1,
               "epochs": len(state.history), "history": state.history,
               "bad_files": len(state.bad_files), "time": phases.summary(), **cost}
    if stopped_early:
        summary["stopped_early"] = stopped_early
    if best_val is not None and "balanced_accuracy" in best_val:  # the tail's view of the best epoch
        summary["best_val_balanced_accuracy"] = best_val["balanced_accuracy"]
    best_record = next((r for r in state.history if state.best_epoch is not None and r["epoch"] == state.best_epoch + 1),
                       {})
    if "weights" in best_record:  # --ema: whether best/ holds the EMA or the raw weights (`validate_beside_ema`)
        summary["best_weights"] = best_record["weights"]
    adapter = run.run_dir / "best" / ADAPTER_FILE
    if adapter.exists():
        summary["adapter_bytes"] = adapter.stat().st_size
    logger.print(f"adapt {summary['adapt']}: {summary['trainable_params']:,} of {summary['total_params']:,} "
                 f"parameters trained, peak memory {summary['peak_memory_mb']:.0f} MB, "
                 f"{summary['step_time_s']:.3f} s per step"
                 + (f", adapter and head {summary['adapter_bytes'] / 1e6:.2f} MB" if "adapter_bytes" in summary else ""))
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.print("run " + MeasuringTimer.line(phases.totals))


def cost_summary(run: PreparedRun, *, train_seconds: float, train_steps: int, teacher: Any | None) -> dict[str, Any]:
    """What the run cost: trainable parameters, peak memory (the process's peak RSS on a CPU, peak
    allocated memory on a GPU), mean seconds per optimizer step (this process's steps), and the
    teacher's cache use when there is one."""
    trainable, total = parameter_counts(run.model)
    if run.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(run.device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    summary = {"adapt": run.adaptation.method, "trainable_params": trainable, "total_params": total,
               "grad_checkpointing": run.adaptation.grad_checkpointing, "peak_memory_mb": round(peak, 1),
               "step_time_s": round(train_seconds / max(train_steps, 1), 4)}
    if teacher is not None:
        summary["distill"] = {"method": run.settings.distill, **teacher.stats()}
    return summary


def _after_training(run: PreparedRun, steps: list[AfterTrainingStep], best_val: dict[str, Any] | None,
                    validate: Validate) -> None:
    """Run `steps` on the best model, loaded back from best/, and its validation."""
    best_dir = run.run_dir / "best"
    # best/'s weights in a copy of the trained module: any nn.Module, registered or the user's own
    model = copy.deepcopy(run.exported).eval()
    adapted = adapter_facts(model) is not None  # best/ holds only the adapter and the head
    model.load_state_dict(load_file(best_dir / (ADAPTER_FILE if adapted else "model.safetensors")), strict=not adapted)
    # The best epoch's validation, when this process ran it, is of exactly the exported weights.
    validation = best_val if best_val is not None else validate(model)
    trained = TrainedRun(run_dir=run.run_dir, best_dir=best_dir, model=model, validation=validation,
                         classes=run.classes, data_config=run.data_config, settings=run.settings)
    for step in steps:
        step(trained)
