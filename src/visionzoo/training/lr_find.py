"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's `lr_find`):
`lr_find(model_or_run, data, **settings)`.

The run's own recipe trains for a few hundred optimizer steps at most (fewer on a small set) while
the learning rate grows exponentially from `start_lr` to `end_lr`; the loss is smoothed (an
exponential moving average, bias-corrected) and the sweep stops early once it diverges (four times
its lowest value). The suggestion is the rate where the smoothed loss falls fastest against
log(lr), before its minimum, and at least 3x below the minimum's rate: large enough to learn
quickly, short of where training blows up. It is the peak rate of the head's parameter group, what `--lr` sets; the other
groups keep their ratios (`--head-lr-scale`, `--layer-decay`), as in training.

The sweep trains a copy: a module passed in, a run folder and its saved models are left as they
were. The curve is written as a plot with the suggestion marked (`lr_find.png`) and as numbers
(`lr_find.json`).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.training.freeze import set_batchnorm_eval, set_frozen_eval
from visionzoo.training.hooks import BadFileLog, RunLogger
from visionzoo.training.losses import build_loss
from visionzoo.training.prepare import PreparedRun, RunData, prepare_data, prepare_run
from visionzoo.training.settings import TrainSettings
from visionzoo.training.state import new_run_state
from visionzoo.training.step import train_step
from visionzoo.training.timing import MeasuringTimer

__all__ = ["LRFindResult", "lr_find", "lr_sweep", "sweep_steps", "smooth_losses", "suggest_lr", "plot_lr_curve"]

DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this many times its lowest value


@dataclass
class LRFindResult:
    suggested_lr: float  # pass as --lr (lr= in Python)
    lrs: list[float]  # the head group's rate at each step
    losses: list[float]  # the raw training loss of each step
    smoothed: list[float]
    plot: Path  # lr_find.png
    folder: Path  # where lr_find.png and lr_find.json are

    @property
    def flag(self) -> str:
        return f"--lr {self.suggested_lr:.2g}"


def sweep_steps(steps_per_epoch: int, steps: int | None = None) -> int:
    """A few hundred steps at most; on a small set about five epochs' worth, at least 30 (a curve needs points)."""
    if steps is not None:
        if steps < 5:
            raise SettingError(f"lr-find needs at least 5 steps, not {steps}")
        return steps
    return int(min(200, max(30, 5 * steps_per_epoch)))


