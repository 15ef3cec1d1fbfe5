"""Calibrated probabilities and an "unknown" answer, fitted on validation after training.

    from visionzoo.metrics.calibration import fit_head
    head = fit_head(val_logits, val_labels, task="multiclass")   # {"task", "temperature", "ood": {...}}

- **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", 2017): one
  scalar T divides the logits; it is fitted by LBFGS on the validation NLL (cross-entropy, or
  binary cross-entropy for multi-label). Dividing by T never changes the ranking of the classes,
  so accuracy, mAP and the top-k stay as they were; only the confidences move.
- **Unknowns**: an OOD score per image (higher: more in-distribution) and the threshold that keeps
  `keep` (default 95%) of the in-distribution validation images. The scores: `msp` (max softmax
  probability), `energy` (T * logsumexp(logits / T)), and, for measurement only, `knn` (distance
  to the k-th nearest training embedding, Sun et al., 2022), which needs a bank of embeddings that
  the ONNX predictor would have to carry. The default, `energy`, was picked by
  `benchmarks/calibration_ood.py` (see the README's figures); logit scores run in every back end.
- **Multi-label thresholds**: per class, tuned on the calibrated validation probabilities to
  maximise F1 (`visionzoo.metrics.multilabel.tune_thresholds`), or one fixed value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from visionzoo.errors import DataError, SettingError
from visionzoo.heads import OOD_SCORES, ood_score
from visionzoo.metrics.classification import calibration_gap, expected_calibration_error
from visionzoo.metrics.multilabel import tune_thresholds

__all__ = ["head_of", "with_head", "fit_temperature", "negative_log_likelihood", "calibration_error", "calibration_report", "fit_head",
           "ood_threshold", "auroc", "fpr_at_tpr", "knn_score", "summarise_ood", "plot_reliability", "DEFAULT_OOD_SCORE",
           "DEFAULT_KEEP"]

DEFAULT_OOD_SCORE = "energy"
DEFAULT_KEEP = 0.95


def head_of(model) -> dict[str, Any] | None:
    """The head facts in the model's spec (see `visionzoo.heads`), or None: a model not trained by
    visionzoo's trainer, or a network visionzoo did not make."""
    from visionzoo.factory import find_spec

    spec = find_spec(model)
    return dict(spec.head) if spec is not None and spec.head else None


