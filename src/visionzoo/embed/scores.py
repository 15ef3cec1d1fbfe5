"""Transferability scores: how well frozen features will serve the user's classes, before any training.

- LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML 2021): for each class, a Bayesian linear regression of the one-hot target on the features,
  with prior w ~ N(0, 1/alpha) and noise N(0, 1/beta); alpha and beta maximise the marginal
  likelihood (the evidence) by the paper's fixed-point updates, and the score is the maximised log
  evidence per image, averaged over the classes. Higher is better; it compares models on one task.
- k-NN leave-one-out: every training embedding classified by its k nearest other training
  embeddings (cosine, votes weighted exp(similarity / 0.07) as `probe.knn_predict`).
- the linear probe (`probe.run_probe`), fitted on the training embeddings and scored on validation.

Each score also gives one value per class, so that two models' scores can be compared class by
class (`visionzoo.choose.bakeoff.decision` uses the spread of those paired differences as the noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visionzoo.embed.embeddings import Embeddings
from visionzoo.embed.probe import KNN_TEMPERATURE, run_probe
from visionzoo.errors import SettingError

__all__ = ["SCORES", "Score", "knn_loo", "log_evidence", "logme", "logme_target", "transferability"]

SCORES = ("logme", "knn_loo", "linear")
KNN_LOO_K = 10


@dataclass
class Score:
    """One transferability score of one set of embeddings: the value and the value per class."""

    name: str
    value: float
    per_class: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "per_class": self.per_class, **self.extra}


# --- LogME -----------------------------------------------------------------------------------


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log p(target | features, alpha, beta) / n, computed directly (the dense D x D form; for checks).

    With A = alpha I + beta F^T F and m = beta A^-1 F^T y (the posterior mean):
    n/2 log beta + D/2 log alpha - n/2 log 2 pi - beta/2 |F m - y|^2 - alpha/2 |m|^2 - 1/2 log |A|.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)
    return float(evidence / n)


def logme_target(z: np.ndarray, singular: np.ndarray, d: int, n: int, y_norm2: float, max_iter: int = 100,
                 tol: float = 1e-8) -> tuple[float, float, float]:
    """(max log evidence / n, alpha, beta) for one target y of n values, given the features' nonzero
    singular values `singular` (F = U diag(s) V^T, F of n x d) and z = U^T y, |y|^2 = `y_norm2`.

    The fixed point of You et al. (Algorithm 1): with gamma = sum_i beta s_i^2 / (alpha + beta s_i^2),
    alpha <- gamma / |m|^2 and beta <- (n - gamma) / |F m - y|^2. In the SVD basis everything is a
    sum over the k nonzero singular values: m's coordinates are beta s z / (alpha + beta s^2), and the
    part of y outside the column space adds |y|^2 - |z|^2 to the residual at every step.
    """
    outside = max(float(y_norm2 - z @ z), 0.0)
    s2 = singular**2

    def moments(alpha: float, beta: float) -> tuple[np.ndarray, float, float]:
        shrink = alpha + beta * s2
        m_norm2 = float(np.sum((beta * singular * z / shrink) ** 2))
        residual = float(np.sum((alpha * z / shrink) ** 2)) + outside
        return shrink, m_norm2, residual

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        shrink, m_norm2, residual = moments(alpha, beta)
        gamma = float(np.sum(beta * s2 / shrink))
        new_alpha = gamma / max(m_norm2, 1e-300)
        new_beta = (n - gamma) / max(residual, 1e-300)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    shrink, m_norm2, residual = moments(alpha, beta)
    logdet = float(np.sum(np.log(shrink))) + (d - len(singular)) * np.log(alpha)
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * residual - alpha / 2 * m_norm2 - logdet / 2)
    return float(evidence / n), alpha, beta


def _spectrum(f: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nonzero singular values s of f, U^T targets): by the SVD of f when it has fewer rows than columns,
    else by the eigenvectors V of the d x d Gram matrix (U^T y = V^T f^T y / s), cheaper for n >> d."""
    if f.shape[0] <= f.shape[1]:
        u, singular, _ = np.linalg.svd(f, full_matrices=False)
        keep = singular > singular.max() * 1e-10
        return singular[keep], u[:, keep].T @ targets
    eigenvalues, v = np.linalg.eigh(f.T @ f)
    keep = eigenvalues > eigenvalues.max() * 1e-20  # singular values above 1e-10 of the largest
    singular = np.sqrt(eigenvalues[keep])
    return singular, (v[:, keep].T @ (f.T @ targets)) / singular[:, None]


