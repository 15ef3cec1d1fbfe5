"""The training loss of a run, chosen from its settings in one place: `build_loss`.

Single-label: cross-entropy with label smoothing and, for imbalanced classes (`training.balance`),
with `class_balance="weights"` per-class weights `N / (count * C)` (each class then weighs as much
in total), with `"effective"` Cui et al.'s effective-number weights, with `"logit-adjust"` the
logits shifted by tau * log(prior) inside the loss (Menon et al., 2021; the model and its
inference are untouched). Targets are class indices, or soft (N, C) targets after mixup / CutMix.

Multi-label (`task="multilabel"`): sigmoid outputs with binary cross-entropy (optional label
smoothing) or, with `loss="asl"`, the asymmetric loss; `class_balance="weights"` weighs each
class's positives by negatives / positives. Targets are (N, C) multi-hot vectors (mixed by
`LabelVectorMixer`). Both multi-label losses sum over the classes and average over the images:
the loss of one image, on the scale of cross-entropy, so the recipes' learning rates (tuned for
cross-entropy) carry over; PyTorch's mean over images *and* classes would give each logit a
gradient C times smaller than cross-entropy does.

Every loss is the same `(logits, targets) -> mean loss` callable, so `step.train_step` needs no
change. Validation (`training.heads.validation_metrics`) has its own loss and metrics.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.data.loaders import class_counts
from visionzoo.errors import SettingError
from visionzoo.training.balance import effective_number_weights, inverse_frequency_weights, log_prior
from visionzoo.training.settings import TrainSettings
from visionzoo.training.step import LossFn

__all__ = ["build_loss", "multilabel_bce", "AsymmetricLoss", "LabelVectorMixer", "multilabel_loss"]


def build_loss(settings: TrainSettings, train_labels: Iterable[int], num_classes: int, device: torch.device) -> LossFn:
    """The loss for `settings`: `train_labels` are the training images' class indices, or (N, C)
    multi-hot rows for multi-label runs (for class weights); the weights live on `device`."""
    if settings.task == "multilabel":
        labels = np.asarray(train_labels, dtype=np.float64)
        pos_weight = None
        if settings.class_balance == "weights":
            positives = labels.sum(0)
            pos_weight = torch.tensor(np.where(positives > 0, (len(labels) - positives) / np.maximum(positives, 1), 1.0),
                                      dtype=torch.float32, device=device)
        loss = multilabel_loss(settings.loss or "bce", settings.label_smoothing or 0.0)
        return lambda logits, targets: loss(logits, targets, pos_weight)
    class_weights, adjustment = None, None
    mode = settings.class_balance
    if mode in ("weights", "effective", "logit-adjust"):
        counts = class_counts(train_labels, num_classes)
        if mode == "logit-adjust":
            adjustment = settings.balance_tau * log_prior(counts, device)
        else:
            weights = (inverse_frequency_weights(counts) if mode == "weights"
                       else effective_number_weights(counts, settings.balance_beta))
            class_weights = torch.tensor(weights, dtype=torch.float32, device=device)
    label_smoothing = settings.label_smoothing

    def cross_entropy(logits: torch.Tensor | tuple[torch.Tensor, ...], targets: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, tuple):  # a distilled DeiT in training mode, with no teacher: both heads learn the labels
            return sum(cross_entropy(part, targets) for part in logits) / len(logits)
        # in float32 whatever the autocast precision: the loss and its gradient stay accurate
        logits = logits.float() if adjustment is None else logits.float() + adjustment
        return nn.functional.cross_entropy(logits, targets, weight=class_weights, label_smoothing=label_smoothing)

    return cross_entropy


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0,
                   pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy per class on sigmoid outputs; smoothing moves targets to eps/2 and 1 - eps/2."""
    targets = targets.float()
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight, reduction="none")
    return loss.sum(dim=1).mean()


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021).

    Focusing down-weights easy examples, more for negatives (`gamma_neg`) than positives
    (`gamma_pos`): most of an image's classes are easy negatives, whose summed gradient would
    otherwise drown the few positives. The probability shift `clip` (the paper's margin m)
    discards negatives predicted below m outright, which also rejects mislabelled negatives.
    The paper's defaults: gamma_neg 4, gamma_pos 0, m 0.05.

        L+ = (1 - p)^gamma_pos * log(p)
        L- = p_m^gamma_neg * log(1 - p_m),  p_m = max(p - m, 0)
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
        targets = targets.float()
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip else p  # shifted probability of the negatives
        positive = targets * torch.log(p.clamp(min=self.eps))
        negative = (1 - targets) * torch.log((1 - p_neg).clamp(min=self.eps))
        if pos_weight is not None:
            positive = positive * pos_weight
        # The focusing weights are constants of the step, as in the paper's implementation
        # (its `disable_torch_grad_focal_loss`): they scale the gradient, they do not get one.
        with torch.no_grad():
            weight_pos = (1 - p).pow(self.gamma_pos) if self.gamma_pos else torch.ones_like(p)
            weight_neg = p_neg.pow(self.gamma_neg) if self.gamma_neg else torch.ones_like(p)
        loss = positive * weight_pos + negative * weight_neg
        return -loss.sum(dim=1).mean()


def multilabel_loss(name: str, label_smoothing: float = 0.0):
    """The loss function `(logits, targets, pos_weight) -> loss` named by `--loss` (bce or asl)."""
    if name == "bce":
        return lambda logits, targets, pos_weight=None: multilabel_bce(
            logits, targets, label_smoothing=label_smoothing, pos_weight=pos_weight)
    if name == "asl":
        return AsymmetricLoss()
    raise SettingError(f"loss must be 'bce' or 'asl' for multi-label data, got {name!r}")


class LabelVectorMixer:
    """Mixup (Zhang et al., 2018) and / or CutMix (Yun et al., 2019) on a batch of images and label
    vectors: the images mixed with the batch rolled by one, the label vectors in the same proportion
    (for CutMix, the share of the pasted box). One of the two is picked per batch when both are on."""

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        self.choices = [(kind, alpha) for kind, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if alpha > 0]

    def __bool__(self) -> bool:
        return bool(self.choices)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kind, alpha = self.choices[int(torch.randint(len(self.choices), ()))] if len(self.choices) > 1 \
            else self.choices[0]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other_images, other_targets = images.roll(1, 0), targets.roll(1, 0)
        if kind == "mixup":
            return images * lam + other_images * (1 - lam), targets * lam + other_targets * (1 - lam)
        height, width = images.shape[-2:]
        cut = float(np.sqrt(1 - lam))
        box_h, box_w = int(height * cut), int(width * cut)
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
        left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = other_images[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)  # the box as pasted, clipped at the edges
        return mixed, targets * lam + other_targets * (1 - lam)
