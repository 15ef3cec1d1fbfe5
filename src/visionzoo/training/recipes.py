"""Transfer recipes that know the data size: the rules behind `--recipe finetune` and `auto`; and the
named recipes, one published recipe each (`--recipe cifar-speed`, airbench94's: see `CIFAR_SPEED` at the end).

`auto` is the default when weights are given (`--pretrained`) and no recipe is named. Both
transfer recipes set the batch size, the number of optimizer steps, the warm-up and the
schedule from the number of training images; the schedule is counted in optimizer steps
(warm-up and decay per step), with a floor of steps so that a tiny set still trains long
enough. Each rule says where it comes from, and the run's config.json records, per
setting, which rule chose it (`settings_source`).

What the published small-data practice says, and what we take from it:

- BiT-HyperRule (Kolesnikov et al., 2020, "Big Transfer (BiT): General Visual Representation
  Learning"): the schedule length depends only on the dataset size (500 steps under 20k
  images, 10k steps under 500k, 20k beyond), a short warm-up, step decay, a zero-initialised
  head, and mixup only above 20k images. We take the size buckets, the floor of steps and
  the zero head; BiT's batch of 512 is sized for TPU pods, so the step counts here are for
  our smaller batches and a CPU's budget (see `SIZE_RULES`).
- fastai's `fine_tune` (Howard & Gugger, 2020, "Fastai: A Layered API for Deep Learning"):
  one epoch with the body frozen to train the new head, then everything unfrozen with
  discriminative learning rates (the body at a fraction of the head's) and a one-cycle
  schedule (warm-up, then cosine annealing). We take the discriminative rates (body at 1/10
  of the head: `head_lr_scale` 10) and the warm-up-then-cosine shape counted in steps.
- LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
  Out-of-Distribution"): a linear probe first, then full fine-tuning from the probed head, so
  the randomly initialised head does not distort the pretrained features early on.
  `--probe-init` does the probe phase: a logistic regression fitted by L-BFGS on the
  embeddings of the training images (one forward pass, far cheaper than fastai's frozen
  epoch), whose weights start the head. It is not `auto`'s default: see settings._AUTO.

How long: a fine-tune from good weights peaks early (issue 35: on a real 245-photo, 2-class set the
best validation came at epoch 2 of 7, and top-1 drifted down by 2.6 points after), so besides the
step floor the transfer recipes stop after `TRANSFER_PATIENCE` validations without improvement,
best/ keeping the best epoch (`--early-stopping`). That needs a validation every epoch, which a
large validation set does not get (settings._adjust_to_the_run); a shorter floor was measured and
lost top-1 (see `SIZE_RULES`).

Memory: the batch size is what holds the memory of a CPU fine-tune (activations grow with it;
EfficientNet-Lite0 at batch 64 and 224 px holds about 5 GB), so small sets take small batches,
which also gives them more steps per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["SIZE_RULES", "TRANSFER_RECIPES", "TRANSFER_PATIENCE", "SizeRule", "ema_decay_for", "size_rule", "transfer_plan",
           "NAMED_RECIPES", "CIFAR_SPEED", "named_plan"]

TRANSFER_RECIPES = ("finetune", "auto")


@dataclass(frozen=True)
class SizeRule:
    """Settings for training sets of up to `max_images` images."""

    max_images: float
    batch_size: int
    min_steps: int  # the floor: fewer images than this many batches get more epochs
    max_epochs: int  # a cap for tiny sets (more passes over 50 images only memorise them)
    epochs: int  # passes over the data when the floor does not bind
    bucket: str  # the BiT-HyperRule bucket it follows


# The smallest bucket keeps a floor of 100 steps and 5 epochs (6 epochs, 114 steps, on the 300 photos of
# benchmarks/transfer_cpu.py). Measured there (issue 35): 3 epochs and a floor of 50 gave 81.04% on the
# 5,000 validation photos in 100.9 s, against 83.00% in 97.8 s for this schedule: two points lost and no
# time saved, because validating 5,000 photos (52 s) and start-up dominate the wall time. Early
# stopping (below) is what shortens a run whose validation stops improving.
SIZE_RULES = (
    SizeRule(1_000, 16, 100, 30, 5, "BiT small (<20k): short schedule"),
    SizeRule(20_000, 32, 500, 20, 5, "BiT small (<20k): 500 steps"),
    SizeRule(500_000, 64, 2_000, 10, 4, "BiT medium (<500k)"),
    SizeRule(math.inf, 128, 5_000, 8, 3, "BiT large (>=500k)"),
)


# Early stopping (patience, in validations) of the transfer recipes: a short fine-tune from good
# weights peaks early and then drifts (issue 35: on a real 245-photo, 2-class set, `auto`'s Lite0
# reached its best validation top-1 at epoch 2 of 7 and fell from 94.77% to 92.16% after). Two
# validations without improvement end the run; best/ keeps the best epoch. It only acts when the
# run validates more than once (a large validation set is validated after the last epoch only:
# settings._adjust_to_the_run), and `--early-stopping 0` turns it off.
TRANSFER_PATIENCE = 2


def size_rule(num_train: int) -> SizeRule:
    return next(rule for rule in SIZE_RULES if num_train <= rule.max_images)


def transfer_plan(num_train: int, *, batch_size: int | None = None, epochs: int | None = None,
                  warmup_steps: int | None = None,
                  early_stopping: int | None = None,
                  ema_decay: float | None = None) -> dict[str, tuple[object, str]]:
    """Batch size, epochs, warm-up steps, early stopping's patience and the EMA's decay (used with `--ema`)
    for `num_train` training images, each with the rule that chose it.

    Values the user gave are kept (and said to be theirs). The total number of optimizer steps is
    `epochs * ceil(num_train / batch_size)`: at least the bucket's `min_steps` (more epochs for
    small sets, up to `max_epochs`), and the warm-up is 10% of those steps (BiT: a short linear
    warm-up; fastai: one-cycle's rising part). The run stops after `TRANSFER_PATIENCE` validations
    without improvement. The EMA averages over about a third of the run (`ema_decay_for`)."""
    rule = size_rule(max(num_train, 1))
    plan: dict[str, tuple[object, str]] = {}
    bucket = f"data-size rule for <= {rule.max_images:g} images ({rule.bucket})"
    batch = batch_size or min(rule.batch_size, _power_of_two_at_most(max(num_train, 1)))
    plan["batch_size"] = (batch, "user" if batch_size else bucket)
    steps_per_epoch = math.ceil(max(num_train, 1) / batch)
    if epochs is None:
        wanted = max(rule.epochs, math.ceil(rule.min_steps / steps_per_epoch))
        chosen = min(wanted, rule.max_epochs)
        why = (f"{bucket}: a floor of {rule.min_steps} optimizer steps at {steps_per_epoch} steps per epoch"
               if wanted > rule.epochs else f"{bucket}: {rule.epochs} epochs")
        if chosen < wanted:
            why += f", capped at {rule.max_epochs} epochs"
        plan["epochs"] = (chosen, why)
    else:
        plan["epochs"] = (epochs, "user")
    total = int(plan["epochs"][0]) * steps_per_epoch
    plan["warmup_steps"] = (warmup_steps, "user") if warmup_steps is not None else \
        (max(1, round(0.1 * total)), "10% of the optimizer steps (BiT / fastai one-cycle warm-up)")
    plan["early_stopping"] = (early_stopping, "user") if early_stopping is not None else \
        (TRANSFER_PATIENCE, f"transfer runs peak early: stop after {TRANSFER_PATIENCE} validations without "
                            f"improvement, best/ keeps the best epoch (--early-stopping 0: never)")
    plan["ema_decay"] = (ema_decay, "user") if ema_decay is not None else \
        (ema_decay_for(total), f"an average over about a third of the run's {total} optimizer steps")
    return plan


def ema_decay_for(total_steps: int) -> float:
    """The EMA decay whose time constant, `1 / (1 - decay)` steps, is a third of the run, within
    [0.9, 0.9998]. The usual 0.9998 (timm's ImageNet runs: a 5,000-step horizon) leaves the average of
    a 100-step fine-tune at 98% of the starting weights and its zero head; a third of the run lets
    the average catch up by the end while still smoothing the last epochs' noise."""
    return round(min(max(1.0 - 3.0 / max(total_steps, 1), 0.9), 0.9998), 6)


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


# --- named recipes: one published recipe, whole ----------------------------------------------------
#
# A named recipe sets every setting it names, whatever the model's style; the settings it leaves
# out come from `scratch`'s table for the model's style (settings._DEFAULTS). A setting the user gives
# wins, even at its default value (`train` records the names given), and config.json's settings_source
# says "recipe cifar-speed ..." for each one the recipe chose.

# `--recipe cifar-speed`: airbench94's recipe (Jordan, 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single
# GPU"), for the airbench family (`visionzoo train --model airbench_cifar --recipe cifar-speed`): SGD with
# Nesterov momentum (optim.build_optimizer), in visionzoo's units (the mean loss of a batch, weight decay coupled to the lr): its lr 11.5 and weight decay
# 0.0153 "per 1024 examples" at momentum 0.85 are lr 1.5 and weight decay 1.33e-3 at batch 1024 (base_lr
# 0.375 per 256). BatchNorm shifts at 64x the lr and decayed per step as much as the weights; Lookahead every
# 5 steps; alternating flips and 2-pixel crops; label smoothing 0.2; a warm-up from 20% of the peak over 23%
# of the steps, then a straight line down to 7% of it; ten epochs; one evaluation at the end with flips and
# 1-pixel shifts. On the CPU: channels-last and bf16 autocast where the CPU computes bf16 natively
# (AVX512-BF16 or AMX: about twice the convolution throughput). Measured on this project's 2-core CPU at
# airbench's width and batch (benchmarks/cifar10_gpu.py's comment): 90.67% test top-1 (seed 0; with the warm-up
# from 0, 90.73% and 90.57% for seeds 0 and 1), against airbench94's own 90.59% and 90.66% on the same CPU
# (benchmarks/airbench_cpu.py).
CIFAR_SPEED: dict[str, Any] = dict(
    optimizer="sgd", base_lr=0.375, momentum=0.85, weight_decay=1.33e-3, batch_size=1024, epochs=10,
    norm_lr_scale=64.0, norm_weight_decay=True, lookahead=5, schedule="linear", warmup_start_ratio=0.2,
    min_lr_ratio=0.07, label_smoothing=0.2, augment="crop", crop_padding=2, alternate_flip=True, tta_flip=True,
    tta_shift=1, cache=True, channels_last=True,
)
CIFAR_SPEED_WARMUP = 0.23  # share of the optimizer steps

NAMED_RECIPES = ("cifar-speed",)


def named_plan(recipe: str, num_train: int | None, *, epochs: int, batch_size: int,
               device: str | None) -> dict[str, tuple[object, str]]:
    """The settings of a named recipe (`NAMED_RECIPES`) that depend on the run, each with its reason: the
    warm-up in steps, validation at the end only, and the precision on this device. The fixed ones are
    `CIFAR_SPEED`; `epochs` and `batch_size` are the run's (the recipe's unless the user gave them)."""
    if recipe != "cifar-speed":
        raise ValueError(f"no named recipe {recipe!r}")
    import torch

    from visionzoo.runtime import bf16_native

    plan: dict[str, tuple[object, str]] = {}
    if num_train is not None:
        steps = epochs * math.ceil(max(num_train, 1) / batch_size)
        plan["warmup_steps"] = (max(1, round(CIFAR_SPEED_WARMUP * steps)),
                                f"recipe cifar-speed: {CIFAR_SPEED_WARMUP:.0%} of the {steps} optimizer steps (airbench94)")
    plan["val_every"] = (epochs, "recipe cifar-speed: evaluate once, after the last epoch (airbench94)")
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plan["precision"] = (("bf16", f"recipe cifar-speed: this {where.type} computes bf16 natively") if bf16_native(where)
                         else ("auto", f"recipe cifar-speed: no native bf16 on this {where.type}"))
    return plan