def smooth_losses(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (Adam's correction: the first values are not pulled to 0)."""
    average, smoothed = 0.0, []
    for index, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** index))
    return smoothed


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """The rate of the steepest descent of the smoothed loss against log(lr), before its minimum. The
    first tenth of the curve is left out (the average is still settling there); a curve that does not
    fall before its minimum gives a tenth of the rate at its lowest point (the rule of thumb of Smith's
    range test)."""
    values = np.asarray(smoothed, dtype=float)
    if not np.isfinite(values).any():
        raise SettingError("every loss of the learning-rate sweep was NaN or infinite; lower --start-lr")
    values = np.where(np.isfinite(values), values, np.inf)
    skip = max(1, len(values) // 10) if len(values) > 10 else 0
    lowest = skip + int(np.argmin(values[skip:]))
    if lowest - skip < 2:
        return float(lrs[lowest]) / 10
    slopes = np.gradient(values[: lowest + 1], np.log10(np.asarray(lrs[: lowest + 1], dtype=float)))
    steepest = skip + int(np.argmin(slopes[skip:]))
    if slopes[steepest] >= 0:
        return float(lrs[lowest]) / 10
    # a sharp drop just before the loss turns up is the edge of divergence, not a rate to train at
    return min(float(lrs[steepest]), float(lrs[lowest]) / 3)


def plot_lr_curve(lrs: list[float], losses: list[float], smoothed: list[float], suggested: float, path: Path,
                  title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(lrs, losses, color="0.8", linewidth=1, label="loss")
    axis.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed")
    at = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(suggested))))
    axis.axvline(suggested, color="tab:red", linestyle="--", linewidth=1)
    axis.plot([suggested], [smoothed[at]], "o", color="tab:red", label=f"suggested --lr {suggested:.2g}")
    finite = [v for v in smoothed if math.isfinite(v)]
    if finite:  # the divergence at the end would squash the useful part of the curve
        axis.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), DIVERGED * min(finite) + 1e-3) * 1.05)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (head group)")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def lr_find(model_or_run: nn.Module | str | Path, data: Any = None, *, pretrained: bool | str = False,
            out: str | Path | None = None, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int | None = None,
            **settings: Any) -> LRFindResult:
    """Sweep the learning rate over a short training run and suggest one.

    Args:
        model_or_run: a registered model name (with `pretrained`), an `nn.Module` (a copy trains), or
            a run folder (its model, weights and settings; `settings` override them; `data` defaults
            to its data).
        data: what `visionzoo.train` takes.
        out: the folder for lr_find.png and lr_find.json (default: the run folder given, else
            runs/lr-find-MODEL-TIME).
        start_lr, end_lr: the sweep's range; steps: its length (default `sweep_steps`).
        **settings: any `TrainSettings` field, as for `visionzoo.train` (the recipe, batch size, ...).
    """
    if not 0 < start_lr < end_lr:
        raise SettingError(f"the sweep needs 0 < start lr < end lr, not {start_lr:g} and {end_lr:g}")
    model_or_name, data, pretrained, requested, default_out = _what_to_sweep(model_or_run, data, pretrained, settings)
    folder = Path(out) if out is not None else default_out
    with tempfile.TemporaryDirectory(prefix="visionzoo-lr-find-") as scratch:
        run = prepare_run(model_or_name, data, pretrained, requested, None, Path(scratch) / "run")
        logger = RunLogger(run.run_dir, False, run.settings)
        run_data = prepare_data(run, logger, BadFileLog(run.run_dir, logger), MeasuringTimer())
        count = sweep_steps(run_data.steps_per_epoch, steps)
        lrs, losses = _sweep(run, run_data, start_lr, end_lr, count)
    while losses and not math.isfinite(losses[-1]):  # the step that overflowed says nothing more
        lrs, losses = lrs[:-1], losses[:-1]
    if len(losses) < 3:
        raise SettingError(f"the loss diverged within {len(losses) + 1} steps of the sweep; lower --start-lr "
                           f"(now {start_lr:g})")
    beta = min(0.98, 1 - 4 / len(losses)) if len(losses) > 4 else 0.0
    smoothed = smooth_losses(losses, beta)
    suggested = suggest_lr(lrs, smoothed)
    folder.mkdir(parents=True, exist_ok=True)
    name = run.model_name or type(run.model).__name__
    plot = plot_lr_curve(lrs, losses, smoothed, suggested, folder / "lr_find.png",
                         f"{name}, {run.settings.recipe} recipe, batch {run.settings.batch_size}")
    (folder / "lr_find.json").write_text(json.dumps(
        {"suggested_lr": suggested, "flag": f"--lr {suggested:.2g}", "model": name, "data": run.data_spec,
         "recipe_lr": run.settings.lr, "start_lr": start_lr, "end_lr": end_lr, "steps": len(lrs),
         "lrs": lrs, "losses": losses, "smoothed": smoothed}, indent=1))
    return LRFindResult(suggested, lrs, losses, smoothed, plot, folder)


def _what_to_sweep(model_or_run, data, pretrained, settings: dict[str, Any]):
    """(model or name, data, pretrained, settings, default output folder) of the sweep."""
    import dataclasses

    unknown = set(settings) - {f.name for f in dataclasses.fields(TrainSettings)}
    if unknown:
        raise SettingError(f"unknown training setting(s) {sorted(unknown)}; see visionzoo.TrainSettings")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if isinstance(model_or_run, nn.Module):
        return (copy.deepcopy(model_or_run), data, pretrained, TrainSettings(**settings),
                Path("runs") / f"lr-find-{type(model_or_run).__name__.lower()}-{stamp}")
    path = Path(model_or_run)
    config_path = path / "config.json"
    if path.is_dir() and config_path.exists() and "requested" in (saved := json.loads(config_path.read_text())):
        if saved.get("model") is None:
            raise SettingError(f"{path} trained a network of the user's own; pass that module to "
                               "visionzoo.lr_find in Python")
        if data is None and saved.get("data_in_memory"):
            raise SettingError(f"{path} was trained on data given in memory; pass the data again")
        requested = {k: v for k, v in saved["requested"].items() if k not in ("sources", "extra")}
        return (saved["model"], data if data is not None else saved["data"], saved.get("pretrained") or False,
                TrainSettings(**{**requested, **settings}), path)
    if path.is_dir():
        raise SettingError(f"{path} is not a training run folder (no config.json with its settings); give a run "
                           "folder or a registered model name with --pretrained")
    if data is None:
        raise SettingError("lr-find needs --data for a model name")
    return str(model_or_run), data, pretrained, TrainSettings(**settings), Path("runs") / f"lr-find-{path.name}-{stamp}"


