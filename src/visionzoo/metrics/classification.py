"""Classification metrics from logits: top-1 and top-k, per-class precision / recall / F1, macro-F1,
balanced accuracy, the confusion matrix and its plot, the per-class recall plot, and the one
expected calibration error (ECE) every command reports.

Balanced accuracy is the mean of the per-class recalls over the classes present in the evaluation
set (scikit-learn's `balanced_accuracy_score`): on a long-tailed problem top-1 follows the big
classes, while this weighs each class alike, so a model that never predicts the tail loses there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.heads import printable

__all__ = ["TOP_K", "reports_top_k", "classification_metrics", "expected_calibration_error", "calibration_gap",
           "plot_confusion_matrix", "balanced_accuracy", "plot_per_class_recall"]


def calibration_gap(confidence: np.ndarray, outcome: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): the gap between the forecast `confidence` and how often `outcome` (0/1)
    came true, averaged over equal-width confidence bins weighted by how many forecasts fall in each.
    Multi-class: the top class's probability and whether it was right; multi-label: every (image,
    class) probability and its truth, each a yes/no forecast of its own."""
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    outcome = np.asarray(outcome, dtype=np.float64).reshape(-1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high) if low > 0 else (confidence >= low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(confidence[inside].mean() - outcome[inside].mean())
    return float(ece)


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of the top class of (N, C) `probabilities` against (N,) integer `labels` (`calibration_gap`)."""
    confidence, predicted = probabilities.float().max(dim=1)
    return calibration_gap(confidence.numpy(), predicted.eq(labels).numpy(), bins)


TOP_K = 5  # the top-k accuracy reported beside top-1


def reports_top_k(num_classes: int, k: int = TOP_K) -> bool:
    """Whether top-k accuracy means anything: only where k is below the number of classes
    (with 5 classes or fewer, top-5 is always 100%, so it is neither printed, stored nor plotted)."""
    return k < num_classes


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """The mean recall of the classes that have images in the (true x predicted) `confusion` matrix."""
    actual = confusion.sum(1).double()
    present = actual > 0
    if not bool(present.any()):
        return 0.0
    return float((confusion.diag().double()[present] / actual[present]).mean())


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Metrics from (N, C) logits and (N,) integer labels; "top5" only where 5 < C (see `reports_top_k`)."""
    logits = logits.float()
    count, num_classes = logits.shape
    if count == 0:
        raise SettingError("no samples to evaluate")
    top = logits.topk(min(TOP_K, num_classes), dim=1).indices
    top1 = float(top[:, 0].eq(labels).float().mean())
    top_k = {}
    if reports_top_k(num_classes):
        top_k[f"top{TOP_K}"] = float(top.eq(labels[:, None]).any(dim=1).float().mean())
    predicted = top[:, 0]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    true_positive = confusion.diag().double()
    predicted_count = confusion.sum(0).double()
    actual_count = confusion.sum(1).double()
    precision = torch.where(predicted_count > 0, true_positive / predicted_count.clamp(min=1), torch.zeros(()))
    recall = torch.where(actual_count > 0, true_positive / actual_count.clamp(min=1), torch.zeros(()))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros(()))
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(actual_count[i])}
        for i, name in enumerate(class_names)
    }
    probabilities = logits.softmax(dim=1)
    return {
        "top1": top1,
        **top_k,
        "loss": float(nn.functional.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(probabilities, labels),
        "macro_f1": float(f1.mean()),
        "balanced_accuracy": balanced_accuracy(confusion),
        "count": count,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(confusion, dtype=float)
    normalized = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    class_names = [printable(name) for name in class_names]  # control characters have no glyph
    n = len(class_names)
    side = min(4 + 0.4 * n, 30)
    figure, axis = plt.subplots(figsize=(side, side * 0.85))
    image = axis.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        axis.set_xticks(range(n), class_names, rotation=90)
        axis.set_yticks(range(n), class_names)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                                  color="white" if normalized[i, j] > 0.5 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title or "confusion matrix (rows normalised)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_per_class_recall(per_class: dict[str, dict[str, Any]], path: Path, train_counts: dict[str, int] | None = None,
                          title: str = "") -> None:
    """A bar per class of its recall; with `train_counts` (training images per class) the classes run
    from the most trained to the least, each labelled with its count, so the tail sits at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_class)
    if train_counts:
        names.sort(key=lambda name: -int(train_counts.get(name, 0)))
    recalls = [per_class[name]["recall"] for name in names]
    labels = [printable(name) + (f" ({train_counts.get(name, 0)})" if train_counts else "") for name in names]
    figure, axis = plt.subplots(figsize=(min(4 + 0.35 * len(names), 30), 4.5))
    axis.bar(range(len(names)), recalls, color="tab:blue")
    if len(names) <= 60:
        axis.set_xticks(range(len(names)), labels, rotation=90)
    axis.set_ylim(0, 1)
    axis.set_ylabel("recall")
    axis.set_xlabel("class (training images), most trained first" if train_counts else "class")
    axis.set_title(title or "per-class recall")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
