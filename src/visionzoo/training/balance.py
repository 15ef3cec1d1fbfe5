"""Imbalanced classes: how unequal the training classes are, and what `--class-balance` does about it.

    none          plain cross-entropy: the classes weigh as often as they occur
    weights       cross-entropy with per-class weights N / (count * C): every class weighs as much in total
    effective     weights by the effective number of samples (Cui et al., "Class-Balanced Loss Based on
                  Effective Number of Samples", CVPR 2019): 1 / E_n with E_n = (1 - beta^n) / (1 - beta),
                  scaled to sum to C. Between none (beta 0) and inverse frequency (beta -> 1): more images
                  of a class add less and less new information, so a big class is not down-weighted in
                  full proportion to its size. beta (`balance_beta`): 0.999 by default, 0.9999 in the paper
                  for the largest CIFAR-LT sets.
    sampler       draw training images in inverse proportion to their class's size (`data.loaders`)
    logit-adjust  the logit-adjusted loss (Menon et al., "Long-tail learning via logit adjustment",
                  ICLR 2021): cross-entropy on logits + tau * log(prior), in the training loss only.
                  The network learns logits from which the prior has been taken out, so its plain argmax
                  at inference is the balanced-error rule; nothing changes in prediction or export.
    auto          (the default) none below `AUTO_MIN_RATIO`, else `AUTO_MODE` (`choose_balance`)

Effective-number weights are a mode of their own rather than a variant hidden inside `weights`:
`weights` keeps its exact meaning in runs written before, and a user comparing the two names one.
Multi-label runs keep their own per-label balancing (`weights`, `sampler`); `auto` leaves them as
they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from visionzoo.errors import SettingError

if TYPE_CHECKING:
    import torch

__all__ = ["BALANCE_MODES", "AUTO_MIN_RATIO", "AUTO_MODE", "imbalance_ratio", "describe_imbalance", "choose_balance",
           "inverse_frequency_weights", "effective_number_weights", "log_prior"]

BALANCE_MODES = ("auto", "none", "weights", "effective", "sampler", "logit-adjust")

# `auto`: the largest class at least 10x the smallest gets effective-number weights; below, nothing.
# Measured by benchmarks/longtail_cifar.py (the shorter protocol: 1,000 images for the largest class,
# the balanced 2,000-image test set; balanced accuracy, one seed, standard error about 1 point):
#   ratio 100, Lite0 fine-tuned:      none 52.25, effective 64.10, logit-adjust 58.35, weights 59.15, sampler 62.85
#   ratio 100, ResNet-18 from scratch: none 34.90, effective 38.75, logit-adjust 38.60
#   ratio 10,  Lite0 fine-tuned:      none 71.05, effective 75.50, logit-adjust 75.25
#   ratio 3,   Lite0 fine-tuned:      none 77.80, effective 78.35
# The effective-number weights are the best or tied for the best everywhere; logit adjustment gives the
# three smallest classes the most recall (70 against 62 at ratio 100 on Lite0) at a cost to the rest.
# The threshold: at ratio 10 the weights gain 4.5 points, at ratio 3 half a point (within the noise),
# and below 10 a validation set drawn like the training set (the usual case) would mostly see its
# top-1 traded for the tail's recall.
AUTO_MIN_RATIO = 10.0
AUTO_MODE = "effective"


def imbalance_ratio(counts: Sequence[int] | np.ndarray) -> float:
    """The largest class's image count over the smallest's (inf when a class has none)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0:
        return 1.0
    smallest = counts.min()
    return float("inf") if smallest == 0 else float(counts.max() / smallest)


def describe_imbalance(counts: Sequence[int] | np.ndarray, classes: Sequence[str] | None = None) -> str:
    """One line: the imbalance ratio and the largest and smallest classes."""
    counts = np.asarray(counts)
    ratio = imbalance_ratio(counts)
    largest, smallest = int(counts.argmax()), int(counts.argmin())
    name = (lambda i: f"'{classes[i]}'") if classes is not None else str
    return (f"class imbalance {ratio:.1f} (largest class {name(largest)} {int(counts[largest])} images, "
            f"smallest {name(smallest)} {int(counts[smallest])})")


def choose_balance(requested: str, counts: Sequence[int] | np.ndarray | None, *, multilabel: bool = False
                   ) -> tuple[str, str]:
    """(mode, why) for `requested` (one of BALANCE_MODES) given the training class counts."""
    if requested not in BALANCE_MODES:
        raise SettingError(f"unknown class balance {requested!r}; choose {', '.join(BALANCE_MODES[:-1])} or "
                           f"{BALANCE_MODES[-1]}")
    if multilabel:
        if requested in ("effective", "logit-adjust"):
            raise SettingError(f"class balance {requested!r} is for single-label data; multi-label runs balance "
                               "per label with weights or sampler")
        if requested == "auto":
            return "none", "auto: multi-label data (per-label balance only when asked: weights or sampler)"
        return requested, "user"
    if requested != "auto":
        return requested, "user"
    if counts is None:
        return "none", "auto: the class counts are not known"
    ratio = imbalance_ratio(counts)
    if ratio < AUTO_MIN_RATIO:
        return "none", (f"auto: class imbalance {ratio:.1f} (largest class / smallest) is under {AUTO_MIN_RATIO:g}, "
                        "nearly balanced")
    return AUTO_MODE, (f"auto: class imbalance {ratio:.1f} (largest class / smallest) is {AUTO_MIN_RATIO:g} or "
                       "more: effective-number weights (Cui et al., 2019), the best balanced accuracy of every mode "
                       "on long-tailed CIFAR-10 (benchmarks/longtail_cifar.py)")


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """N / (count * C): each class weighs as much in total (a class with no image gets N / C)."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts.sum() / np.maximum(counts, 1) / len(counts)


def effective_number_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """Cui et al.'s class-balanced weights (1 - beta) / (1 - beta^n), scaled to sum to the number of classes."""
    if not 0 <= beta < 1:
        raise SettingError(f"balance_beta must be in [0, 1), got {beta}")
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1)
    effective = (1.0 - np.power(beta, counts)) / (1.0 - beta) if beta > 0 else np.ones_like(counts)
    weights = 1.0 / effective
    return weights * len(counts) / weights.sum()


def log_prior(counts: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """log of the training class frequencies, float32 (a class with no image counts as one)."""
    import torch  # here: the command line builds its parsers from this module's names without PyTorch

    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1)
    return torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32, device=device)
