"""The training loss of a run, chosen from its settings in one place: `build_loss`.

Today: cross-entropy with label smoothing and, with `class_balance="weights"`, per-class
weights `N / (count * C)` (each class then weighs as much in total). Targets are class
indices, or soft (N, C) targets after mixup / CutMix.

Extension point: new losses (multi-label BCE or ASL, distillation from a teacher) are
chosen here from new settings, and return the same `(logits, targets) -> mean loss`
callable, so `step.train_step` needs no change. Validation (`evaluate.classification_metrics`)
has its own loss and metrics.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from visionzoo.data.loaders import class_counts
from visionzoo.training.settings import TrainSettings
from visionzoo.training.step import LossFn

__all__ = ["build_loss"]


def build_loss(settings: TrainSettings, train_labels: Iterable[int], num_classes: int, device: torch.device) -> LossFn:
    """The loss for `settings`: `train_labels` are the training images' class indices (for
    class weights); the weights live on `device`."""
    class_weights = None
    if settings.class_balance == "weights":
        counts = class_counts(train_labels, num_classes)
        class_weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(counts), dtype=torch.float32,
                                     device=device)
    label_smoothing = settings.label_smoothing

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # in float32 whatever the autocast precision: the loss and its gradient stay accurate
        return nn.functional.cross_entropy(logits.float(), targets, weight=class_weights,
                                           label_smoothing=label_smoothing)

    return cross_entropy