def with_head(model, head: dict[str, Any] | None):
    """`model` with `head` in its spec (save_model writes it to config.json); a network of one's own
    gets a bare spec first, as `visionzoo.save_model` gives it."""
    from visionzoo.factory import ModelSpec, find_spec, with_spec

    spec = find_spec(model) or ModelSpec(type(model).__name__, {}, {}, None, None)
    return with_spec(model, spec, head=dict(head) if head else None)


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                            task: str = "multiclass") -> float:
    """Mean NLL per image of logits / T: cross-entropy, or summed binary cross-entropy (multi-label)."""
    scaled = logits.float() / temperature
    if task == "multilabel":
        return float(F.binary_cross_entropy_with_logits(scaled, labels.float(), reduction="none").sum(1).mean())
    return float(F.cross_entropy(scaled, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, task: str = "multiclass", *,
                    max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the validation NLL of logits / T (LBFGS on log T)."""
    logits, labels = logits.detach().float(), labels.detach()
    if len(logits) == 0:
        raise DataError("fitting a temperature needs validation images")
    log_t = torch.zeros((), requires_grad=True)  # log T: T stays positive without a constraint
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        scaled = logits / log_t.exp()
        if task == "multilabel":
            loss = F.binary_cross_entropy_with_logits(scaled, labels.float(), reduction="none").sum(1).mean()
        else:
            loss = F.cross_entropy(scaled, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature):
        return 1.0
    return float(np.clip(temperature, 0.05, 20.0))


def calibration_error(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                      task: str = "multiclass", bins: int = 15) -> float:
    """ECE of logits / T: of the top class (Guo et al.), or over every (image, class) probability
    for multi-label data, where each is a yes/no forecast of its own."""
    scaled = logits.float() / temperature
    if task == "multilabel":
        probs = torch.sigmoid(scaled).reshape(-1)
        truth = labels.float().reshape(-1)
        return calibration_gap(probs.numpy(), truth.numpy(), bins)
    return expected_calibration_error(scaled.softmax(1), labels, bins)


def _reliability_bins(logits: torch.Tensor, labels: torch.Tensor, temperature: float, task: str, bins: int):
    scaled = logits.float() / temperature
    if task == "multilabel":
        confidence = torch.sigmoid(scaled).reshape(-1).numpy()
        correct = labels.float().reshape(-1).numpy()
    else:
        probs = scaled.softmax(1)
        top, predicted = probs.max(1)
        confidence, correct = top.numpy(), predicted.eq(labels).float().numpy()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    accuracy = np.array([correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)])
    counts = np.bincount(which, minlength=bins)
    return edges, accuracy, counts


def plot_reliability(logits: torch.Tensor, labels: torch.Tensor, temperature: float, path: Path, *,
                     task: str = "multiclass", bins: int = 15) -> None:
    """Reliability diagram (accuracy against confidence per bin), before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for axis, t, name in ((axes[0], 1.0, "before"), (axes[1], temperature, f"after (T = {temperature:.3g})")):
        edges, accuracy, counts = _reliability_bins(logits, labels, t, task, bins)
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        axis.bar(centres, np.nan_to_num(accuracy), width=width * 0.95, color="tab:blue", label="observed")
        axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ece = calibration_error(logits, labels, t, task, bins)
        axis.set_title(f"{name}: ECE {ece:.4f}")
        axis.set_xlabel("confidence" if task == "multiclass" else "predicted probability")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy" if task == "multiclass" else "observed frequency")
    axes[0].legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, temperature: float, task: str) -> dict[str, Any]:
    """ECE and NLL of the raw logits and of logits / T."""
    return {"temperature": float(temperature),
            "ece_before": calibration_error(logits, labels, 1.0, task),
            "ece_after": calibration_error(logits, labels, temperature, task),
            "nll_before": negative_log_likelihood(logits, labels, 1.0, task),
            "nll_after": negative_log_likelihood(logits, labels, temperature, task)}


# --- unknowns ------------------------------------------------------------------------------------


def ood_threshold(in_distribution_scores: np.ndarray, keep: float = DEFAULT_KEEP) -> float:
    """The score above which `keep` of the in-distribution images lie."""
    if not 0.0 < keep <= 1.0:
        raise SettingError(f"the share of in-distribution images to keep must be in (0, 1], got {keep}")
    scores = np.asarray(in_distribution_scores, dtype=np.float64)
    if scores.size == 0:
        raise DataError("choosing an OOD threshold needs validation images")
    # the k-th lowest score, k = floor((1 - keep) * n): the images at or above it are at least `keep` of all
    rejected = min(int(np.floor((1.0 - keep) * scores.size + 1e-9)), scores.size - 1)
    return float(np.sort(scores)[rejected])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an in-distribution image scores above an unknown one (ties count half)."""
    in_scores, out_scores = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    everything = np.concatenate([in_scores, out_scores])
    order = everything.argsort(kind="mergesort")
    ranks = np.empty(len(everything))
    sorted_scores = everything[order]
    # average ranks over ties (Mann-Whitney U)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(everything)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    u = ranks[: len(in_scores)].sum() - len(in_scores) * (len(in_scores) + 1) / 2
    return float(u / (len(in_scores) * len(out_scores)))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of unknown images accepted at the threshold that accepts `tpr` of in-distribution ones."""
    threshold = ood_threshold(in_scores, tpr)
    return float((np.asarray(out_scores) >= threshold).mean())


def knn_score(bank: torch.Tensor, features: torch.Tensor, k: int = 10) -> np.ndarray:
    """Minus the distance from each L2-normalised embedding to its k-th nearest in `bank` (Sun et al.,
    "Out-of-Distribution Detection with Deep Nearest Neighbors", 2022)."""
    bank = F.normalize(bank.float(), dim=1)
    features = F.normalize(features.float(), dim=1)
    k = min(k, len(bank))
    distances = torch.cdist(features, bank)
    return (-distances.topk(k, dim=1, largest=False).values[:, -1]).numpy()


def fit_head(logits: torch.Tensor, labels: torch.Tensor, task: str = "multiclass", *, calibrate: bool = True,
             threshold: float | None = None, reject: bool = True, ood_score_name: str = DEFAULT_OOD_SCORE,
             keep: float = DEFAULT_KEEP) -> dict[str, Any]:
    """The head facts of a trained model (see `visionzoo.heads`) from its validation logits."""
    if task not in ("multiclass", "multilabel"):
        raise SettingError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    head: dict[str, Any] = {"task": task}
    temperature = fit_temperature(logits, labels, task) if calibrate else 1.0
    head["temperature"] = temperature
    scaled = logits.float() / temperature
    if task == "multilabel":
        if threshold is not None:
            if not 0.0 < threshold < 1.0:
                raise SettingError(f"threshold must be between 0 and 1, got {threshold}")
            head["thresholds"] = [float(threshold)] * logits.shape[1]
        else:
            head["thresholds"] = tune_thresholds(torch.sigmoid(scaled).numpy(), labels.numpy())
    elif reject:
        if ood_score_name not in OOD_SCORES:
            raise SettingError(f"OOD score {ood_score_name!r} cannot be saved with a model; choose one of "
                             f"{', '.join(OOD_SCORES)}")
        scores = ood_score(logits.float().numpy(), ood_score_name, temperature)
        head["ood"] = {"score": ood_score_name, "threshold": ood_threshold(scores, keep), "keep": float(keep)}
    return head


def summarise_ood(in_logits: torch.Tensor, out_logits: torch.Tensor, temperature: float,
                  scores: Sequence[str] = OOD_SCORES) -> dict[str, dict[str, float]]:
    """AUROC and FPR@95%TPR of each logit score, in-distribution against unknown images."""
    result = {}
    for name in scores:
        inside = ood_score(in_logits.float().numpy(), name, temperature)
        outside = ood_score(out_logits.float().numpy(), name, temperature)
        result[name] = {"auroc": auroc(inside, outside), "fpr95": fpr_at_tpr(inside, outside, 0.95)}
    return result
