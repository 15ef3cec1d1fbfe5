"""The training loop: `train(model_or_name, data, **settings)`.

One function runs on CPU, one GPU or many under `torchrun` (DistributedDataParallel; the
batch size is global and split across processes, so a recipe means the same thing on any
number of devices). Rank 0 logs, validates and writes checkpoints; the others wait.

Never losing work: a checkpoint is written every `checkpoint_every` optimizer steps and at each
epoch end (see `checkpoint.py`); `resume=RUN_DIR` restores model, optimizer, schedule, scaler,
EMA, RNG states and the position in the epoch and continues exactly where the run stopped (a run
stopped before its first checkpoint starts again from its saved configuration). Ctrl-C writes a
checkpoint and returns; a non-finite loss stops the run with `NonFiniteLossError`, leaving the
last good checkpoint in place; a full disk stops it with `checkpoint.DiskFullError`, likewise.

The parts, each in its own module and tested alone:

- `prepare`: settings, processes, device, run folder (`run_folder`), model and loaders
  (`data.loaders.build_loaders`; the model from `model.build_model`, an extension point);
- `losses.build_loss`: the loss from the settings (extension point);
- `state.RunState`: everything a checkpoint saves, made before the loop;
- `step.train_step`: one optimizer step (accumulation, AMP, clipping, schedule, Lookahead, EMA),
  timed per phase through a `step.PhaseTimer` (extension point);
- `hooks`: `CheckpointHook`, `BestModelTracker` (early stopping), `RunLogger`, `BadFileLog`;
- `validation`: the validation pass and the epoch's record;
- `after.finish_run`: exports, the after-training steps (extension point), plots and summary.

This module holds the loop: `Trainer.run` builds the loss and the `RunState`, then loops over
epochs (`train_epoch`, `end_epoch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from visionzoo.data.datasets import Skipped
from visionzoo.data.samples import DataSplits
from visionzoo.data.transforms import batch_mixer
from visionzoo.errors import SettingError
from visionzoo.factory import save_model
from visionzoo.runtime import tune_allocator
from visionzoo.training.after import cost_summary, finish_run
from visionzoo.training.checkpoint import load_checkpoint
from visionzoo.training.data_init import initialise_from_data, wants_data_init
from visionzoo.training.distill import DistillTargets, distillation_loss, load_teacher
from visionzoo.training.freeze import set_batchnorm_eval, set_frozen_eval
from visionzoo.training.hooks import BadFileLog, BestModelTracker, CheckpointHook, RunLogger
from visionzoo.training.losses import LabelVectorMixer, build_loss
from visionzoo.training.prepare import (
    PreparedRun,
    describe,
    prepare_data,
    prepare_run,
    probe_init,
    start_distributed,
    stop_distributed,
    write_config,
)
from visionzoo.training.run_folder import check_out_folder
from visionzoo.training.settings import TrainSettings
from visionzoo.training.state import ExponentialMovingAverage, new_run_state
from visionzoo.training.step import train_step
from visionzoo.training.timing import MeasuringTimer
from visionzoo.training.validation import epoch_report, validate, validate_beside_ema

__all__ = ["train", "TrainResult", "NonFiniteLossError", "ExponentialMovingAverage"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the broken state."""


@dataclass
class TrainResult:
    run_dir: Path
    best_metric: float | None  # best validation top-1 (0..1); mAP for multi-label runs
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    bad_files: list[Skipped] = field(default_factory=list)


@dataclass
class _Request:
    """What `train` was asked to run, with a resume's saved parts filled in."""

    model_or_name: nn.Module | str
    data: Any
    pretrained: bool | str
    requested: TrainSettings
    run_dir: Path | None = None  # a resumed run's folder
    resume_state: tuple | None = None  # its checkpoint
    restart: bool = False  # resumed, but stopped before its first checkpoint: start again


