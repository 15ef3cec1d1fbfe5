"""The trainer's hooks, each small enough to test alone: `CheckpointHook` (when and how a
checkpoint is written), `BestModelTracker` (best validation top-1 and early stopping),
`RunLogger` (progress bar, metrics files, TensorBoard, an MLflow or W&B tracker) and `BadFileLog` (unreadable files).

They keep no training state of their own that a resume would need: what must survive a kill
lives in the `RunState` they are handed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from visionzoo.training.checkpoint import CheckpointWriter
from visionzoo.training.settings import TrainSettings
from visionzoo.training.state import RunState
from visionzoo.training.tracking import open_tracker

__all__ = ["CheckpointHook", "BestModelTracker", "RunLogger", "BadFileLog"]


class CheckpointHook:
    """Checkpoints into `folder` every `every` optimizer steps within an epoch (None or 0: never)
    and wherever the trainer calls `save` (each epoch's end, Ctrl-C), on rank 0 only.

    `save` copies the state at once and a background thread writes it (`CheckpointWriter`); `flush`
    waits for that write and raises its error, if any."""

    def __init__(self, folder: Path, every: int | None, enabled: bool = True):
        self.folder, self.every, self.enabled = Path(folder), every, enabled
        self.writer = CheckpointWriter()

    def due(self, global_step: int, batches_done: int, batches_per_epoch: int) -> bool:
        """Whether the step just taken gets a mid-epoch checkpoint (the epoch's end writes its own)."""
        return bool(self.every) and global_step % self.every == 0 and batches_done < batches_per_epoch

    def save(self, state: RunState) -> None:
        if self.enabled:
            weights, rest = state.checkpoint()
            self.writer.submit(self.folder, state.global_step, weights, rest)

    def flush(self) -> None:
        self.writer.flush()


class BestModelTracker:
    """The best validation top-1 so far, and early stopping after `patience` validations without
    improvement (None or 0: never). The counters live in the `RunState` (they are checkpointed);
    `best_val` holds the best validation's metrics (with logits) of this process's run, None after a
    resume until the run improves again."""

    def __init__(self, patience: int | None, key: str = "top1"):
        self.patience = patience
        self.key = key  # the metric judged: top1, or mAP for multi-label runs
        self.best_val: dict[str, Any] | None = None

    def update(self, state: RunState, epoch: int, metrics: dict[str, Any] | None) -> bool:
        """Record epoch `epoch`'s validation (`metrics`, None when the epoch was not validated);
        True when it is the best so far."""
        if metrics is None:
            return False
        if state.best_metric is None or metrics[self.key] > state.best_metric:
            state.best_metric, state.best_epoch, state.stale_epochs = metrics[self.key], epoch, 0
            self.best_val = metrics
            return True
        state.stale_epochs += 1
        return False

    def should_stop(self, state: RunState) -> bool:
        return bool(self.patience) and state.stale_epochs >= self.patience


class RunLogger:
    """Rank-0 output: progress bar, epoch lines, metrics files (`metrics_steps.jsonl`,
    `metrics_epochs.csv`), TensorBoard. On other ranks (`enabled=False`) every method does nothing."""

    # The bar's loss is the epoch's running mean, read from the device sum at most this often: a
    # read is a host-device sync, which a fast GPU would feel at every step.
    LOSS_READ_EVERY_S = 0.5

    def __init__(self, run_dir: Path, enabled: bool, settings: TrainSettings):
        self.enabled = enabled
        self.closed = False
        self.run_dir = run_dir
        self.tensorboard = None
        self.tracker = None
        self.progress = None
        self.task = None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(stderr=True)
        # --track mlflow | wandb: opened first, so that an unreachable server stops the run before it starts
        self.tracker = open_tracker(settings.track, run_dir, settings.track_uri)
        self.steps_file = open(run_dir / "metrics_steps.jsonl", "a")
        if settings.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.console.print("tensorboard is not installed; skipping TensorBoard logs (pip install tensorboard)")
        if settings.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[speed]:>7.0f} img/s"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[stats]}"), console=self.console, transient=True,
                                     disable=not self.console.is_terminal)  # a log file gets no bar (nor its blank line)
        self.shown_loss, self.loss_read_at = float("nan"), 0.0

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.progress is not None:
            if self.task is None:
                self.progress.start()
                self.task = self.progress.add_task("", total=total, speed=0.0, stats="")
            # nothing is shown for the loss and lr until the epoch's first step has them
            self.progress.reset(self.task, total=total, completed=done, description=f"epoch {epoch + 1}/{epochs}",
                                speed=0.0, stats="")
            self.shown_loss, self.loss_read_at = float("nan"), 0.0

    def step(self, record: dict[str, Any], advance: int) -> None:
        if not self.enabled:
            return
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=advance, speed=record.get("img_per_s", 0.0),
                                 stats=self._stats(record))
        if record.get("log"):
            record = {k: v for k, v in record.items() if k not in ("log", "loss_sum", "images")}
            self.steps_file.write(json.dumps(record) + "\n")
            self.steps_file.flush()
            if self.tensorboard is not None:
                self.tensorboard.add_scalar("train/loss", record["loss"], record["step"])
                self.tensorboard.add_scalar("train/lr", record["lr"], record["step"])

    def _stats(self, record: dict[str, Any]) -> str:
        """The bar's "loss L  lr R": the epoch's running loss (from `loss_sum` / `images`, the device sum
        and the image count, when the trainer passes them; else `loss`) and the current lr, from the first step."""
        import math
        import time

        now = time.monotonic()
        if record.get("images") and "loss_sum" in record and (
                math.isnan(self.shown_loss) or now - self.loss_read_at >= self.LOSS_READ_EVERY_S):
            self.shown_loss, self.loss_read_at = float(record["loss_sum"]) / record["images"], now
        elif math.isfinite(record.get("loss", float("nan"))):
            self.shown_loss = record["loss"]
        loss = f"loss {self.shown_loss:.4f}  " if math.isfinite(self.shown_loss) else ""
        return f"{loss}lr {record['lr']:.2e}"

    def epoch(self, record: dict[str, Any], line: str, columns: list[str]) -> None:
        """`columns`: the CSV's, the same every epoch (an epoch left unvalidated has empty val_ cells)."""
        if not self.enabled:
            return
        path = self.run_dir / "metrics_epochs.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            if new:
                writer.writeheader()
            writer.writerow(record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"epoch/{key}", value, record["epoch"])
            self.tensorboard.flush()
        self._track("log_epoch", record)
        self.print(line)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None and self.task is not None:
            self.progress.console.print(line, highlight=False, soft_wrap=True)
        else:
            self.console.print(line, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if not self.enabled or self.closed:
            return
        self.closed = True
        if self.progress is not None and self.task is not None:
            self.progress.stop()
        self.steps_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        # finish_run writes summary.json: without it the run was interrupted or failed
        self._track("finish", (self.run_dir / "summary.json").exists())

    def _track(self, method: str, argument: Any) -> None:
        """Call the tracker; a tracker that fails mid-run is said once and dropped, the run goes on."""
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(argument)
        except Exception as error:  # a tracking server gone away must not cost the run
            self.tracker = None
            self.print(f"experiment tracking stopped: {type(error).__name__}: {error}")


class BadFileLog:
    """The files the loaders could not read: each said once, all listed in bad_files.txt (rank 0).
    The list itself lives in the `RunState` (`bad_files`), which a checkpoint saves."""

    def __init__(self, run_dir: Path, logger: RunLogger):
        self.run_dir, self.logger = run_dir, logger

    def note(self, bad_files: dict[str, str], path: str, reason: str) -> bool:
        """Record `path` in `bad_files` and say so, once per file; True if it was new."""
        if path in bad_files:
            return False
        bad_files[path] = reason
        self.logger.print(f"skipped {path}: {reason}")
        return True

    def write(self, bad_files: dict[str, str]) -> None:
        if self.logger.enabled and bad_files:
            lines = [f"{path}\t{reason}" for path, reason in sorted(bad_files.items())]
            (self.run_dir / "bad_files.txt").write_text("\n".join(lines) + "\n")
