"""Multi-label metrics and thresholds: per-class AP and mAP, F1-tuned thresholds, micro / macro F1.

    from visionzoo.metrics.multilabel import multilabel_metrics, tune_thresholds
    thresholds = tune_thresholds(val_probs, val_targets)        # one per class, maximising F1
    metrics = multilabel_metrics(test_probs, test_targets, thresholds, class_names)
    metrics["mAP"], metrics["per_class"]["dog"]["ap"], metrics["micro_f1"]

Probabilities and targets are (N, C) arrays (targets 0/1). AP is the area under the
precision-recall curve as step sums over distinct scores (the definition scikit-learn's
`average_precision_score` uses); mAP averages it over the classes with a positive example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["average_precision", "tune_thresholds", "multilabel_metrics", "plot_per_class_ap", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.5  # for a class with no positive validation image, where F1 cannot choose


def _ranked_counts(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores from high to low, and true / false positives when predicting `scores >= each`."""
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(targets)[last_of_tie]
    false_positives = (last_of_tie + 1) - true_positives
    return scores[last_of_tie], true_positives, false_positives


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: sum over distinct thresholds of (recall step) x precision; NaN with no positive."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    _, tp, fp = _ranked_counts(scores, targets)
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0.0, tp / positives])
    return float((recall_step * precision).sum())


def tune_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the probability threshold that maximises F1 on (`probs`, `targets`).

    The threshold sits halfway between the lowest score kept and the next one below, so a slightly
    different score on new images falls on the side it fell on in validation."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    thresholds = []
    for c in range(probs.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        scores, tp, fp = _ranked_counts(probs[:, c], targets[:, c])
        f1 = 2 * tp / (tp + fp + positives)
        best = int(np.argmax(f1))
        below = scores[best + 1] if best + 1 < len(scores) else 0.0
        thresholds.append(float((scores[best] + below) / 2))
    return thresholds


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-12), 0.0)


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float] | None,
                       class_names: Sequence[str]) -> dict[str, Any]:
    """mAP, per-class AP / F1 / precision / recall, micro and macro F1, exact-match ratio at `thresholds`."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0.5
    count, num_classes = probs.shape
    if count == 0:
        raise ValueError("no samples to evaluate")
    thresholds = np.asarray(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * num_classes)
    predicted = probs >= thresholds[None, :]
    tp = (predicted & targets).sum(0).astype(np.float64)
    fp = (predicted & ~targets).sum(0).astype(np.float64)
    fn = (~predicted & targets).sum(0).astype(np.float64)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    f1 = _f1(tp, fp, fn)
    ap = np.array([average_precision(probs[:, c], targets[:, c]) for c in range(num_classes)])
    present = targets.sum(0) > 0
    per_class = {
        name: {"ap": None if np.isnan(ap[c]) else float(ap[c]), "f1": float(f1[c]), "precision": float(precision[c]),
               "recall": float(recall[c]), "threshold": float(thresholds[c]), "support": int(targets[:, c].sum())}
        for c, name in enumerate(class_names)
    }
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    bce = -(targets * np.log(clipped) + (~targets) * np.log(1 - clipped)).sum(1).mean()
    return {
        "task": "multilabel",
        "mAP": float(np.nanmean(ap)) if present.any() else float("nan"),
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": float(tp.sum() / max(tp.sum() + fp.sum(), 1)),
        "recall": float(tp.sum() / max(tp.sum() + fn.sum(), 1)),
        "exact_match": float((predicted == targets).all(1).mean()),
        "loss": float(bce),
        "count": count,
        "per_class": per_class,
    }


def plot_per_class_ap(per_class: dict[str, dict[str, Any]], path: Path, title: str = "") -> None:
    """A bar per class of its AP, lowest first, so the classes that need data stand out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(((name, row["ap"]) for name, row in per_class.items() if row["ap"] is not None), key=lambda r: r[1])
    height = min(2 + 0.25 * len(rows), 30)
    figure, axis = plt.subplots(figsize=(7, height))
    axis.barh([name for name, _ in rows], [ap for _, ap in rows], color="tab:blue")
    axis.set_xlim(0, 1)
    axis.set_xlabel("average precision")
    axis.set_title(title or "per-class AP")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