def _set_train_modes(run: PreparedRun) -> None:
    """The training modes of the run's first epoch, as the trainer sets them."""
    s = run.settings
    run.model.train()
    if s.freeze_backbone:
        run.model.eval()
    elif s.freeze_stages is not None:
        set_frozen_eval(run.model)
    run.adaptation.start_epoch(run.model, 0)
    if s.freeze_bn:
        set_batchnorm_eval(run.model)


def lr_sweep(step: Callable[[float], float], start_lr: float, end_lr: float, steps: int) -> tuple[list[float], list[float]]:
    """(lr, loss) of each call `step(lr) -> loss` (one optimizer step at that rate), the rate growing
    exponentially from `start_lr` to `end_lr` over `steps`; stops early at a non-finite loss or once
    the loss (lightly smoothed) exceeds `DIVERGED` times its lowest."""
    lrs: list[float] = []
    losses: list[float] = []
    best, average = math.inf, 0.0
    for index in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (index / max(steps - 1, 1))
        loss = float(step(lr))
        lrs.append(lr)
        losses.append(loss)
        average = 0.9 * average + 0.1 * loss
        smoothed = average / (1 - 0.9 ** len(losses))
        best = min(best, smoothed)
        if not math.isfinite(loss) or (len(losses) > 5 and smoothed > DIVERGED * best):
            break
    return lrs, losses


def _sweep(run: PreparedRun, data: RunData, start_lr: float, end_lr: float, steps: int) -> tuple[list[float], list[float]]:
    """`lr_sweep` over the run's own training steps (its optimizer, loss, accumulation, precision and clipping)."""
    s, loaders = run.settings, data.loaders
    loss_fn = build_loss(s, loaders.train_samples.labels, len(run.classes), run.device)
    state = new_run_state(run.model, s, classes=run.classes, head_names=run.head_names,
                          steps_per_epoch=data.steps_per_epoch, device=run.device, autocast_dtype=run.autocast_dtype)
    state.lookahead = None
    _set_train_modes(run)
    position = {"epoch": 0}
    batches = _epoch_batches(run, data, 0)

    def next_batch():
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            position["epoch"] += 1
            batches = _epoch_batches(run, data, position["epoch"])
            batch = next(batches)
        return batch

    def step(lr: float) -> float:
        # each group at lr x its scale (the head's is 1): every group keeps its ratio to the head's, as in
        # training (the schedule that train_step advances is overruled here before every step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        micro = [next_batch() for _ in range(s.grad_accum)]
        loss_sum = torch.zeros((), device=run.device)
        images = train_step(state, iter(micro), loss_fn, grad_accum=s.grad_accum, micro_steps=len(micro),
                            clip_grad=s.clip_grad, autocast_dtype=run.autocast_dtype, forward=run.forward_model,
                            loss_sum=loss_sum)
        return float(loss_sum) / max(images, 1)

    return lr_sweep(step, start_lr, end_lr, steps)


def _epoch_batches(run: PreparedRun, data: RunData, epoch: int):
    """The training micro-batches of `epoch`, on the device and normalised (mixup and cutmix are left out:
    the sweep reads the plain loss)."""
    loaders = data.loaders
    loaders.sampler.set_position(epoch, 0)
    for images, labels, _, _ in loaders.train:
        if not len(labels):
            continue
        images, labels = images.to(run.device), labels.to(run.device)
        if loaders.normalize is not None:
            images = loaders.normalize(images)
        if run.settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, labels
