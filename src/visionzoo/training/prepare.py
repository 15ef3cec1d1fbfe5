"""Everything a run needs before its loop: the settings, the processes, the device, the run folder,
the model (with its EMA, DDP and compiled wrappers) and the data (`prepare_run`, `prepare_data`),
and the run's own config.json (`write_config`).

What is made here does not change during the run; what does (and what a checkpoint saves) is the
`state.RunState` the trainer makes next.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import visionzoo
from visionzoo.data.cache import CachePlan, cache_photos, plan_cache
from visionzoo.data.datasets import ImageDataset, collate_skipping
from visionzoo.data.loaders import (
    Loaders,
    build_loaders,
    cache_size,
    cache_splits,
    class_counts,
    default_workers,
    scan_splits,
)
from visionzoo.data.resize import resize_mode_of
from visionzoo.data.samples import ArraySamples, DataSplits, FileSamples
from visionzoo.data.shards import ShardSamples
from visionzoo.data.sources import resolve_data
from visionzoo.data.transforms import eval_transform, eval_view, image_hw
from visionzoo.errors import DataError, SettingError
from visionzoo.factory import data_config as model_data_config
from visionzoo.factory import registered_name
from visionzoo.measure import counted
from visionzoo.training.adapt import Adaptation, apply_adaptation
from visionzoo.training.heads import head_task
from visionzoo.training.hooks import BadFileLog, RunLogger
from visionzoo.training.model import build_model
from visionzoo.training.run_folder import tidy_run_folder
from visionzoo.training.settings import TrainSettings, resolve_settings
from visionzoo.training.state import ExponentialMovingAverage
from visionzoo.training.timing import MeasuringTimer, plan_threads
from visionzoo.training.transfer import probe_init_head_

__all__ = ["PreparedRun", "RunData", "prepare_run", "prepare_data", "check_trainable", "probe_init", "describe",
           "write_config", "start_distributed", "stop_distributed"]


# --- processes ------------------------------------------------------------------------------------


def start_distributed() -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); True if this call did."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False


def stop_distributed(succeeded: bool) -> None:
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


def _device(settings: TrainSettings, local_rank: int) -> torch.device:
    if settings.device:
        device = torch.device(settings.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def new_run_dir(out: str | Path | None, model_name: str, data: str) -> Path:
    """`out`, or a fresh runs/<model>-<data>-<time> folder."""
    if out is not None:
        return Path(out)
    data_name = Path(str(data).split("?")[0].replace("builtin:", "")).name.split(".")[0] or "data"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{model_name}-{data_name}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = Path(f"{base}-{n}"), n + 1
    return candidate


# --- the run --------------------------------------------------------------------------------------


@dataclass
class PreparedRun:
    """The fixed parts of one run, made by `prepare_run`."""

    requested: TrainSettings  # as given (config.json's "requested")
    settings: TrainSettings  # resolved
    pretrained: bool | str
    model_name: str | None  # the registered architecture, None for a network of the user's own
    data_spec: str  # the data as given, for config.json
    data_in_memory: bool
    splits: DataSplits
    task: str  # multiclass | multilabel
    rank: int
    world: int
    micro_batch: int  # images per micro-batch on this process
    device: torch.device
    autocast_dtype: torch.dtype | None
    run_dir: Path
    model: nn.Module  # the bare model
    ema: ExponentialMovingAverage | None
    ddp: nn.Module  # the DDP wrapper, or the model
    forward_model: Any  # what the step calls: the compiled wrapper, or `ddp`
    head_names: set[str]
    new_head: bool
    adaptation: Adaptation
    data_config: dict[str, Any]
    image_size: int | tuple[int, int]  # one side, or (H, W)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def classes(self) -> list[str]:
        return self.splits.classes

    @property
    def exported(self) -> nn.Module:
        """The model best/ and last/ hold: the EMA when the run keeps one."""
        return self.ema.module if self.ema is not None else self.model


def prepare_run(model_or_name: nn.Module | str, data: Any, pretrained: bool | str, requested: TrainSettings,
                run_dir: Path | None, out: str | Path | None, *, fresh: bool = False) -> PreparedRun:
    """Resolve the settings, the processes, the device and the seed, make the run folder (`fresh`:
    clearing a previous run's outputs there, see `run_folder.tidy_run_folder`) and the model."""
    rank, world, local_rank = _distributed()
    model_name = model_or_name if isinstance(model_or_name, str) else registered_name(model_or_name)
    in_memory = isinstance(data, DataSplits)
    splits = data if in_memory else resolve_data(data, val_fraction=requested.val_fraction, seed=requested.seed,
                                                 task=requested.task, max_unpack_gb=requested.max_unpack_gb,
                                                 image_column=requested.image_column,
                                                 label_column=requested.label_column)
    if requested.exclude:  # `visionzoo train --exclude audit/label_issues.csv`
        from visionzoo.data.exclude import exclude_files

        splits, _ = exclude_files(splits, requested.exclude)
    check_trainable(splits)
    multilabel = (requested.task or splits.task) == "multilabel"
    counts = None if multilabel else class_counts(splits.train.labels, len(splits.classes))
    settings = resolve_settings(requested, model_name, native_size=splits.native_size, pretrained=bool(pretrained),
                                num_train=len(splits.train),
                                num_val=len(splits.val) if splits.val is not None else None,
                                class_counts=counts, multilabel=multilabel)
    task = head_task(splits, requested, settings)  # multiclass | multilabel; checks the head settings
    if settings.batch_size % (world * settings.grad_accum):
        raise SettingError(f"batch size {settings.batch_size} must be divisible by processes x grad_accum "
                           f"= {world} x {settings.grad_accum}")
    device = _device(settings, local_rank)
    _seed_everything(settings.seed, settings.deterministic)
    # The model before the run folder: a size it cannot run at, or weights that do not fit, is an error
    # that leaves nothing behind.
    model, head_names, new_head = build_model(model_or_name, len(splits.classes), settings, pretrained)
    adaptation = apply_adaptation(model, settings, head_names, base_weights=pretrained or None)
    data_spec = splits.description if in_memory else data
    run_dir = run_dir or new_run_dir(out, model_name or type(model_or_name).__name__.lower(), str(data_spec))
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tidy_run_folder(run_dir, fresh=fresh)
    data_config = model_data_config(model)
    image_size = settings.image_size or int(data_config["input_size"][-1])
    data_config = {**data_config, "input_size": (3, *image_hw(data_config, image_size))}
    # the mode the run trains with, stated in config.json, the saved model and every export's metadata
    data_config["resize_mode"] = settings.resize_mode or resize_mode_of(data_config)
    if settings.augment in ("crop", "none") and not pretrained:
        # Trained on whole images (pad-and-crop keeps the full frame): evaluate on whole images too.
        data_config["crop_pct"] = 1.0
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ExponentialMovingAverage(model, settings.ema_decay) if settings.ema else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    return PreparedRun(
        requested=requested, settings=settings, pretrained=pretrained, model_name=model_name, data_spec=str(data_spec),
        data_in_memory=in_memory, splits=splits, task=task, rank=rank, world=world,
        micro_batch=settings.batch_size // (world * settings.grad_accum), device=device,
        autocast_dtype=_autocast_dtype(settings.precision, device), run_dir=run_dir, model=model, ema=ema, ddp=ddp,
        forward_model=torch.compile(ddp) if settings.compile else ddp, head_names=adaptation.head_names,
        new_head=new_head, adaptation=adaptation, data_config=data_config, image_size=image_size)


# --- the data -------------------------------------------------------------------------------------


def check_trainable(splits: DataSplits) -> None:
    """A `DataError` before any work for data no classifier can be trained and judged on: fewer than two
    classes (a one-class folder would train to 100% and mean nothing) or no validation image."""
    where = splits.description
    if splits.task == "multiclass" and len(splits.classes) < 2:
        found = f"one class ({splits.classes[0]!r})" if splits.classes else "no class"
        raise DataError(f"{where} holds {found}; a classifier needs at least two: add a folder of images for "
                        "each other class (DIR/CLASS/IMAGE or DIR/train/CLASS/IMAGE)")
    if splits.val is None or len(splits.val) == 0:
        raise DataError(f"{where} has no validation image, so the run could not be judged: add images to a "
                        "val/ folder (DIR/val/CLASS/IMAGE) or, for one tree, at least two images per class "
                        "(--val-fraction sets the share held out)")


@dataclass
class RunData:
    """The loaders of a run and what making them decided."""

    loaders: Loaders
    val_batch: int
    workers: int  # loader processes
    threads: int  # intra-op threads while the run lasts
    cache_plan: CachePlan | None
    bad_files: dict[str, str]  # found by --scan and the caches, before training
    grad_accum: int = 1

    @property
    def batches_per_epoch(self) -> int:
        return self.loaders.batches_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.loaders.batches_per_epoch / self.grad_accum)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def prepare_data(run: PreparedRun, logger: RunLogger, bad_log: BadFileLog, phases: MeasuringTimer) -> RunData:
    """Scan (--scan), cache (--cache) and build the loaders; sets the intra-op threads for the run."""
    s = run.settings
    train_samples, val_samples = run.splits.train, run.splits.val
    bad_files: dict[str, str] = {}
    if s.scan and run.is_main:
        for label, bad in scan_splits({"train": train_samples, "val": val_samples}).items():
            samples = train_samples if label == "train" else val_samples
            bad_files.update((item.path, item.reason) for item in bad)
            logger.print(f"scan: {len(samples) - len(bad)} of {len(samples)} {label} images decode, {len(bad)} bad")
        bad_log.write(bad_files)
    # Inference batches of 64 at 224 px hold about 1 GB in EfficientNet's widest early layers (on
    # top of the model); 32 keeps a small fine-tune's peak memory under 2 GB.
    val_batch = max(run.micro_batch * s.grad_accum, 32)
    # the caches store each photo's centre (shorter side resized): the crop resize mode's view only
    whole_photos = resize_mode_of(run.data_config) != "crop" or not isinstance(run.image_size, int)
    if not isinstance(train_samples, (FileSamples, ArraySamples)):
        whole_photos = True  # shards and dataset tables are decoded as they are read: no pixel caches
    photo_cache = bool(s.cache) and s.augment != "crop" and not whole_photos
    cache_plan = None
    if photo_cache:
        # Large photos: decoded once at the size this run needs (room for RandomResizedCrop; the
        # validation view cut once), augmented as uint8 arrays; in memory when they fit.
        with phases.phase("cache"):
            if run.world > 1 and run.rank != 0:
                dist.barrier()  # let rank 0 build a memory-mapped cache first
            cache_plan = plan_cache(train_samples, val_samples, run.image_size,
                                    float(run.data_config.get("crop_pct", 0.875)), s.augment, s.cache_size)
            decoders = s.workers if s.workers is not None else default_workers(train_samples)
            train_samples, val_samples, bad = cache_photos(train_samples, val_samples, cache_plan,
                                                           data_config=run.data_config, workers=decoders)
            if run.world > 1 and run.rank == 0:
                dist.barrier()
        bad_files.update((item.path, item.reason) for item in bad)
    elif s.cache and not whole_photos:
        size = cache_size(run.image_size, run.data_config, s.cache_size)
        train_samples, val_samples, bad = cache_splits(train_samples, val_samples, size, data_config=run.data_config,
                                                       image_size=run.image_size, rank=run.rank, world=run.world)
        bad_files.update((item.path, item.reason) for item in bad)
    loaders = build_loaders(
        train_samples, val_samples, data_config=run.data_config, image_size=run.image_size,
        batch_size=run.micro_batch, val_batch_size=val_batch, augment=s.augment, crop_padding_px=s.crop_padding,
        alternate_flip=s.alternate_flip, balanced=s.class_balance == "sampler", num_classes=len(run.classes),
        workers=s.workers, seed=s.seed, device=run.device, rank=run.rank, world=run.world, photo_cache=photo_cache,
        no_single_image_batches=_has_batchnorm(run.model), say=logger.print)
    # intra-op threads plus loader workers stay within the cores (the trainer restores them at the end)
    workers = s.workers if s.workers is not None else default_workers(train_samples)
    threads = plan_threads(workers, torch.get_num_threads())
    torch.set_num_threads(threads)
    return RunData(loaders, val_batch, workers, threads, cache_plan, bad_files, grad_accum=s.grad_accum)