def logme(features, labels, num_classes: int | None = None) -> Score:
    """LogME of features (N, D) for integer labels (N,): the mean over classes of each one-hot
    target's maximised log evidence per image (see the module docstring)."""
    f = np.asarray(features.numpy() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    y = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise SettingError(f"LogME needs features (N, D) and N labels with N >= 2; got {f.shape} and {y.shape}")
    classes = int(num_classes or y.max() + 1)
    targets = (y[:, None] == np.arange(classes)[None, :]).astype(np.float64)  # (N, C) one-hot
    singular, projected = _spectrum(f, targets)
    per_class, alphas, betas = [], [], []
    for c in range(classes):
        value, alpha, beta = logme_target(projected[:, c], singular, f.shape[1], len(f), float(targets[:, c].sum()))
        per_class.append(value)
        alphas.append(alpha)
        betas.append(beta)
    return Score("logme", float(np.mean(per_class)), per_class,
                 {"alpha": float(np.mean(alphas)), "beta": float(np.mean(betas))})


# --- k-NN leave-one-out ----------------------------------------------------------------------


@torch.no_grad()
def knn_loo(features, labels, k: int = KNN_LOO_K, num_classes: int | None = None,
            temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> Score:
    """Leave-one-out k-NN accuracy: each embedding classified by the k nearest others (cosine, votes
    weighted exp(similarity / temperature)); the value is the accuracy, per class its recall."""
    x = torch.as_tensor(features).float()
    y = torch.as_tensor(labels).long()
    if len(x) < 2:
        raise SettingError(f"k-NN leave-one-out needs at least 2 embeddings, got {len(x)}")
    classes = int(num_classes or int(y.max()) + 1)
    k = min(k, len(x) - 1)
    unit = F.normalize(x, dim=-1)
    predicted = []
    for start in range(0, len(x), chunk):
        queries = unit[start:start + chunk]
        similarity = queries @ unit.T  # (Q, N)
        rows = torch.arange(len(queries))
        similarity[rows, rows + start] = -float("inf")  # never its own neighbour
        nearest, neighbours = similarity.topk(k, dim=-1)
        votes = F.one_hot(y[neighbours], classes).float() * (nearest / temperature).exp().unsqueeze(-1)
        predicted.append(votes.sum(dim=1).argmax(dim=-1))
    correct = (torch.cat(predicted) == y).double()
    per_class = [float(correct[y == c].mean()) if bool((y == c).any()) else float("nan") for c in range(classes)]
    return Score("knn_loo", float(correct.mean()), per_class, {"k": k})


# --- all of them -----------------------------------------------------------------------------


def transferability(train: Embeddings | str, val: Embeddings | str | None = None,
                    scores: tuple[str, ...] = SCORES, seed: int = 0) -> dict[str, Score]:
    """{score name: Score} of training embeddings (a file or `Embeddings`): LogME and k-NN leave-one-out on
    the training embeddings, the linear probe fitted on them and scored on `val` (or on a held-out 20%)."""
    from visionzoo.embed.embeddings import load_embeddings

    train = load_embeddings(train) if not isinstance(train, Embeddings) else train
    val = load_embeddings(val) if val is not None and not isinstance(val, Embeddings) else val
    unknown = sorted(set(scores) - set(SCORES))
    if unknown:
        raise SettingError(f"unknown score {unknown[0]!r}; choose from {', '.join(SCORES)}")
    num_classes = len(train.classes)
    out: dict[str, Score] = {}
    if "logme" in scores:
        out["logme"] = logme(train.embeddings, train.labels, num_classes)
    if "knn_loo" in scores:
        out["knn_loo"] = knn_loo(train.embeddings, train.labels, num_classes=num_classes)
    if "linear" in scores:
        probe = run_probe(train, val, "linear", seed=seed)
        confusion = probe.confusion.double()
        recall = (confusion.diagonal() / confusion.sum(dim=1).clamp_min(1)).tolist()
        out["linear"] = Score("linear", probe.top1, recall, {"evaluated_on": probe.evaluated_on,
                                                             "num_eval": probe.num_eval, **probe.chosen})
    return out
