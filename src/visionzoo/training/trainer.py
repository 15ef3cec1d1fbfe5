"""The training loop: `train(model_or_name, data, **settings)`.

One function runs on CPU, one GPU or many under `torchrun` (DistributedDataParallel; the
batch size is global and split across processes, so a recipe means the same thing on any
number of devices). Rank 0 logs, validates and writes checkpoints; the others wait.

Never losing work: a checkpoint is written every `checkpoint_every` optimizer steps and at each
epoch end (see `checkpoint.py`); `resume=RUN_DIR` restores model, optimizer, schedule, scaler,
EMA, RNG states and the position in the epoch and continues exactly where the run stopped.
Ctrl-C writes a checkpoint and returns; a non-finite loss stops the run with
`NonFiniteLossError`, leaving the last good checkpoint in place.

The parts, each in its own module and tested alone:

- `data.loaders.build_loaders`: the training and validation loaders;
- `model.build_model`: the network, its head and what is frozen (extension point);
- `losses.build_loss`: the loss from the settings (extension point);
- `state.RunState`: everything a checkpoint saves, made before the loop;
- `step.train_step`: one optimizer step (accumulation, AMP, clipping, schedule, Lookahead, EMA),
  timed per phase through a `step.PhaseTimer` (extension point);
- `hooks`: `CheckpointHook`, `BestModelTracker` (early stopping), `RunLogger`;
- `after.after_training_steps`: steps on the best model once training ends (extension point).

This module joins them: `_Trainer.__init__` resolves settings, device, run folder and model,
`_Trainer.run` builds the loaders and the `RunState`, then loops over epochs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file

import visionzoo
from visionzoo.data.cache import cache_photos, plan_cache, uint8_eval_view
from visionzoo.data.datasets import ImageDataset, Skipped, collate_skipping
from visionzoo.data.loaders import build_loaders, cache_size, cache_splits, default_workers, scan_splits
from visionzoo.data.sources import DataSplits, resolve_data
from visionzoo.data.transforms import batch_mixer, eval_transform
from visionzoo.errors import SettingError
from visionzoo.evaluation import predict_logits
from visionzoo.factory import data_config as model_data_config
from visionzoo.factory import registered_name, save_model
from visionzoo.metrics.calibration import with_head
from visionzoo.metrics.classification import reports_top_k
from visionzoo.metrics.multilabel import plot_per_class_ap
from visionzoo.runtime import tune_allocator
from visionzoo.training.adapt import adapter_facts, apply_adaptation, parameter_counts
from visionzoo.training.after import TrainedRun, after_training_steps
from visionzoo.training.checkpoint import load_checkpoint
from visionzoo.training.distill import DistillTargets, distillation_loss, load_teacher
from visionzoo.training.freeze import set_batchnorm_eval, set_frozen_eval
from visionzoo.training.heads import fit_run_head, head_task, validation_metrics
from visionzoo.training.hooks import BestModelTracker, CheckpointHook, RunLogger
from visionzoo.training.losses import LabelVectorMixer, build_loss
from visionzoo.training.model import build_model
from visionzoo.training.settings import TrainSettings, resolve_settings
from visionzoo.training.state import ExponentialMovingAverage, RunState, new_run_state
from visionzoo.training.step import train_step
from visionzoo.training.timing import MeasuringTimer, plan_threads
from visionzoo.training.transfer import probe_init_head_
from visionzoo.weights.lora import ADAPTER_FILE

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


# --- setup helpers ---------------------------------------------------------------------------


def _start_distributed() -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); True if this call did."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False


def _stop_distributed(succeeded: bool) -> None:
    """Tear down the process group this run started. Ranks meet at a barrier first on success, so no
    rank exits while another still talks to it (gloo aborts the process otherwise)."""
    if dist.is_initialized():
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return 0, 1, 0


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _new_run_dir(out: str | Path | None, model_name: str, data: str) -> Path:
    if out is not None:
        return Path(out)
    data_name = Path(str(data).split("?")[0].replace("builtin:", "")).name.split(".")[0] or "data"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{model_name}-{data_name}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = Path(f"{base}-{n}"), n + 1
    return candidate


# --- the public entry point ---------------------------------------------------------------------


def train(model_or_name: nn.Module | str | None = None, data: str | Path | DataSplits | None = None, *,
          pretrained: bool | str = False, out: str | Path | None = None, resume: str | Path | None = None,
          **settings: Any) -> TrainResult:
    """Train or fine-tune a classifier and return the run's result.

    Args:
        model_or_name: a registered model name (`visionzoo list`) or an `nn.Module` whose
            classifier already has the right number of outputs. May be None with `resume`.
        data: a folder, CSV, tar archive or `builtin:shapes` (see `visionzoo.data.sources`),
            or already resolved `DataSplits`. May be None with `resume`.
        pretrained: weights to start from (see `create_model`), for fine-tuning.
        out: the run folder (default runs/<model>-<data>-<time>).
        resume: a run folder to continue; its saved settings are used, `settings` may extend
            `epochs`.
        **settings: any `TrainSettings` field, e.g. recipe="finetune", epochs=5, lr=1e-3.
    """
    unknown = set(settings) - {f.name for f in dataclasses.fields(TrainSettings)}
    if unknown:
        names = ", ".join(sorted(f.name for f in dataclasses.fields(TrainSettings)))
        raise SettingError(f"unknown training setting(s) {sorted(unknown)}; settings are: {names}")
    resume_state = None
    if resume is not None:
        run_dir = Path(resume)
        config_path = run_dir / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); cannot resume")
        saved = json.loads(config_path.read_text())
        model_or_name = model_or_name if isinstance(model_or_name, nn.Module) else saved["model"]
        if data is None and saved.get("data_in_memory"):
            raise SettingError(f"{run_dir} was trained on data given in memory ({saved['data']}); pass the same "
                             f"data again to resume: visionzoo.train(model, data, resume={str(run_dir)!r})")
        data = data if data is not None else saved["data"]
        pretrained = saved.get("pretrained") or False
        merged = {**saved["requested"], **settings}
        requested = TrainSettings(**merged)
        resume_state = load_checkpoint(run_dir / "checkpoint")
    else:
        if model_or_name is None or data is None:
            raise SettingError("train needs a model and data (or resume=RUN_DIR)")
        requested = TrainSettings(**settings)
        run_dir = None
    tune_allocator()
    started = _start_distributed()
    succeeded = False
    try:
        result = _Trainer(model_or_name, data, pretrained, requested, out, run_dir, resume_state).run()
        succeeded = True
        return result
    finally:
        if started:
            _stop_distributed(succeeded)


class _Trainer:
    """One run. `__init__` resolves the settings, device, seed, run folder and model (with its EMA,
    DDP and compiled wrappers); `run` builds the loaders, the loss and the `RunState`, then loops:
    `_train_epoch` calls `train_step` once per optimizer step and the checkpoint hook when due,
    `_end_epoch` validates, tracks the best model, checkpoints and decides on early stopping, and
    `_finish` exports `last/`, runs the after-training steps and writes plots and summary."""

    def __init__(self, model_or_name, data, pretrained, requested: TrainSettings, out, run_dir, resume_state):
        self.rank, self.world, self.local_rank = _distributed()
        self.is_main = self.rank == 0
        self.requested = requested
        self.pretrained = pretrained
        self.resume_state = resume_state
        self.model_name = model_or_name if isinstance(model_or_name, str) else registered_name(model_or_name)
        self.data_in_memory = isinstance(data, DataSplits)
        self.data_spec = data.description if self.data_in_memory else data

        self.splits = data if isinstance(data, DataSplits) else resolve_data(data, val_fraction=requested.val_fraction,
                                                                             seed=requested.seed, task=requested.task)
        if requested.exclude:  # `visionzoo train --exclude audit/label_issues.csv`
            from visionzoo.data.exclude import exclude_files

            self.splits, _ = exclude_files(self.splits, requested.exclude)
        self.classes = self.splits.classes
        self.settings = s = resolve_settings(requested, self.model_name, native_size=self.splits.native_size,
                                             pretrained=bool(pretrained), num_train=len(self.splits.train),
                                             num_val=len(self.splits.val) if self.splits.val is not None else None)
        self.task = head_task(self.splits, requested, s)  # multiclass | multilabel; checks the head settings
        if s.batch_size % (self.world * s.grad_accum):
            raise SettingError(f"batch size {s.batch_size} must be divisible by processes x grad_accum "
                             f"= {self.world} x {s.grad_accum}")
        self.micro_batch = s.batch_size // (self.world * s.grad_accum)

        if s.device:
            self.device = torch.device(s.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        _seed_everything(s.seed, s.deterministic)

        name = self.model_name or type(model_or_name).__name__.lower()
        self.run_dir = run_dir or _new_run_dir(out, name, str(self.data_spec))
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        model, self.head_names, self.new_head = build_model(model_or_name, len(self.classes), s, pretrained)
        self.adaptation = apply_adaptation(model, s, self.head_names, base_weights=pretrained or None)
        self.head_names = self.adaptation.head_names
        self.data_config = model_data_config(model)
        self.image_size = s.image_size or int(self.data_config["input_size"][-1])
        self.data_config = {**self.data_config, "input_size": (3, self.image_size, self.image_size)}
        if s.augment in ("crop", "none") and not pretrained:
            # Trained on whole images (pad-and-crop keeps the full frame): evaluate on whole images too.
            self.data_config["crop_pct"] = 1.0
        model.to(self.device)
        if s.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = ExponentialMovingAverage(model, s.ema_decay) if s.ema else None
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if self.world > 1 else model
        self.forward_model = torch.compile(self.ddp) if s.compile else self.ddp

        self.autocast_dtype = _autocast_dtype(s.precision, self.device)
        self.mixer = (LabelVectorMixer(s.mixup, s.cutmix) or None) if self.task == "multilabel" \
            else batch_mixer(len(self.classes), s.mixup, s.cutmix)
        self.logger = RunLogger(self.run_dir, self.is_main, s)
        self.checkpoints = CheckpointHook(self.run_dir / "checkpoint", s.checkpoint_every, enabled=self.is_main)
        self.best = BestModelTracker(s.early_stopping, key="mAP" if self.task == "multilabel" else "top1")
        self.phases = MeasuringTimer()  # data, forward/backward, optimizer, validation (and cache, probe)
        self.cache_plan = None
        self.probe_result: dict[str, float] | None = None
        self.teacher = None
        self.train_seconds, self.train_steps = 0.0, 0

    # --- data ---

    def _prepare_data(self) -> dict[str, str]:
        """Build the loaders (`self.data`); returns the unreadable files found by --scan and --cache."""
        s = self.settings
        train_samples, val_samples = self.splits.train, self.splits.val
        bad_files: dict[str, str] = {}
        if s.scan and self.is_main:
            for label, bad in scan_splits({"train": train_samples, "val": val_samples}).items():
                samples = train_samples if label == "train" else val_samples
                bad_files.update((item.path, item.reason) for item in bad)
                self.logger.print(f"scan: {len(samples) - len(bad)} of {len(samples)} {label} images decode, {len(bad)} bad")
            self._write_bad_files(bad_files)
        # Inference batches of 64 at 224 px hold about 1 GB in EfficientNet's widest early layers (on
        # top of the model); 32 keeps a small fine-tune's peak memory under 2 GB.
        self.val_batch = max(self.micro_batch * s.grad_accum, 32)
        photo_cache = bool(s.cache) and s.augment != "crop"
        if photo_cache:
            # Large photos: decoded once at the size this run needs (room for RandomResizedCrop; the
            # validation view cut once), augmented as uint8 arrays; in memory when they fit.
            with self.phases.phase("cache"):
                if self.world > 1 and self.rank != 0:
                    dist.barrier()  # let rank 0 build a memory-mapped cache first
                self.cache_plan = plan_cache(train_samples, val_samples, self.image_size,
                                             float(self.data_config.get("crop_pct", 0.875)), s.augment, s.cache_size)
                decoders = s.workers if s.workers is not None else default_workers(train_samples)
                train_samples, val_samples, bad = cache_photos(train_samples, val_samples, self.cache_plan,
                                                               workers=decoders)
                if self.world > 1 and self.rank == 0:
                    dist.barrier()
            bad_files.update((item.path, item.reason) for item in bad)
        elif s.cache:
            size = cache_size(self.image_size, self.data_config, s.cache_size)
            train_samples, val_samples, bad = cache_splits(train_samples, val_samples, size, rank=self.rank,
                                                           world=self.world)
            bad_files.update((item.path, item.reason) for item in bad)
        self.data = build_loaders(
            train_samples, val_samples, data_config=self.data_config, image_size=self.image_size,
            batch_size=self.micro_batch, val_batch_size=self.val_batch, augment=s.augment,
            crop_padding_px=s.crop_padding, alternate_flip=s.alternate_flip, balanced=s.class_balance == "sampler",
            num_classes=len(self.classes), workers=s.workers, seed=s.seed, device=self.device, rank=self.rank,
            world=self.world, photo_cache=photo_cache)
        # intra-op threads plus loader workers stay within the cores (restored when the run ends)
        self.workers = s.workers if s.workers is not None else default_workers(train_samples)
        self.threads = plan_threads(self.workers, torch.get_num_threads())
        torch.set_num_threads(self.threads)
        self.batches_per_epoch = self.data.batches_per_epoch
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / s.grad_accum)
        return bad_files

    def _note_bad_file(self, path: str, reason: str) -> bool:
        """Record a file the loader skipped and say so, once per file; True if it was new."""
        if path in self.state.bad_files:
            return False
        self.state.bad_files[path] = reason
        self.logger.print(f"skipped {path}: {reason}")
        return True

    def _write_bad_files(self, bad_files: dict[str, str]) -> None:
        if self.is_main and bad_files:
            lines = [f"{path}\t{reason}" for path, reason in sorted(bad_files.items())]
            (self.run_dir / "bad_files.txt").write_text("\n".join(lines) + "\n")

    def _micro_batches(self, batches: Iterator, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor] | None]:
        """The next `count` micro-batches from the loader, on the device, normalised and mixed (None for
        one whose images were all skipped); unreadable files are noted as they come."""
        s = self.settings
        for _ in range(count):
            with self.phases.phase("data"):
                images, labels, _, skipped = next(batches)
            new = [item for item in skipped if self._note_bad_file(item.path, item.reason)]
            if new:
                self._write_bad_files(self.state.bad_files)
            if not len(labels):
                yield None
                continue
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            keys = self.teacher.keys(images) if self.teacher is not None and self.teacher.cache is not None else None
            if self.data.normalize is not None:
                images = self.data.normalize(images)
            if s.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = labels
            if self.mixer is not None:
                images, targets = self.mixer(images, labels)
            if self.teacher is not None:
                targets = DistillTargets(targets, self.teacher.logits(images, keys))
            yield images, targets

    # --- the loop ---

    def run(self) -> TrainResult:
        s = self.settings
        threads = torch.get_num_threads()
        try:
            bad_files = self._prepare_data()
            if s.probe_init and self.new_head and self.resume_state is None:
                self._probe_init()
            self.loss_fn = build_loss(s, self.data.train_samples.labels, len(self.classes), self.device)
            if s.teacher:
                self.teacher = load_teacher(s.teacher, num_classes=len(self.classes), classes=self.classes,
                                            device=self.device, student_config=self.data_config, cache=s.teacher_cache)
                self.loss_fn = distillation_loss(self.loss_fn, s)
            self.state: RunState = new_run_state(self.model, s, classes=self.classes, head_names=self.head_names,
                                                 steps_per_epoch=self.steps_per_epoch, device=self.device,
                                                 autocast_dtype=self.autocast_dtype, ema=self.ema)
            state = self.state
            state.bad_files.update(bad_files)
            start_epoch, batches_done = 0, 0
            if self.resume_state is not None:
                state.restore(*self.resume_state)
                start_epoch, batches_done = state.epoch, state.batches_done
                if batches_done >= self.batches_per_epoch:
                    start_epoch, batches_done = start_epoch + 1, 0
            if self.is_main:
                self._write_config()
                if self.resume_state is None:
                    self.logger.print(self._describe())
                else:
                    self.logger.print(f"resuming {self.run_dir} at epoch {start_epoch + 1}, step {state.global_step}")
            interrupted = False
            try:
                for epoch in range(start_epoch, s.epochs):
                    self._train_epoch(epoch, batches_done)
                    batches_done = 0
                    stop = self._end_epoch(epoch)
                    if stop:
                        break
            except KeyboardInterrupt:
                interrupted = True
                # the loss is checked every few steps only: never overwrite a good checkpoint with broken weights
                if all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                    self.checkpoints.save(state)
                    self.checkpoints.flush()
                    self.logger.print(f"interrupted: saved a checkpoint at epoch {state.epoch + 1}, step "
                                      f"{state.global_step}; continue with: visionzoo train --resume {self.run_dir}")
                else:
                    self.logger.print(f"interrupted with non-finite weights: kept the last good checkpoint in "
                                      f"{self.run_dir / 'checkpoint'}")
            self.checkpoints.flush()
            if self.is_main and not interrupted:
                self._finish()
            result = TrainResult(self.run_dir, state.best_metric, state.best_epoch, state.history, interrupted,
                                 [Skipped(p, r) for p, r in sorted(state.bad_files.items())])
            if self.is_main:
                best = f"{state.best_metric:.2%} (epoch {state.best_epoch + 1})" if state.best_metric is not None else "n/a"
                self.logger.close()
                metric = "mAP" if self.task == "multilabel" else "top-1"
                print(f"run folder: {self.run_dir}  best val {metric}: {best}", flush=True)  # stdout, for scripts
            return result
        finally:
            torch.set_num_threads(threads)
            self.logger.close()
            with contextlib.suppress(Exception):  # an error of its own was raised by flush() above
                self.checkpoints.flush()

    def _probe_init(self) -> None:
        """LP-FT's probe phase: the new head starts from a logistic regression on the training embeddings
        (evaluation view, one forward pass)."""
        view = (uint8_eval_view(self.data_config, self.image_size, cache_size(self.image_size, self.data_config))
                if self.data.normalize is not None else eval_transform(self.data_config, self.image_size))
        loader = torch.utils.data.DataLoader(ImageDataset(self.data.train_samples, view), batch_size=self.val_batch,
                                             num_workers=self.workers, collate_fn=collate_skipping)
        with self.phases.phase("probe"):
            self.probe_result = probe_init_head_(self.model, self.head_names, loader, len(self.classes),
                                                 device=self.device, normalize=self.data.normalize,
                                                 autocast_dtype=self.autocast_dtype)
        if self.is_main:
            self.logger.print(f"probe init (LP-FT): the new head starts from a linear probe on the "
                              f"{len(self.data.train_samples)} training embeddings (train top-1 "
                              f"{self.probe_result['probe_train_top1']:.2%}) in {self.phases.totals['probe']:.1f} s")

    def _describe(self) -> str:
        s = self.settings
        return (f"training {self.model_name or type(self.model).__name__} on {self.splits.description}: "
                f"{len(self.data.train_set)} train / {len(self.data.val_set) if self.data.val_set else 0} val images, "
                f"{len(self.classes)} classes, {s.recipe} recipe ({s.optimizer}, lr {s.lr:.3g}, "
                f"{s.epochs} epochs of batch {s.batch_size}, {self.image_size}px, augment {s.augment}), "
                f"{self.world} process(es) on {self.device.type}; {self.adaptation.describe(self.model)}"
                + (f"; distilling from {self.teacher.description} ({s.distill})" if self.teacher is not None else ""))

    def _write_config(self) -> None:
        config = {
            "model": self.model_name,
            "data": str(self.data_spec),
            "data_in_memory": self.data_in_memory,
            "pretrained": self.pretrained,
            "classes": self.classes,
            "requested": {k: v for k, v in dataclasses.asdict(self.requested).items()},
            "resolved": {k: v for k, v in self.settings.as_dict().items() if k != "sources"},
            "settings_source": self.settings.sources,
            "new_head": ({"init": "linear probe (LP-FT)" if self.settings.probe_init else
                          ("zeros" if self.settings.head_init_std == 0 else f"normal(0, {self.settings.head_init_std})")}
                         if self.new_head else None),
            "frozen_parameters": sum(not p.requires_grad for p in self.model.parameters()),
            "cache": dataclasses.asdict(self.cache_plan) if self.cache_plan is not None else None,
            "threads": {"intra_op": self.threads, "loader_workers": self.workers},
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
            "world_size": self.world,
            "visionzoo_version": visionzoo.__version__,
            "torch_version": torch.__version__,
        }
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))

    def _train_epoch(self, epoch: int, batches_done: int) -> None:
        s, state = self.settings, self.state
        state.epoch, state.batches_done = epoch, batches_done
        self.data.sampler.set_position(epoch, batches_done * self.micro_batch)
        self.ddp.train()
        if s.freeze_backbone:
            self.model.eval()  # frozen BatchNorm statistics stay frozen
        elif s.freeze_stages is not None:
            set_frozen_eval(self.model)  # and those of frozen stages
        self.adaptation.start_epoch(self.model, epoch)
        if s.freeze_bn:
            set_batchnorm_eval(self.model)
        self.phases.start_epoch()
        self.logger.start_epoch(epoch, s.epochs, self.batches_per_epoch, batches_done)
        started, seen, images_seen = time.perf_counter(), 0, 0
        # The loss is summed on the device and read back (a host-device sync) only at log steps,
        # before checkpoints and at the epoch's end: a sync per step would stall a fast GPU.
        loss_sum = torch.zeros((), device=self.device)
        loss_mean, checked_step = float("nan"), state.global_step
        state.optimizer.zero_grad(set_to_none=True)
        batches = iter(self.data.train)
        micro = batches_done
        while micro < self.batches_per_epoch:
            micro_steps = min(s.grad_accum, self.batches_per_epoch - micro)  # fewer at the epoch's end
            images = train_step(state, self._micro_batches(batches, micro_steps), self.loss_fn,
                                grad_accum=s.grad_accum, micro_steps=micro_steps, clip_grad=s.clip_grad,
                                autocast_dtype=self.autocast_dtype, forward=self.forward_model,
                                ddp=self.ddp if self.world > 1 else None, loss_sum=loss_sum, phases=self.phases)
            micro += micro_steps
            images_seen += images
            seen += images * self.world
            state.batches_done = micro
            log = state.global_step % s.log_every == 0
            checkpoint = self.checkpoints.due(state.global_step, micro, self.batches_per_epoch)
            if log or checkpoint or state.global_step == 1:
                loss_mean = self._checked_loss(loss_sum, images_seen, epoch, checked_step)
                checked_step = state.global_step
            elapsed = time.perf_counter() - started
            record = {"step": state.global_step, "epoch": epoch + 1, "loss": loss_mean,
                      "lr": state.optimizer.param_groups[-1]["lr"], "img_per_s": seen / max(elapsed, 1e-9),
                      "log": log}
            self.logger.step(record, s.grad_accum)
            if checkpoint:
                self.checkpoints.save(state)
        self.epoch_train_loss = self._checked_loss(loss_sum, images_seen, epoch, checked_step)
        self.epoch_speed = seen / max(time.perf_counter() - started, 1e-9)
        self.train_seconds += time.perf_counter() - started
        self.train_steps += math.ceil((micro - batches_done) / s.grad_accum)

    def _checked_loss(self, loss_sum: torch.Tensor, count: int, epoch: int, checked_step: int) -> float:
        """The epoch's mean training loss so far, read back from the device; raises NonFiniteLossError
        (on every rank) when any loss since the last check was NaN or infinite. Called before every
        checkpoint, so a checkpoint never holds weights updated by a non-finite loss."""
        bad = (~torch.isfinite(loss_sum)).float()
        if self.world > 1:
            dist.all_reduce(bad)
        if bad.item():
            step = self.state.global_step
            steps = f"step {step}" if step - checked_step <= 1 else f"between steps {checked_step + 1} and {step}"
            with contextlib.suppress(Exception):
                self.checkpoints.flush()  # the last good checkpoint, if one is in flight, is on disk before we say so
            saved = self.run_dir / "checkpoint"
            kept, then = ((f"{saved} keeps the last good state", f", then --resume {self.run_dir}") if saved.exists()
                          else ("no checkpoint had been written yet", ""))
            raise NonFiniteLossError(
                f"the loss became {float(loss_sum)} at epoch {epoch + 1}, {steps}; the run stopped and {kept}. "
                f"Try a lower learning rate (now {self.settings.lr:.3g}), --clip-grad 1.0 or --precision fp32{then}")
        return float(loss_sum) / max(count, 1)

    def _validate(self, model: nn.Module | None = None) -> dict[str, Any] | None:
        """Metrics of `model` (default: the EMA, else the live model) on the validation data, with
        "_logits", "_labels" and "_indices"; None without validation data."""
        if self.data.val is None:
            return None
        if model is None:
            model = self.ema.module if self.ema is not None else self.model
        if self.data.normalize is not None:
            model = nn.Sequential(self.data.normalize, model)
        logits, labels, indices, skipped = predict_logits(model, self.data.val, device=self.device,
                                                          tta_flip=self.settings.tta_flip,
                                                          tta_shift=self.settings.tta_shift,
                                                          autocast_dtype=self.autocast_dtype,
                                                          channels_last=self.settings.channels_last)
        for item in skipped:
            self.state.bad_files.setdefault(item.path, item.reason)
        if len(labels) == 0:
            return None
        metrics = validation_metrics(logits, labels, self.classes, self.task)
        metrics["_logits"], metrics["_labels"], metrics["_indices"] = logits, labels, indices
        return metrics

    def _end_epoch(self, epoch: int) -> bool:
        s, state = self.settings, self.state
        stop = False
        if self.world > 1:  # bad files met by any rank's loader reach rank 0's bad_files.txt
            found: list[dict[str, str]] = [{} for _ in range(self.world)]
            dist.all_gather_object(found, state.bad_files)
            for bad in found[1:]:
                for path, reason in bad.items():
                    self._note_bad_file(path, reason)
        if self.is_main:
            # --val-every N validates every Nth epoch and the last; best/ is only judged on validated epochs
            skip_validation = (self.data.val is not None and (epoch + 1) % s.val_every != 0
                               and epoch + 1 < s.epochs)
            with self.phases.phase("validation"):
                metrics = None if skip_validation else self._validate()
            record = {"epoch": epoch + 1, "step": state.global_step, "train_loss": round(self.epoch_train_loss, 6),
                      "lr": state.optimizer.param_groups[-1]["lr"], "img_per_s": round(self.epoch_speed, 1)}
            multilabel = self.task == "multilabel"
            if metrics is not None:
                self.last_val = metrics
                if multilabel:
                    record.update(val_loss=round(metrics["loss"], 6), val_map=round(metrics["mAP"], 6),
                                  val_micro_f1=round(metrics["micro_f1"], 6), val_macro_f1=round(metrics["macro_f1"], 6))
                else:
                    record.update(val_loss=round(metrics["loss"], 6), val_top1=round(metrics["top1"], 6),
                                  **({"val_top5": round(metrics["top5"], 6)} if "top5" in metrics else {}),
                                  val_ece=round(metrics["ece"], 6))
            improved = self.best.update(state, epoch, metrics)
            state.history.append(record)
            if metrics is None:
                shown = ""
            elif multilabel:
                shown = (f"val loss {record['val_loss']:.4f}  val mAP {record['val_map']:.2%}  "
                         f"micro F1 {record['val_micro_f1']:.2%}  ")
            else:
                shown = (f"val loss {record['val_loss']:.4f}  val top-1 {record['val_top1']:.2%}  "
                         + (f"top-5 {record['val_top5']:.2%}  " if "val_top5" in record else ""))
            line = (f"epoch {epoch + 1}/{s.epochs}  train loss {record['train_loss']:.4f}  " + shown
                    + f"{record['img_per_s']:.0f} img/s" + ("  *best*" if improved else "")
                    + "  " + MeasuringTimer.line(self.phases.epoch))
            columns = ["epoch", "step", "train_loss", "lr", "img_per_s"]
            if self.data.val is not None:
                columns += (["val_loss", "val_map", "val_micro_f1", "val_macro_f1"] if multilabel else
                            ["val_loss", "val_top1", *(["val_top5"] if reports_top_k(len(self.classes)) else []),
                             "val_ece"])
            self.logger.epoch(record, line, columns)
            exported = self.ema.module if self.ema is not None else self.model
            if improved or (metrics is None and not skip_validation):
                save_model(exported, self.run_dir / "best", class_names=self.classes, data_config=self.data_config)
            state.batches_done = self.batches_per_epoch
            self.checkpoints.save(state)
            self._write_bad_files(state.bad_files)
            if self.best.should_stop(state):
                unit = "epochs" if s.val_every == 1 else f"validations (one every {s.val_every} epochs)"
                metric = "mAP" if self.task == "multilabel" else "top-1"
                self.logger.print(f"early stopping: val {metric} has not improved for {state.stale_epochs} {unit}")
                stop = True
        if self.world > 1:
            flag = torch.tensor(float(stop), device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def _finish(self) -> None:
        state = self.state
        exported = self.ema.module if self.ema is not None else self.model
        # last/ carries the head facts fitted on its own (the last) validation; best/ gets its own from
        # the after-training step (heads.fit_head_step).
        last_val = getattr(self, "last_val", None)
        with_head(exported, fit_run_head(last_val, self.task, self.settings) if last_val is not None
                       else {"task": self.task})
        save_model(exported, self.run_dir / "last", class_names=self.classes, data_config=self.data_config)
        if not (self.run_dir / "best").exists():
            save_model(exported, self.run_dir / "best", class_names=self.classes, data_config=self.data_config)
        steps = after_training_steps(self.settings)
        if steps:
            self._after_training(steps)
        if self.task == "multilabel":
            if self.settings.plots and self.best.best_val is not None:
                plot_per_class_ap(self.best.best_val["per_class"], self.run_dir / "per_class_ap.png",
                                  f"validation, mAP {self.best.best_val['mAP']:.2%}")
        elif self.settings.plots:
            from visionzoo.training.report import write_plots

            best = self.best.best_val
            if best is None and state.best_metric is not None:  # resumed after the best epoch: evaluate again
                best = self._validate()
            write_plots(self.run_dir, state.history, best, self.classes, self.data.val_set, self.data_config,
                        model=exported)
        # the metric that chose best/: top-1, or mAP for multi-label runs (whose top-1 is not defined)
        metric = "val_map" if self.task == "multilabel" else "val_top1"
        summary = {f"best_{metric}": state.best_metric, "best_metric": metric, "best_epoch": None if state.best_epoch is None else state.best_epoch + 1,
                   "epochs": len(state.history), "history": state.history,
                   "bad_files": len(state.bad_files), "time": self.phases.summary(), **self._cost_summary()}
        self.logger.print(f"adapt {summary['adapt']}: {summary['trainable_params']:,} of {summary['total_params']:,} "
                          f"parameters trained, peak memory {summary['peak_memory_mb']:.0f} MB, "
                          f"{summary['step_time_s']:.3f} s per step"
                          + (f", adapter and head {summary['adapter_bytes'] / 1e6:.2f} MB" if "adapter_bytes" in summary else ""))
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.logger.print("run " + MeasuringTimer.line(self.phases.totals))

    def _cost_summary(self) -> dict[str, Any]:
        """What the run cost: trainable parameters, peak memory (the process's peak RSS on a CPU, peak
        allocated memory on a GPU), mean seconds per optimizer step (this process's steps), and the
        saved adapter's size and the teacher's cache use when they apply."""
        import resource

        trainable, total = parameter_counts(self.model)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
        summary = {"adapt": self.adaptation.method, "trainable_params": trainable, "total_params": total,
                   "grad_checkpointing": self.adaptation.grad_checkpointing, "peak_memory_mb": round(peak, 1),
                   "step_time_s": round(self.train_seconds / max(self.train_steps, 1), 4)}
        adapter = self.run_dir / "best" / ADAPTER_FILE
        if adapter.exists():
            summary["adapter_bytes"] = adapter.stat().st_size
        if self.teacher is not None:
            summary["distill"] = {"method": self.settings.distill, **self.teacher.stats()}
        return summary

    def _after_training(self, steps) -> None:
        """Run `after.after_training_steps` on the best model, loaded back from best/, and its validation."""
        best_dir = self.run_dir / "best"
        # best/'s weights in a copy of the trained module: any nn.Module, registered or the user's own
        model = copy.deepcopy(self.ema.module if self.ema is not None else self.model).eval()
        adapted = adapter_facts(model) is not None  # best/ holds only the adapter and the head
        model.load_state_dict(load_file(best_dir / (ADAPTER_FILE if adapted else "model.safetensors")), strict=not adapted)
        # The best epoch's validation, when this process ran it, is of exactly the exported weights.
        validation = self.best.best_val if self.best.best_val is not None else self._validate(model)
        run = TrainedRun(run_dir=self.run_dir, best_dir=best_dir, model=model, validation=validation,
                         classes=self.classes, data_config=self.data_config, settings=self.settings)
        for step in steps:
            step(run)