def probe_init(run: PreparedRun, data: RunData, logger: RunLogger, phases: MeasuringTimer) -> dict[str, float]:
    """LP-FT's probe phase: the new head starts from a logistic regression on the training embeddings
    (evaluation view, one forward pass)."""
    loaders = data.loaders
    if isinstance(loaders.train_samples, ShardSamples):
        raise SettingError("--probe-init reads the training images in a pass of its own; streamed shards are read "
                           "in order once per epoch: train without --probe-init")
    view = (eval_view(run.data_config, run.image_size)
            if loaders.normalize is not None else eval_transform(run.data_config, run.image_size))
    loader = torch.utils.data.DataLoader(ImageDataset(loaders.train_samples, view), batch_size=data.val_batch,
                                         num_workers=data.workers, collate_fn=collate_skipping)
    with phases.phase("probe"):
        result = probe_init_head_(run.model, run.head_names, loader, len(run.classes), device=run.device,
                                  normalize=loaders.normalize, autocast_dtype=run.autocast_dtype)
    logger.print(f"probe init (LP-FT): the new head starts from a linear probe on the "
                 f"{len(loaders.train_samples)} training embeddings (train top-1 "
                 f"{result['probe_train_top1']:.2%}) in {phases.totals['probe']:.1f} s")
    return result


