"""The trainer's side of the head facts: which task a run trains, validation metrics for either
task, and the step after training that fits temperature, thresholds and the OOD rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from visionzoo.errors import SettingError
from visionzoo.heads import OOD_SCORES
from visionzoo.metrics.calibration import calibration_report, fit_head, plot_reliability
from visionzoo.metrics.classification import classification_metrics
from visionzoo.metrics.multilabel import multilabel_metrics

__all__ = ["head_task", "validation_metrics", "fit_run_head", "fit_head_step", "write_calibration", "write_head"]


def head_task(splits, requested, settings) -> str:
    """The run's task (the data's, or `task` when set), with the head settings checked now rather
    than after training; fills the multi-label defaults into `settings` (loss bce; label smoothing
    only when asked for, since the recipes' 0.1 is a cross-entropy default)."""
    task = requested.task or splits.task
    if task not in ("multiclass", "multilabel"):
        raise SettingError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    if task != splits.task:
        raise SettingError(f"task {task!r} does not fit {splits.description}, which is {splits.task} data")
    if settings.ood_score not in OOD_SCORES:
        raise SettingError(f"ood_score must be one of {', '.join(OOD_SCORES)}, got {settings.ood_score!r}")
    if not 0.0 < settings.ood_keep <= 1.0:
        raise SettingError(f"ood_keep (the share of validation images to keep) must be in (0, 1], got {settings.ood_keep}")
    if settings.threshold is not None and not 0.0 < settings.threshold < 1.0:
        raise SettingError(f"threshold must be between 0 and 1, got {settings.threshold}")
    settings.task = task
    if task == "multilabel":
        settings.loss = settings.loss or "bce"
        if settings.loss not in ("bce", "asl"):
            raise SettingError(f"loss must be 'bce' or 'asl' for multi-label data, got {settings.loss!r}")
        if requested.label_smoothing is None:
            settings.label_smoothing = 0.0
    elif settings.loss not in (None, "ce", "cross-entropy"):
        raise SettingError(f"loss {settings.loss!r} is for multi-label data; single-label runs use cross-entropy")
    return task


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], task: str) -> dict[str, Any]:
    """Single-label: `classification_metrics`. Multi-label: mAP and F1 at 0.5 (the tuned thresholds
    come after training)."""
    if task == "multilabel":
        return multilabel_metrics(torch.sigmoid(logits.float()).numpy(), labels.numpy(), None, classes)
    return classification_metrics(logits, labels, classes)


def fit_run_head(metrics: dict[str, Any], task: str, settings) -> dict[str, Any]:
    return fit_head(metrics["_logits"], metrics["_labels"], task, calibrate=settings.calibrate,
                    threshold=settings.threshold, reject=settings.reject, ood_score_name=settings.ood_score,
                    keep=settings.ood_keep)


def fit_head_step(run) -> None:
    """After training (`after.TrainedRun`): the head facts fitted on the best model's validation logits,
    written into best/config.json, with calibration.json and reliability.png in the run folder."""
    task = run.settings.task or "multiclass"
    if run.validation is None:
        write_head(run.best_dir, {"task": task})
        return
    head = fit_run_head(run.validation, task, run.settings)
    write_head(run.best_dir, head)
    write_calibration(run.run_dir, run.validation, head, task)


def write_calibration(run_dir: Path, metrics: dict[str, Any], head: dict[str, Any], task: str,
                      say: Callable[[str], None] = print) -> None:
    """calibration.json (ECE and NLL before and after temperature scaling) and reliability.png, on validation."""
    temperature = float(head.get("temperature") or 1.0)
    report = calibration_report(metrics["_logits"], metrics["_labels"], temperature, task)
    report["head"] = head
    (Path(run_dir) / "calibration.json").write_text(json.dumps(report, indent=2))
    plot_reliability(metrics["_logits"], metrics["_labels"], temperature, Path(run_dir) / "reliability.png", task=task)
    line = (f"calibration on validation: temperature {temperature:.3f}, ECE {report['ece_before']:.4f} -> "
            f"{report['ece_after']:.4f}, NLL {report['nll_before']:.4f} -> {report['nll_after']:.4f}")
    if head.get("ood"):
        line += f"; unknown below {head['ood']['score']} {head['ood']['threshold']:.3f} (keeps {head['ood']['keep']:.0%})"
    say(line)


def write_head(folder: Path, head: dict[str, Any]) -> None:
    """Put the head facts into an exported model folder's config.json (best/ is written at its epoch,
    before they are known), atomically."""
    from visionzoo.files import atomic_write, jsonable

    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config["head"] = jsonable(head)
    atomic_write(path, (json.dumps(config, indent=2) + "\n").encode())
