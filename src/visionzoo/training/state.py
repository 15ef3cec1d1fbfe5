"""`RunState`: everything a checkpoint holds, made once before the loop.

The trainer changes a run only through its `RunState` (the model, optimizer, schedule, scaler,
EMA and Lookahead, the counters, the history and the best metric so far) and the global RNGs.
`RunState.checkpoint()` turns exactly that into what `checkpoint.py` writes, and
`RunState.restore()` puts it back, so a run resumed from a checkpoint continues bit for bit
where it stopped. Anything not here is rebuilt from the settings on resume.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import visionzoo
from visionzoo.errors import SettingError
from visionzoo.training.optim import Lookahead, build_optimizer, build_schedule
from visionzoo.training.settings import TrainSettings

__all__ = ["RunState", "new_run_state", "ExponentialMovingAverage", "rng_state", "set_rng_state"]


class ExponentialMovingAverage:
    """Weights averaged as `ema = decay * ema + (1 - decay) * weights` after each optimizer step;
    buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) generators' states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunState:
    """A run's state, as checkpoints save it.

    `epoch` and `batches_done` are the position: the epoch in progress (from 0) and how many of
    its micro-batches this process has trained on (`batches_done` equal to the epoch's length
    means the epoch is done). `global_step` counts optimizer steps. `best_metric` (validation
    top-1), `best_epoch` and `stale_epochs` (validations without improvement) are kept by
    `hooks.BestModelTracker`; `bad_files` maps each unreadable file to the reason.
    `epoch_loss_sum` and `epoch_images` are the epoch in progress's summed training loss and image
    count up to `batches_done` (the loop sets them before each checkpoint), so a resumed epoch's
    `train_loss` is the mean over the whole epoch, as in a run never stopped.
    """

    model: nn.Module  # the bare model (not the DDP or compiled wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    settings: TrainSettings  # saved for the record; resume rebuilds from config.json
    classes: list[str]
    ema: ExponentialMovingAverage | None = None
    lookahead: Lookahead | None = None
    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)
    epoch_loss_sum: float = 0.0
    epoch_images: int = 0

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(model weights, everything else) as `CheckpointWriter.submit` takes them; the global RNG
        states are read now. Tensors are the live ones: the writer copies them at once."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_images": self.epoch_images,
            "global_step": self.global_step,
            "rng": rng_state(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "history": self.history,
            "classes": self.classes,
            "settings": self.settings.as_dict(),
            "bad_files": self.bad_files,
            "visionzoo_version": visionzoo.__version__,
        }
        return self.model.state_dict(), state

    def restore(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Load a checkpoint (`checkpoint.load_checkpoint`'s pair) into this state and set the global
        RNGs to the moment it was saved. Raises ValueError when the checkpoint's classes differ."""
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        if self.lookahead is not None and state.get("lookahead") is not None:
            self.lookahead.load_state_dict(state["lookahead"])
        self.global_step = state["global_step"]
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        self.stale_epochs = state["stale_epochs"]
        self.history = state["history"]
        self.bad_files.update(state.get("bad_files", {}))
        if state["classes"] != self.classes:
            raise SettingError(f"the data's classes {self.classes[:5]}... differ from the checkpoint's "
                             f"{state['classes'][:5]}...; resume with the same data")
        set_rng_state(state["rng"])
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        # checkpoints of version 0.2 and before: the resumed epoch's loss counts its own steps only
        self.epoch_loss_sum, self.epoch_images = state.get("epoch_loss_sum", 0.0), state.get("epoch_images", 0)


def new_run_state(model: nn.Module, settings: TrainSettings, *, classes: list[str], head_names: set[str],
                  steps_per_epoch: int, device: torch.device, autocast_dtype: torch.dtype | None = None,
                  ema: ExponentialMovingAverage | None = None) -> RunState:
    """A fresh run's state: the optimizer (`optim.build_optimizer`), a schedule over
    `settings.epochs * steps_per_epoch` steps, the AMP scaler (active for fp16 only) and Lookahead
    when set. `ema`, when the run keeps one, is made by the caller right after the model (where
    the trainer always made it: before DDP and compilation wrap the model)."""
    optimizer = build_optimizer(model, settings, head_names)
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = settings.warmup_steps if settings.warmup_steps is not None else \
        int(round(settings.warmup_epochs * steps_per_epoch))  # the transfer recipes count it in steps
    scheduler = build_schedule(optimizer, total_steps, warmup_steps,
                               settings.min_lr_ratio, settings.schedule, warmup_start_ratio=settings.warmup_start_ratio)
    lookahead = Lookahead(model, settings.lookahead, settings.lookahead_decay, total_steps) if settings.lookahead else None
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    return RunState(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, settings=settings,
                    classes=classes, ema=ema, lookahead=lookahead)