def describe(run: PreparedRun, data: RunData, teacher: Any | None) -> str:
    """The run's first line: model, data, recipe, processes, adaptation."""
    s, loaders = run.settings, data.loaders
    return (f"training {run.model_name or type(run.model).__name__} on {run.splits.description}: "
            f"{len(loaders.train_set)} train / {len(loaders.val_set) if loaders.val_set else 0} val images, "
            f"{counted(len(run.classes), 'class', 'classes')}, {s.recipe} recipe ({s.optimizer}, lr {s.lr:.3g}, "
            f"{counted(s.epochs, 'epoch')} of batch {s.batch_size}, {_size(run.image_size)}px, augment {s.augment}), "
            f"{counted(run.world, 'process', 'processes')} on {run.device.type}; {run.adaptation.describe(run.model)}"
            + (f"; distilling from {teacher.description} ({s.distill})" if teacher is not None else "")
            + _balance_line(run))


def _size(image_size: int | tuple[int, int]) -> str:
    return str(image_size) if isinstance(image_size, int) else f"{image_size[0]}x{image_size[1]}"


def _balance_line(run: PreparedRun) -> str:
    """'; class imbalance R (...), class balance MODE' for single-label runs (training.balance)."""
    if run.task == "multilabel":
        return ""
    from rich.markup import escape

    from visionzoo.heads import printable
    from visionzoo.training.balance import describe_imbalance

    counts = class_counts(run.splits.train.labels, len(run.classes))
    names = [escape(printable(name)) for name in run.classes]  # the logger's console reads markup
    return f"; {describe_imbalance(counts, names)}, class balance {run.settings.class_balance}"


