"""The training loop: `train(model_or_name, data, **settings)`.

One function runs on CPU, one GPU or many under `torchrun` (DistributedDataParallel; the
batch size is global and split across processes, so a recipe means the same thing on any
number of devices). Rank 0 logs, validates and writes checkpoints; the others wait.

Never losing work: a checkpoint is written every `checkpoint_every` optimizer steps and at each
epoch end (see `checkpoint.py`); `resume=RUN_DIR` restores model, optimizer, schedule, scaler,
EMA, RNG states and the position in the epoch and continues exactly where the run stopped.
Ctrl-C writes a checkpoint and returns; a non-finite loss stops the run with
`NonFiniteLossError`, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import visionzoo
from visionzoo.data.datasets import (ImageDataset, ResidentBatches, ResumableSampler, Skipped, cache_pixels,
                                     collate_skipping, scan_files)
from visionzoo.data.sources import ArraySamples, DataSplits, FileSamples, resolve_data
from visionzoo.data.transforms import (NormalizeInput, SeededCropFlip, batch_mixer, crop_padding, eval_transform,
                                       model_data_config, train_transform)
from visionzoo.evaluate import classification_metrics, predict_logits
from visionzoo.training.checkpoint import CheckpointWriter, export_model, load_checkpoint
from visionzoo.training.optim import Lookahead, build_optimizer, build_schedule, head_parameter_names
from visionzoo.training.settings import TrainSettings, resolve_settings

__all__ = ["train", "TrainResult", "NonFiniteLossError", "ExponentialMovingAverage"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the broken state."""


