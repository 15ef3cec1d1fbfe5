"""Label issues: images whose label their out-of-sample prediction doubts.

Out-of-sample class probabilities come from k-fold linear probes (probe.py's logistic
regression, its L2 strength chosen by `run_probe`); cleanlab's `find_label_issues` (confident
learning, Northcutt et al., 2021) picks the suspects and its label quality score ranks them
(`score`: 0..1, lower is more likely mislabelled).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from visionzoo.embed.embeddings import Embeddings
from visionzoo.embed.probe import FINAL_ITERATIONS, fit_logistic_regression, run_probe
from visionzoo.errors import require_extra

__all__ = ["stratified_folds", "out_of_sample_probabilities", "label_issues"]


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A stratified fold per image: each class's images dealt round-robin in a seeded order."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    return fold


def out_of_sample_probabilities(embeddings: torch.Tensor, labels: np.ndarray, num_classes: int, *, folds: int = 5,
                                seed: int = 0) -> np.ndarray:
    """(N, C) class probabilities of each image from a linear probe fitted on the other folds."""
    x, y = embeddings.float(), torch.as_tensor(labels, dtype=torch.long)
    classes = [str(c) for c in range(num_classes)]
    try:  # the L2 strength, chosen on held-out embeddings as `visionzoo probe` chooses it
        chosen = run_probe(Embeddings(x, y, [""] * len(y), classes), method="linear", seed=seed).chosen["weight_decay"]
    except ValueError:  # a class too small to hold any out: the sweep's middle strength
        chosen = 1e-3
    fold = stratified_folds(labels, folds, seed)
    probabilities = np.zeros((len(y), num_classes), dtype=np.float64)
    for k in range(folds):
        held, fit = torch.from_numpy(fold == k), torch.from_numpy(fold != k)
        if not held.any():
            continue
        mean, std = x[fit].mean(0), x[fit].std(0).clamp_min(1e-6)
        weight, bias = fit_logistic_regression((x[fit] - mean) / std, y[fit], num_classes, chosen,
                                               max_iter=FINAL_ITERATIONS)
        probabilities[held.numpy()] = F.linear((x[held] - mean) / std, weight, bias).softmax(-1).double().numpy()
    return probabilities


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the suspect labels, most suspect first, and every image's label quality (cleanlab)."""
    find_label_issues = require_extra("cleanlab.filter", "audit", "visionzoo audit").find_label_issues
    get_label_quality_scores = require_extra("cleanlab.rank", "audit", "visionzoo audit").get_label_quality_scores
    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros(0, dtype=np.int64), np.ones(len(labels))
    # cleanlab wants the classes present to be 0..K-1: renumber, keeping the columns of those classes
    renumber = np.full(probabilities.shape[1], -1)
    renumber[present] = np.arange(len(present))
    compact = probabilities[:, present]
    compact = compact / compact.sum(1, keepdims=True)
    given = renumber[labels]
    quality = get_label_quality_scores(given, compact)
    issues = find_label_issues(given, compact, return_indices_ranked_by="self_confidence")
    return np.asarray(issues, dtype=np.int64), quality