def train(model_or_name: nn.Module | str | None = None, data: str | Path | DataSplits | None = None, *,
          pretrained: bool | str = False, out: str | Path | None = None, resume: str | Path | None = None,
          overwrite: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None,
          **settings: Any) -> TrainResult:
    """Train or fine-tune a classifier and return the run's result.

    Args:
        model_or_name: a registered model name (`visionzoo list`) or an `nn.Module` whose
            classifier already has the right number of outputs. May be None with `resume`.
        data: a folder, CSV, tar archive or `builtin:shapes` (see `visionzoo.data.sources`),
            or already resolved `DataSplits`. May be None with `resume`.
        pretrained: weights to start from (see `create_model`), for fine-tuning.
        out: the run folder (default runs/<model>-<data>-<time>); refused when it is not empty,
            unless `overwrite`.
        resume: a run folder to continue; its saved settings are used, `settings` may extend
            `epochs`.
        overwrite: replace the run in a non-empty `out` (only the files a run writes are removed).
        on_epoch: called on the main process with each epoch's record (epoch, train_loss, and
            val_top1 or val_map when the epoch was validated), as metrics_epochs.csv gets it.
        **settings: any `TrainSettings` field, e.g. recipe="finetune", epochs=5, lr=1e-3.
    """
    unknown = set(settings) - {f.name for f in dataclasses.fields(TrainSettings)}
    if unknown:
        names = ", ".join(sorted(f.name for f in dataclasses.fields(TrainSettings)))
        raise SettingError(f"unknown training setting(s) {sorted(unknown)}; settings are: {names}")
    if resume is not None:
        request = _resume_request(Path(resume), model_or_name, data, settings)
    else:
        if model_or_name is None or data is None:
            raise SettingError("train needs a model and data (or resume=RUN_DIR)")
        if out is not None:  # every rank checks, before any writes: the process group is not up yet
            check_out_folder(out, overwrite)
        request = _Request(model_or_name, data, pretrained, _requested({}, settings))
    tune_allocator()
    started = start_distributed()
    succeeded = False
    try:
        run = prepare_run(request.model_or_name, request.data, request.pretrained, request.requested,
                          request.run_dir, out, fresh=overwrite or request.restart)
        result = Trainer(run, request.resume_state, on_epoch=on_epoch, restart=request.restart).run()
        succeeded = True
        return result
    finally:
        if started:
            stop_distributed(succeeded)


def _resume_request(run_dir: Path, model_or_name, data, settings: dict[str, Any]) -> _Request:
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); cannot resume")
    saved = json.loads(config_path.read_text())
    model_or_name = model_or_name if isinstance(model_or_name, nn.Module) else saved["model"]
    if data is None and saved.get("data_in_memory"):
        raise SettingError(f"{run_dir} was trained on data given in memory ({saved['data']}); pass the same "
                           f"data again to resume: visionzoo.train(model, data, resume={str(run_dir)!r})")
    restart = not (run_dir / "checkpoint" / "latest.json").exists()
    return _Request(model_or_name, data if data is not None else saved["data"], saved.get("pretrained") or False,
                    _requested(saved["requested"], settings), run_dir,
                    None if restart else load_checkpoint(run_dir / "checkpoint"), restart)


def _requested(saved: dict[str, Any], settings: dict[str, Any]) -> TrainSettings:
    """The settings as asked: a resumed run's saved ones, updated by `settings`; each name the caller gave is
    recorded as "user" in `sources`, so that a value given wins over a named recipe's even where it equals the
    field's default (`--no-tta-flip` against `--recipe cifar-speed`)."""
    named = sorted(k for k, v in settings.items() if v is not None and k not in ("sources", "extra"))
    given = {**saved.get("sources", {}), **dict.fromkeys(named, "user")}
    return TrainSettings(**{**saved, **settings, "sources": given})