@dataclass
class TrainResult:
    run_dir: Path
    best_metric: float | None  # best validation top-1 (0..1)
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    bad_files: list[Skipped] = field(default_factory=list)


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


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _default_workers(samples) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not isinstance(samples, FileSamples):
        return 0 if cpus <= 2 else min(4, cpus // 2)  # decoded arrays: transforms only
    return max(1, min(8, cpus - 1))


RESIDENT_LIMIT_BYTES = 2 << 30


def _fits_on_device(train: Any, val: Any, device: torch.device) -> bool:
    """Whether the decoded train (and val) arrays can live whole on `device`: at most 2 GiB, and on a
    GPU at most a quarter of its free memory, so the model keeps the rest."""
    if not isinstance(train, ArraySamples) or (val is not None and not isinstance(val, ArraySamples)):
        return False
    size = train.images.nbytes + (val.images.nbytes if val is not None else 0)
    if size > RESIDENT_LIMIT_BYTES:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return size <= free // 4
    return True


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


class _Logger:
    """Rank-0 output: progress bar, epoch lines, metrics files, TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, settings: TrainSettings):
        self.enabled = enabled
        self.closed = False
        self.run_dir = run_dir
        self.tensorboard = None
        self.progress = None
        self.task = None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(stderr=True)
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
                                     TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
                                     console=self.console, transient=True)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.progress is not None:
            if self.task is None:
                self.progress.start()
                self.task = self.progress.add_task("", total=total, speed=0.0, loss=float("nan"), lr=0.0)
            self.progress.reset(self.task, total=total, completed=done, description=f"epoch {epoch + 1}/{epochs}",
                                speed=0.0, loss=float("nan"), lr=0.0)

    def step(self, record: dict[str, Any], advance: int) -> None:
        if not self.enabled:
            return
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=advance, speed=record.get("img_per_s", 0.0),
                                 loss=record["loss"], lr=record["lr"])
        if record.get("log"):
            record = {k: v for k, v in record.items() if k != "log"}
            self.steps_file.write(json.dumps(record) + "\n")
            self.steps_file.flush()
            if self.tensorboard is not None:
                self.tensorboard.add_scalar("train/loss", record["loss"], record["step"])
                self.tensorboard.add_scalar("train/lr", record["lr"], record["step"])

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
        raise ValueError(f"unknown training setting(s) {sorted(unknown)}; settings are: {names}")
    resume_state = None
    if resume is not None:
        run_dir = Path(resume)
        config_path = run_dir / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); cannot resume")
        saved = json.loads(config_path.read_text())
        model_or_name = model_or_name if isinstance(model_or_name, nn.Module) else saved["model"]
        if data is None and saved.get("data_in_memory"):
            raise ValueError(f"{run_dir} was trained on data given in memory ({saved['data']}); pass the same "
                             f"data again to resume: visionzoo.train(model, data, resume={str(run_dir)!r})")
        data = data if data is not None else saved["data"]
        pretrained = saved.get("pretrained") or False
        merged = {**saved["requested"], **settings}
        requested = TrainSettings(**merged)
        resume_state = load_checkpoint(run_dir / "checkpoint")
    else:
        if model_or_name is None or data is None:
            raise ValueError("train needs a model and data (or resume=RUN_DIR)")
        requested = TrainSettings(**settings)
        run_dir = None
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
    def __init__(self, model_or_name, data, pretrained, requested: TrainSettings, out, run_dir, resume_state):
        self.rank, self.world, self.local_rank = _distributed()
        self.is_main = self.rank == 0
        self.requested = requested
        self.pretrained = pretrained
        self.resume_state = resume_state
        self.model_name = model_or_name if isinstance(model_or_name, str) else getattr(model_or_name, "visionzoo_name", None)
        self.data_in_memory = isinstance(data, DataSplits)
        self.data_spec = data.description if self.data_in_memory else data

        self.splits = data if isinstance(data, DataSplits) else resolve_data(data, val_fraction=requested.val_fraction,
                                                                             seed=requested.seed)
        self.classes = self.splits.classes
        self.settings = s = resolve_settings(requested, self.model_name, native_size=self.splits.native_size)
        if s.batch_size % (self.world * s.grad_accum):
            raise ValueError(f"batch size {s.batch_size} must be divisible by processes x grad_accum "
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

        # Model.
        if isinstance(model_or_name, nn.Module):
            model = model_or_name
        else:
            overrides = {}
            if s.drop_path_rate:
                overrides["drop_path_rate"] = s.drop_path_rate
            if s.drop_rate:
                overrides["drop_rate"] = s.drop_rate
            model = visionzoo.create_model(model_or_name, num_classes=len(self.classes),
                                           pretrained=pretrained or False, **overrides)
        if getattr(model, "num_classes", len(self.classes)) != len(self.classes):
            if not hasattr(model, "reset_classifier"):
                raise ValueError(f"the model has {model.num_classes} outputs for {len(self.classes)} classes")
            model.reset_classifier(len(self.classes))
        self.data_config = model_data_config(model)
        self.image_size = s.image_size or int(self.data_config["input_size"][-1])
        self.data_config = {**self.data_config, "input_size": (3, self.image_size, self.image_size)}
        if s.augment in ("crop", "none") and not pretrained:
            # Trained on whole images (pad-and-crop keeps the full frame): evaluate on whole images too.
            self.data_config["crop_pct"] = 1.0
        self.head_names = head_parameter_names(model, len(self.classes))
        if s.freeze_backbone:
            for param_name, parameter in model.named_parameters():
                parameter.requires_grad_(param_name in self.head_names)
        model.to(self.device)
        if s.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = ExponentialMovingAverage(model, s.ema_decay) if s.ema else None
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if self.world > 1 else model
        self.forward_model = torch.compile(self.ddp) if s.compile else self.ddp

        self.autocast_dtype = _autocast_dtype(s.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.mixer = batch_mixer(len(self.classes), s.mixup, s.cutmix)
        self.logger = _Logger(self.run_dir, self.is_main, s)
        self.writer = CheckpointWriter()
        self.bad_files: dict[str, str] = {}

    # --- data ---

    def _prepare_data(self) -> None:
        s = self.settings
        train_samples, val_samples = self.splits.train, self.splits.val
        if s.scan and self.is_main:
            for label, samples in (("train", train_samples), ("val", val_samples)):
                if samples is None:
                    continue
                bad = scan_files(samples, workers=_default_workers(samples))
                for item in bad:
                    self.bad_files[item.path] = item.reason
                self.logger.print(f"scan: {len(samples) - len(bad)} of {len(samples)} {label} images decode, {len(bad)} bad")
            self._write_bad_files()
        if s.cache:
            size = s.cache_size or int(math.floor(self.image_size / float(self.data_config.get("crop_pct", 0.875))))
            cached = []
            for samples in (train_samples, val_samples):
                if samples is None:
                    cached.append(None)
                    continue
                if self.world > 1 and not self.is_main:
                    dist.barrier()  # let rank 0 build the cache first
                array, bad = cache_pixels(samples, size, workers=_default_workers(samples))
                if self.world > 1 and self.is_main:
                    dist.barrier()
                for item in bad:
                    self.bad_files[item.path] = item.reason
                cached.append(array)
            train_samples, val_samples = cached
        # Fast path for the light presets when evaluation does not crop (crop_pct 1): images are
        # fitted to the training size as uint8 (already so in arrays at that size; decoded files
        # are resized and centre-cropped), cropped and flipped per sample, and normalised as a
        # whole batch, on the device.
        def fits(samples) -> bool:
            return isinstance(samples, FileSamples) or (isinstance(samples, ArraySamples) and
                                                        samples.images.shape[1:3] == (self.image_size, self.image_size))

        self.fast_input = (s.augment in ("crop", "none") and fits(train_samples)
                           and (val_samples is None or fits(val_samples))
                           and float(self.data_config.get("crop_pct", 0.875)) == 1.0)
        if self.fast_input:
            padding = crop_padding(self.image_size, s.crop_padding) if s.augment == "crop" else 0
            self.normalize = NormalizeInput(self.data_config["mean"], self.data_config["std"]).to(self.device)
            self.train_set = ImageDataset(train_samples, SeededCropFlip(padding, self.image_size))
            self.val_set = ImageDataset(val_samples, SeededCropFlip(0, self.image_size)) \
                if val_samples is not None and len(val_samples) else None
        else:
            self.normalize = None
            self.train_set = ImageDataset(train_samples, train_transform(self.data_config, s.augment, self.image_size,
                                                                          s.crop_padding))
            self.val_set = ImageDataset(val_samples, eval_transform(self.data_config, self.image_size)) \
                if val_samples is not None and len(val_samples) else None
        weights = None
        counts = np.bincount(train_samples.labels, minlength=len(self.classes)).astype(np.float64)
        self.class_weights = None
        if s.class_balance == "sampler":
            weights = 1.0 / np.maximum(counts, 1)[train_samples.labels]
        elif s.class_balance == "weights":
            self.class_weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(counts), dtype=torch.float32,
                                              device=self.device)
        if s.alternate_flip and not self.fast_input:
            raise ValueError("alternate_flip works with the crop augmentation (augment='crop') and whole-image "
                             f"evaluation; this run uses augment={s.augment!r}")
        self.sampler = ResumableSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                        seed=s.seed, weights=weights, alternate_flip=s.alternate_flip)
        workers = s.workers if s.workers is not None else _default_workers(train_samples)
        val_batch = max(self.micro_batch * s.grad_accum, 64)
        # Decoded arrays that fit are kept whole on the device and augmented a batch at a time
        # (the same batches as the per-sample path); otherwise a DataLoader feeds the device.
        self.resident = self.fast_input and _fits_on_device(train_samples, val_samples, self.device)
        if self.resident:
            padding = self.train_set.transform.padding
            self.loader = ResidentBatches(train_samples, self.micro_batch, sampler=self.sampler, padding=padding,
                                          device=self.device)
        else:
            self.loader = torch.utils.data.DataLoader(
                self.train_set, batch_size=self.micro_batch, sampler=self.sampler, num_workers=workers,
                collate_fn=collate_skipping, pin_memory=self.device.type == "cuda", drop_last=False,
                generator=torch.Generator())  # its own generator: creating an iterator must not draw from the global RNG
        self.val_loader = None
        if self.val_set is not None and self.resident:
            self.val_loader = ResidentBatches(val_samples, val_batch, device=self.device)
        elif self.val_set is not None:
            self.val_loader = torch.utils.data.DataLoader(
                self.val_set, batch_size=val_batch, num_workers=workers,
                collate_fn=collate_skipping, pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = len(self.loader)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / s.grad_accum)

    def _note_bad_file(self, path: str, reason: str) -> bool:
        """Record a file the loader skipped and say so, once per file; True if it was new."""
        if path in self.bad_files:
            return False
        self.bad_files[path] = reason
        self.logger.print(f"skipped {path}: {reason}")
        return True

    def _write_bad_files(self) -> None:
        if self.is_main and self.bad_files:
            lines = [f"{path}\t{reason}" for path, reason in sorted(self.bad_files.items())]
            (self.run_dir / "bad_files.txt").write_text("\n".join(lines) + "\n")

    # --- checkpoints ---

    def _state(self, epoch: int, batches_done: int) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            # tensors as they are: the checkpoint writer copies everything to the CPU at once
            "ema": self.ema.module.state_dict() if self.ema else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "epoch": epoch,
            "batches_done": batches_done,
            "global_step": self.global_step,
            "rng": _rng_state(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "history": self.history,
            "classes": self.classes,
            "settings": self.settings.as_dict(),
            "bad_files": self.bad_files,
            "visionzoo_version": visionzoo.__version__,
        }

    def _checkpoint(self, epoch: int, batches_done: int) -> None:
        """Copies the state now; the writer puts it on disk in the background (`self.writer.flush()` waits)."""
        if self.is_main:
            self.writer.submit(self.run_dir / "checkpoint", self.global_step, self.model.state_dict(),
                               self._state(epoch, batches_done))

    def _restore(self) -> tuple[int, int]:
        weights, state = self.resume_state
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
            raise ValueError(f"the data's classes {self.classes[:5]}... differ from the checkpoint's "
                             f"{state['classes'][:5]}...; resume with the same data")
        _set_rng_state(state["rng"])
        return state["epoch"], state["batches_done"]

    # --- the loop ---

    def run(self) -> TrainResult:
        s = self.settings
        try:
            self._prepare_data()
            self.optimizer = build_optimizer(self.model, s, self.head_names)
            total_steps = s.epochs * self.steps_per_epoch
            self.scheduler = build_schedule(self.optimizer, total_steps, int(round(s.warmup_epochs * self.steps_per_epoch)),
                                            s.min_lr_ratio, s.schedule, warmup_start_ratio=s.warmup_start_ratio)
            self.lookahead = Lookahead(self.model, s.lookahead, s.lookahead_decay, total_steps) if s.lookahead else None
            self.global_step, self.best_metric, self.best_epoch, self.stale_epochs = 0, None, None, 0
            self.history: list[dict[str, Any]] = []
            start_epoch, batches_done = 0, 0
            if self.resume_state is not None:
                start_epoch, batches_done = self._restore()
                if batches_done >= self.batches_per_epoch:
                    start_epoch, batches_done = start_epoch + 1, 0
            if self.is_main:
                self._write_config()
                if self.resume_state is None:
                    self.logger.print(self._describe())
                else:
                    self.logger.print(f"resuming {self.run_dir} at epoch {start_epoch + 1}, step {self.global_step}")
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
                    self._checkpoint(self.current_epoch, self.current_batches)
                    self.writer.flush()
                    self.logger.print(f"interrupted: saved a checkpoint at epoch {self.current_epoch + 1}, step "
                                      f"{self.global_step}; continue with: visionzoo train --resume {self.run_dir}")
                else:
                    self.logger.print(f"interrupted with non-finite weights: kept the last good checkpoint in "
                                      f"{self.run_dir / 'checkpoint'}")
            self.writer.flush()
            if self.is_main and not interrupted:
                self._finish()
            result = TrainResult(self.run_dir, self.best_metric, self.best_epoch, self.history, interrupted,
                                 [Skipped(p, r) for p, r in sorted(self.bad_files.items())])
            if self.is_main:
                best = f"{self.best_metric:.2%} (epoch {self.best_epoch + 1})" if self.best_metric is not None else "n/a"
                self.logger.close()
                print(f"run folder: {self.run_dir}  best val top-1: {best}", flush=True)  # stdout, for scripts
            return result
        finally:
            self.logger.close()
            with contextlib.suppress(Exception):  # an error of its own was raised by flush() above
                self.writer.flush()

    def _describe(self) -> str:
        s = self.settings
        return (f"training {self.model_name or type(self.model).__name__} on {self.splits.description}: "
                f"{len(self.train_set)} train / {len(self.val_set) if self.val_set else 0} val images, "
                f"{len(self.classes)} classes, {s.recipe} recipe ({s.optimizer}, lr {s.lr:.3g}, "
                f"{s.epochs} epochs of batch {s.batch_size}, {self.image_size}px, augment {s.augment}), "
                f"{self.world} process(es) on {self.device.type}")

    def _write_config(self) -> None:
        config = {
            "model": self.model_name,
            "data": str(self.data_spec),
            "data_in_memory": self.data_in_memory,
            "pretrained": self.pretrained,
            "classes": self.classes,
            "requested": {k: v for k, v in dataclasses.asdict(self.requested).items()},
            "resolved": self.settings.as_dict(),
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
            "world_size": self.world,
            "visionzoo_version": visionzoo.__version__,
            "torch_version": torch.__version__,
        }
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets, weight=self.class_weights,
                                           label_smoothing=self.settings.label_smoothing)

    def _train_epoch(self, epoch: int, batches_done: int) -> None:
        s = self.settings
        self.current_epoch, self.current_batches = epoch, batches_done
        self.sampler.set_position(epoch, batches_done * self.micro_batch)
        self.ddp.train()
        if s.freeze_backbone:
            self.model.eval()  # frozen BatchNorm statistics stay frozen
        self.logger.start_epoch(epoch, s.epochs, self.batches_per_epoch, batches_done)
        started, seen, running_count = time.perf_counter(), 0, 0
        # The loss is summed on the device and read back (a host-device sync) only at log steps,
        # before checkpoints and at the epoch's end: a sync per step would stall a fast GPU.
        loss_sum = torch.zeros((), device=self.device)
        loss_mean, checked_step = float("nan"), self.global_step
        micro = batches_done
        self.optimizer.zero_grad(set_to_none=True)
        accumulated = 0
        for images, labels, _, skipped in self.loader:
            new = [item for item in skipped if self._note_bad_file(item.path, item.reason)]
            if new:
                self._write_bad_files()
            micro += 1
            if len(labels):
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                if self.normalize is not None:
                    images = self.normalize(images)
                if s.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = labels
                if self.mixer is not None:
                    images, targets = self.mixer(images, labels)
                last_micro = (micro - batches_done) % s.grad_accum == 0 or micro == self.batches_per_epoch
                sync = contextlib.nullcontext() if (last_micro or self.world == 1) else self.ddp.no_sync()
                with sync:
                    with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                        logits = self.forward_model(images)
                    loss = self._loss(logits, targets)
                    self.scaler.scale(loss / s.grad_accum).backward()
                loss_sum += loss.detach().float() * len(labels)
                running_count += len(labels)
                seen += len(labels) * self.world
            accumulated += 1
            if accumulated == s.grad_accum or micro == self.batches_per_epoch:
                accumulated = 0
                if s.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.global_step += 1
                if self.lookahead is not None:
                    self.lookahead.step(self.global_step)
                if self.ema is not None:
                    self.ema.update(self.model)
                self.current_batches = micro
                log = self.global_step % s.log_every == 0
                checkpoint = bool(s.checkpoint_every) and self.global_step % s.checkpoint_every == 0 \
                    and micro < self.batches_per_epoch
                if log or checkpoint or self.global_step == 1:
                    loss_mean = self._checked_loss(loss_sum, running_count, epoch, checked_step)
                    checked_step = self.global_step
                elapsed = time.perf_counter() - started
                record = {"step": self.global_step, "epoch": epoch + 1, "loss": loss_mean,
                          "lr": self.optimizer.param_groups[-1]["lr"], "img_per_s": seen / max(elapsed, 1e-9),
                          "log": log}
                self.logger.step(record, s.grad_accum)
                if checkpoint:
                    self._checkpoint(epoch, micro)
        self.current_batches = micro
        self.epoch_train_loss = self._checked_loss(loss_sum, running_count, epoch, checked_step)
        self.epoch_speed = seen / max(time.perf_counter() - started, 1e-9)

    def _checked_loss(self, loss_sum: torch.Tensor, count: int, epoch: int, checked_step: int) -> float:
        """The epoch's mean training loss so far, read back from the device; raises NonFiniteLossError
        (on every rank) when any loss since the last check was NaN or infinite. Called before every
        checkpoint, so a checkpoint never holds weights updated by a non-finite loss."""
        bad = (~torch.isfinite(loss_sum)).float()
        if self.world > 1:
            dist.all_reduce(bad)
        if bad.item():
            steps = (f"step {self.global_step}" if self.global_step - checked_step <= 1
                     else f"between steps {checked_step + 1} and {self.global_step}")
            with contextlib.suppress(Exception):
                self.writer.flush()  # the last good checkpoint, if one is in flight, is on disk before we say so
            saved = self.run_dir / "checkpoint"
            kept, then = ((f"{saved} keeps the last good state", f", then --resume {self.run_dir}") if saved.exists()
                          else ("no checkpoint had been written yet", ""))
            raise NonFiniteLossError(
                f"the loss became {float(loss_sum)} at epoch {epoch + 1}, {steps}; the run stopped and {kept}. "
                f"Try a lower learning rate (now {self.settings.lr:.3g}), --clip-grad 1.0 or --precision fp32{then}")
        return float(loss_sum) / max(count, 1)

    def _validate(self) -> dict[str, Any] | None:
        if self.val_loader is None:
            return None
        model = self.ema.module if self.ema is not None else self.model
        if self.normalize is not None:
            model = nn.Sequential(self.normalize, model)
        logits, labels, indices, skipped = predict_logits(model, self.val_loader, device=self.device,
                                                          tta_flip=self.settings.tta_flip,
                                                          tta_shift=self.settings.tta_shift,
                                                          autocast_dtype=self.autocast_dtype,
                                                          channels_last=self.settings.channels_last)
        for item in skipped:
            self.bad_files.setdefault(item.path, item.reason)
        if len(labels) == 0:
            return None
        metrics = classification_metrics(logits, labels, self.classes)
        metrics["_logits"], metrics["_labels"], metrics["_indices"] = logits, labels, indices
        return metrics

    def _end_epoch(self, epoch: int) -> bool:
        s = self.settings
        stop = False
        if self.world > 1:  # bad files met by any rank's loader reach rank 0's bad_files.txt
            found: list[dict[str, str]] = [{} for _ in range(self.world)]
            dist.all_gather_object(found, self.bad_files)
            for bad in found[1:]:
                for path, reason in bad.items():
                    self._note_bad_file(path, reason)
        if self.is_main:
            # --val-every N validates every Nth epoch and the last; best/ is only judged on validated epochs
            skip_validation = (self.val_loader is not None and (epoch + 1) % s.val_every != 0
                               and epoch + 1 < s.epochs)
            metrics = None if skip_validation else self._validate()
            record = {"epoch": epoch + 1, "step": self.global_step, "train_loss": round(self.epoch_train_loss, 6),
                      "lr": self.optimizer.param_groups[-1]["lr"], "img_per_s": round(self.epoch_speed, 1)}
            improved = False
            if metrics is not None:
                record.update(val_loss=round(metrics["loss"], 6), val_top1=round(metrics["top1"], 6),
                              val_top5=round(metrics["top5"], 6), val_ece=round(metrics["ece"], 6))
                if self.best_metric is None or metrics["top1"] > self.best_metric:
                    self.best_metric, self.best_epoch, improved = metrics["top1"], epoch, True
                    self.stale_epochs = 0
                    self.best_val = metrics
                else:
                    self.stale_epochs += 1
            self.history.append(record)
            line = (f"epoch {epoch + 1}/{s.epochs}  train loss {record['train_loss']:.4f}  "
                    + (f"val loss {record['val_loss']:.4f}  val top-1 {record['val_top1']:.2%}  top-5 {record['val_top5']:.2%}  "
                       if metrics is not None else "")
                    + f"{record['img_per_s']:.0f} img/s" + ("  *best*" if improved else ""))
            columns = ["epoch", "step", "train_loss", "lr", "img_per_s"]
            if self.val_loader is not None:
                columns += ["val_loss", "val_top1", "val_top5", "val_ece"]
            self.logger.epoch(record, line, columns)
            exported = self.ema.module if self.ema is not None else self.model
            if improved or (metrics is None and not skip_validation):
                export_model(exported, self.run_dir / "best", class_names=self.classes, data_config=self.data_config)
            self._checkpoint(epoch, self.batches_per_epoch)
            self._write_bad_files()
            if s.early_stopping and self.stale_epochs >= s.early_stopping:
                unit = "epochs" if s.val_every == 1 else f"validations (one every {s.val_every} epochs)"
                self.logger.print(f"early stopping: val top-1 has not improved for {self.stale_epochs} {unit}")
                stop = True
        if self.world > 1:
            flag = torch.tensor(float(stop), device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def _finish(self) -> None:
        exported = self.ema.module if self.ema is not None else self.model
        export_model(exported, self.run_dir / "last", class_names=self.classes, data_config=self.data_config)
        if not (self.run_dir / "best").exists():
            export_model(exported, self.run_dir / "best", class_names=self.classes, data_config=self.data_config)
        if self.settings.plots:
            from visionzoo.training.report import write_plots

            best = getattr(self, "best_val", None)
            if best is None and self.best_metric is not None:  # resumed after the best epoch: evaluate best/ again
                best = self._validate()
            write_plots(self.run_dir, self.history, best, self.classes, self.val_set, self.data_config)
        summary = {"best_val_top1": self.best_metric, "best_epoch": None if self.best_epoch is None else self.best_epoch + 1,
                   "epochs": len(self.history), "history": self.history,
                   "bad_files": len(self.bad_files)}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