def write_config(run: PreparedRun, data: RunData) -> None:
    """config.json: what was asked, what was resolved and why, and what `--resume` rebuilds the run from."""
    s = run.settings
    config = {
        "model": run.model_name,
        "data": run.data_spec,
        "data_in_memory": run.data_in_memory,
        "pretrained": run.pretrained,
        "classes": run.classes,
        "requested": dict(dataclasses.asdict(run.requested)),
        "resolved": {k: v for k, v in s.as_dict().items() if k != "sources"},
        "settings_source": s.sources,
        "new_head": ({"init": "linear probe (LP-FT)" if s.probe_init else
                      ("zeros" if s.head_init_std == 0 else f"normal(0, {s.head_init_std})")}
                     if run.new_head else None),
        "frozen_parameters": sum(not p.requires_grad for p in run.model.parameters()),
        "cache": dataclasses.asdict(data.cache_plan) if data.cache_plan is not None else None,
        "threads": {"intra_op": data.threads, "loader_workers": data.workers},
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in run.data_config.items()},
        # training images per class: `eval` orders its per-class recall plot by them
        "train_class_counts": (None if run.task == "multilabel" else
                               dict(zip(run.classes, class_counts(run.splits.train.labels, len(run.classes)).tolist()))),
        "world_size": run.world,
        "visionzoo_version": visionzoo.__version__,
        "torch_version": torch.__version__,
    }
    (run.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