class Trainer:
    """The loop of one prepared run. `run` builds the loaders, the loss and the `RunState`, then
    loops: `train_epoch` calls `train_step` once per optimizer step and the checkpoint hook when
    due; `end_epoch` validates, tracks the best model, checkpoints and decides on early stopping;
    `after.finish_run` ends the run."""

    def __init__(self, run: PreparedRun, resume_state: tuple | None = None, *,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None, restart: bool = False):
        self.run_parts, self.resume_state, self.on_epoch, self.restart = run, resume_state, on_epoch, restart
        s = run.settings
        self.mixer = (LabelVectorMixer(s.mixup, s.cutmix) or None) if run.task == "multilabel" \
            else batch_mixer(len(run.classes), s.mixup, s.cutmix)
        self.logger = RunLogger(run.run_dir, run.is_main, s)
        self.bad_log = BadFileLog(run.run_dir, self.logger)
        self.checkpoints = CheckpointHook(run.run_dir / "checkpoint", s.checkpoint_every, enabled=run.is_main)
        self.best = BestModelTracker(s.early_stopping, key="mAP" if run.task == "multilabel" else "top1")
        self.phases = MeasuringTimer()  # data, forward/backward, optimizer, validation (and cache, probe)
        self.teacher = None
        self.last_val: dict[str, Any] | None = None
        self.train_seconds, self.train_steps = 0.0, 0

    def run(self) -> TrainResult:
        run, s = self.run_parts, self.run_parts.settings
        threads = torch.get_num_threads()
        try:
            self.data = prepare_data(run, self.logger, self.bad_log, self.phases)
            if self.resume_state is None and not run.pretrained and wants_data_init(run.model):
                initialise_from_data(run, self.data, self.logger)  # airbench's whitening (training.data_init)
            if s.probe_init and run.new_head and self.resume_state is None:
                probe_init(run, self.data, self.logger, self.phases)
            self.loss_fn = build_loss(s, self.data.loaders.train_samples.labels, len(run.classes), run.device)
            if s.teacher:
                self.teacher = load_teacher(s.teacher, num_classes=len(run.classes), classes=run.classes,
                                            device=run.device, student_config=run.data_config, cache=s.teacher_cache)
                self.loss_fn = distillation_loss(self.loss_fn, s)
            self.state = new_run_state(run.model, s, classes=run.classes, head_names=run.head_names,
                                       steps_per_epoch=self.data.steps_per_epoch, device=run.device,
                                       autocast_dtype=run.autocast_dtype, ema=run.ema)
            self.state.bad_files.update(self.data.bad_files)
            interrupted = self._loop(*self._start())
            self.checkpoints.flush()
            if run.is_main and not interrupted:
                finish_run(run, self.state, best_val=self.best.best_val, last_val=self.last_val,
                           validate=lambda model: self._validate(model), val_set=self.data.loaders.val_set,
                           logger=self.logger, phases=self.phases,
                           cost=cost_summary(run, train_seconds=self.train_seconds, train_steps=self.train_steps,
                                             teacher=self.teacher), stopped_early=self._stopped_early())
            return self._result(interrupted)
        finally:
            torch.set_num_threads(threads)
            self.logger.close()
            with contextlib.suppress(Exception):  # an error of its own was raised by flush() above
                self.checkpoints.flush()

    def _start(self) -> tuple[int, int]:
        """(first epoch, micro-batches of it already done): restores a resumed run's state, writes
        config.json and says how the run starts."""
        run, state = self.run_parts, self.state
        start_epoch, batches_done = 0, 0
        if self.resume_state is not None:
            state.restore(*self.resume_state)
            start_epoch, batches_done = state.epoch, state.batches_done
            if batches_done >= self.data.batches_per_epoch:
                start_epoch, batches_done = start_epoch + 1, 0
        if run.is_main:
            write_config(run, self.data)
            if self.restart:
                self.logger.print(f"{run.run_dir} has no checkpoint (the run stopped before its first one): starting "
                                  f"it again from its saved configuration")
            if self.resume_state is None:
                self.logger.print(describe(run, self.data, self.teacher))
            else:
                self.logger.print(f"resuming {run.run_dir} at epoch {start_epoch + 1}, step {state.global_step}")
        return start_epoch, batches_done

    def _loop(self, start_epoch: int, batches_done: int) -> bool:
        """The epochs; True when Ctrl-C interrupted them."""
        state = self.state
        if start_epoch > 0 and self.best.should_stop(state):  # resumed after the epoch that stopped it early
            if start_epoch < self.run_parts.settings.epochs:
                self.logger.print(f"the run had stopped early ({self._stopped_early()}): nothing more to train; "
                                  f"resume with --early-stopping 0 to train on")
            return False
        try:
            for epoch in range(start_epoch, self.run_parts.settings.epochs):
                self.train_epoch(epoch, batches_done)
                batches_done = 0
                if self.end_epoch(epoch):
                    break
        except KeyboardInterrupt:
            # the loss is checked every few steps only: never overwrite a good checkpoint with broken weights
            if all(bool(torch.isfinite(p).all()) for p in self.run_parts.model.parameters()):
                if state.batches_done < self.data.batches_per_epoch:  # mid-epoch: the sums up to batches_done
                    state.epoch_loss_sum = float(self.epoch_loss)
                self.checkpoints.save(state)
                self.checkpoints.flush()
                self.logger.print(f"interrupted: saved a checkpoint at epoch {state.epoch + 1}, step "
                                  f"{state.global_step}; continue with: visionzoo train --resume "
                                  f"{self.run_parts.run_dir}")
            else:
                self.logger.print(f"interrupted with non-finite weights: kept the last good checkpoint in "
                                  f"{self.run_parts.run_dir / 'checkpoint'}")
            return True
        return False

    def _result(self, interrupted: bool) -> TrainResult:
        run, state = self.run_parts, self.state
        result = TrainResult(run.run_dir, state.best_metric, state.best_epoch, state.history, interrupted,
                             [Skipped(p, r) for p, r in sorted(state.bad_files.items())])
        if run.is_main:
            best = f"{state.best_metric:.2%} (epoch {state.best_epoch + 1})" if state.best_metric is not None else "n/a"
            self.logger.close()
            metric = "mAP" if run.task == "multilabel" else "top-1"
            print(f"run folder: {run.run_dir}  best val {metric}: {best}", flush=True)  # stdout, for scripts
        return result

    # --- one epoch ---

    def _set_modes(self, epoch: int) -> None:
        run, s = self.run_parts, self.run_parts.settings
        run.ddp.train()
        if s.freeze_backbone:
            run.model.eval()  # frozen BatchNorm statistics stay frozen
        elif s.freeze_stages is not None:
            set_frozen_eval(run.model)  # and those of frozen stages
        run.adaptation.start_epoch(run.model, epoch)
        if s.freeze_bn:
            set_batchnorm_eval(run.model)

    def train_epoch(self, epoch: int, batches_done: int) -> None:
        run, s, state = self.run_parts, self.run_parts.settings, self.state
        per_epoch = self.data.batches_per_epoch
        state.epoch, state.batches_done = epoch, batches_done
        self.data.loaders.sampler.set_position(epoch, batches_done * run.micro_batch)
        self._set_modes(epoch)
        self.phases.start_epoch()
        self.logger.start_epoch(epoch, s.epochs, per_epoch, batches_done)
        started, seen = time.perf_counter(), 0
        # The loss is summed on the device and read back (a host-device sync) only at log steps,
        # before checkpoints and at the epoch's end: a sync per step would stall a fast GPU. A resumed
        # epoch goes on from the sums its checkpoint saved.
        resumed = batches_done > 0
        loss_sum = torch.tensor(state.epoch_loss_sum if resumed else 0.0, device=run.device)
        images_seen = state.epoch_images if resumed else 0
        self.epoch_loss = loss_sum  # read by a Ctrl-C checkpoint
        loss_mean, checked_step = float("nan"), state.global_step
        state.optimizer.zero_grad(set_to_none=True)
        batches = iter(self.data.loaders.train)
        micro = batches_done
        while micro < per_epoch:
            micro_steps = min(s.grad_accum, per_epoch - micro)  # fewer at the epoch's end
            images = train_step(state, self._micro_batches(batches, micro_steps), self.loss_fn,
                                grad_accum=s.grad_accum, micro_steps=micro_steps, clip_grad=s.clip_grad,
                                autocast_dtype=run.autocast_dtype, forward=run.forward_model,
                                ddp=run.ddp if run.world > 1 else None, loss_sum=loss_sum, phases=self.phases)
            micro += micro_steps
            images_seen += images
            seen += images * run.world
            state.batches_done, state.epoch_images = micro, images_seen
            log = state.global_step % s.log_every == 0
            checkpoint = self.checkpoints.due(state.global_step, micro, per_epoch)
            if log or checkpoint or state.global_step == 1:
                loss_mean = self._checked_loss(loss_sum, images_seen, epoch, checked_step)
                checked_step = state.global_step
            elapsed = time.perf_counter() - started
            self.logger.step({"step": state.global_step, "epoch": epoch + 1, "loss": loss_mean,
                              "lr": state.optimizer.param_groups[-1]["lr"], "img_per_s": seen / max(elapsed, 1e-9),
                              "log": log, "loss_sum": loss_sum, "images": images_seen}, s.grad_accum)
            if checkpoint:
                state.epoch_loss_sum = float(loss_sum)
                self.checkpoints.save(state)
        self.epoch_train_loss = self._checked_loss(loss_sum, images_seen, epoch, checked_step)
        state.epoch_loss_sum, state.epoch_images = float(loss_sum), images_seen
        self.epoch_speed = seen / max(time.perf_counter() - started, 1e-9)
        self.train_seconds += time.perf_counter() - started
        self.train_steps += math.ceil((micro - batches_done) / s.grad_accum)

    def _micro_batches(self, batches: Iterator, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor] | None]:
        """The next `count` micro-batches from the loader, on the device, normalised and mixed (None for
        one whose images were all skipped); unreadable files are noted as they come."""
        run, normalize = self.run_parts, self.data.loaders.normalize
        for _ in range(count):
            with self.phases.phase("data"):
                images, labels, _, skipped = next(batches)
            new = [item for item in skipped if self.bad_log.note(self.state.bad_files, item.path, item.reason)]
            if new:
                self.bad_log.write(self.state.bad_files)
            if not len(labels):
                yield None
                continue
            images = images.to(run.device, non_blocking=True)
            labels = labels.to(run.device, non_blocking=True)
            teacher = self.teacher
            keys = teacher.keys(images) if teacher is not None and teacher.cache is not None else None
            if normalize is not None:
                images = normalize(images)
            if run.settings.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = labels
            if self.mixer is not None:
                images, targets = self.mixer(images, labels)
            if teacher is not None:
                targets = DistillTargets(targets, teacher.logits(images, keys))
            yield images, targets

    def _checked_loss(self, loss_sum: torch.Tensor, count: int, epoch: int, checked_step: int) -> float:
        """The epoch's mean training loss so far, read back from the device; raises NonFiniteLossError
        (on every rank) when any loss since the last check was NaN or infinite. Called before every
        checkpoint, so a checkpoint never holds weights updated by a non-finite loss."""
        bad = (~torch.isfinite(loss_sum)).float()
        if self.run_parts.world > 1:
            dist.all_reduce(bad)
        if bad.item():
            step = self.state.global_step
            steps = f"step {step}" if step - checked_step <= 1 else f"between steps {checked_step + 1} and {step}"
            with contextlib.suppress(Exception):
                self.checkpoints.flush()  # the last good checkpoint, if one is in flight, is on disk before we say so
            run_dir = self.run_parts.run_dir
            saved = run_dir / "checkpoint"
            kept, then = ((f"{saved} keeps the last good state", f", then --resume {run_dir}") if saved.exists()
                          else ("no checkpoint had been written yet", ""))
            raise NonFiniteLossError(
                f"the loss became {float(loss_sum)} at epoch {epoch + 1}, {steps}; the run stopped and {kept}. "
                f"Try a lower learning rate (now {self.run_parts.settings.lr:.3g}), --clip-grad 1.0 or "
                f"--precision fp32{then}")
        return float(loss_sum) / max(count, 1)

    # --- the epoch's end ---

    def _validate(self, model: nn.Module | None = None) -> dict[str, Any] | None:
        """Metrics of `model` (default: the EMA, else the live model) on the validation data."""
        run = self.run_parts
        metrics, skipped = validate(model if model is not None else run.exported, self.data.loaders,
                                    classes=run.classes, task=run.task, settings=run.settings, device=run.device,
                                    autocast_dtype=run.autocast_dtype)
        for item in skipped:
            self.state.bad_files.setdefault(item.path, item.reason)
        return metrics

    def _gather_bad_files(self) -> None:
        """Bad files met by any rank's loader reach rank 0's bad_files.txt."""
        found: list[dict[str, str]] = [{} for _ in range(self.run_parts.world)]
        dist.all_gather_object(found, self.state.bad_files)
        for bad in found[1:]:
            for path, reason in bad.items():
                self.bad_log.note(self.state.bad_files, path, reason)

    def end_epoch(self, epoch: int) -> bool:
        """Validate, record, keep best/, checkpoint; True when early stopping ends the run."""
        run = self.run_parts
        if run.world > 1:
            self._gather_bad_files()
        stop = self._end_epoch_main(epoch) if run.is_main else False
        if run.world > 1:
            flag = torch.tensor(float(stop), device=run.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def _end_epoch_main(self, epoch: int) -> bool:
        run, s, state = self.run_parts, self.run_parts.settings, self.state
        loaders = self.data.loaders
        # --val-every N validates every Nth epoch and the last; best/ is only judged on validated epochs
        skip_validation = loaders.val is not None and (epoch + 1) % s.val_every != 0 and epoch + 1 < s.epochs
        with self.phases.phase("validation"):  # with an EMA, it and the raw weights: best/ gets the better
            metrics, best_module = (None, run.exported) if skip_validation else validate_beside_ema(
                self._validate, run.model, run.ema.module if run.ema is not None else None, self.best.key)
        if metrics is not None:
            self.last_val = metrics
        improved = self.best.update(state, epoch, metrics)
        record = {"epoch": epoch + 1, "step": state.global_step, "train_loss": round(self.epoch_train_loss, 6),
                  "lr": state.optimizer.param_groups[-1]["lr"], "img_per_s": round(self.epoch_speed, 1)}
        record, line, columns = epoch_report(record, metrics, epochs=s.epochs, task=run.task,
                                             num_classes=len(run.classes), has_val=loaders.val is not None,
                                             improved=improved, phases=self.phases.epoch, ema=run.ema is not None)
        state.history.append(record)
        self.logger.epoch(record, line, columns)
        if self.on_epoch is not None:
            self.on_epoch(record)
        if improved or (metrics is None and not skip_validation):
            save_model(best_module, run.run_dir / "best", classes=run.classes, preprocessing=run.data_config)
        state.batches_done = self.data.batches_per_epoch
        state.epoch_loss_sum, state.epoch_images = 0.0, 0  # the next epoch starts its own sums
        self.checkpoints.save(state)
        self.bad_log.write(state.bad_files)
        if self.best.should_stop(state) and epoch + 1 < s.epochs:
            self.logger.print(f"early stopping: {self._stopped_early()}")
            return True
        return False

    def _stopped_early(self) -> str | None:
        """Why the run ended before its last epoch (patience ran out: `--early-stopping`), or None."""
        run, s, state = self.run_parts, self.run_parts.settings, self.state
        if not state.history or state.history[-1]["epoch"] >= s.epochs or not self.best.should_stop(state):
            return None
        unit = ("epoch" if s.val_every == 1 else "validation") + "s" * (state.stale_epochs > 1) + (
            f" (one every {s.val_every} epochs)" if s.val_every > 1 else "")
        metric = "mAP" if run.task == "multilabel" else "top-1"
        return (f"val {metric} had not improved for {state.stale_epochs} {unit} after epoch {state.epoch + 1} of "
                f"{s.epochs}; best/ holds epoch {state.best_epoch + 1}")
