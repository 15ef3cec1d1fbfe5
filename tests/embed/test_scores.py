"""Transferability scores: LogME against a direct maximisation of the evidence, k-NN leave-one-out against
a brute-force count, and the scores ordering features that separate the classes above features that do not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from visionzoo.embed.embeddings import Embeddings, save_embeddings
from visionzoo.embed.scores import knn_loo, log_evidence, logme, transferability


def _blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize("n, dim", [(30, 5), (12, 20)])  # more images than dimensions, and fewer
def test_logme_fixed_point_reaches_the_direct_maximum_of_the_evidence(n, dim):
    features, labels = _blobs(n // 3, 3, dim, spread=1.0, seed=n)
    score = logme(features, labels)
    for c in range(3):
        target = (labels == c).astype(float)
        best = minimize(lambda p, t=target: -log_evidence(features, t, math.exp(p[0]), math.exp(p[1])),
                        x0=np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000})
        assert score.per_class[c] == pytest.approx(-best.fun, abs=1e-5)  # the same maximum
        assert score.per_class[c] >= -best.fun - 1e-7  # and never below it
    assert score.value == pytest.approx(np.mean(score.per_class))


def test_logme_evidence_at_the_fixed_point_matches_the_dense_formula():
    features, labels = _blobs(8, 2, 4, spread=0.5)
    single = logme(features, labels, num_classes=1)  # class 0's one-hot target alone
    direct = log_evidence(features, (labels == 0).astype(float), single.extra["alpha"], single.extra["beta"])
    assert single.value == pytest.approx(direct, rel=1e-9, abs=1e-9)


def test_logme_prefers_features_that_separate_the_classes():
    separated, labels = _blobs(40, 4, 16, spread=0.3)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=separated.shape)
    mixed = 0.2 * separated + noise
    assert logme(separated, labels).value > logme(mixed, labels).value > logme(noise, labels).value


def _brute_force_loo(x, y, k, temperature=0.07):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    correct = []
    for i in range(len(x)):
        others = sorted(((float(unit[i] @ unit[j]), j) for j in range(len(x)) if j != i), reverse=True)[:k]
        votes: dict[int, float] = {}
        for similarity, j in others:
            votes[int(y[j])] = votes.get(int(y[j]), 0.0) + math.exp(similarity / temperature)
        correct.append(max(votes, key=votes.get) == y[i])
    return float(np.mean(correct))


def test_knn_loo_matches_a_brute_force_count():
    x, y = _blobs(7, 3, 6, spread=2.5, seed=3)  # overlapping, so some images are wrong
    for k in (1, 3, 5):
        score = knn_loo(torch.tensor(x), torch.tensor(y), k=k, chunk=4)  # chunks smaller than N: offsets matter
        assert score.value == pytest.approx(_brute_force_loo(x, y, k))
        assert 0 < score.value < 1
    worked = knn_loo(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.8, 0.2]]),
                     torch.tensor([0, 0, 1, 1, 1]), k=1)
    # nearest other by cosine: 0->1, 1->0 (cos 0.994 against 0.991 for 4), 2->3, 3->2 (all right), 4->1 (wrong)
    assert worked.value == pytest.approx(4 / 5) and worked.per_class == pytest.approx([1.0, 2 / 3])


def test_transferability_from_files_and_the_cli(tmp_path, capsys):
    from visionzoo.cli import main

    x, y = _blobs(10, 3, 8, spread=0.5)
    files = {}
    for part, (xs, ys) in {"train": (x, y), "val": _blobs(4, 3, 8, spread=0.5)}.items():
        files[part] = tmp_path / f"{part}.safetensors"
        save_embeddings(Embeddings(torch.tensor(xs).float(), torch.tensor(ys), [f"{part}{i}.png" for i in range(len(ys))],
                                   ["a", "b", "c"]), files[part])
    scores = transferability(str(files["train"]))
    assert set(scores) == {"logme", "knn_loo", "linear"} and scores["knn_loo"].value == 1.0
    assert main(["probe", "--features", str(files["train"]), "--val", str(files["val"]), "--scores", "--json"]) == 0
    import json

    printed = json.loads(capsys.readouterr().out)
    assert printed["logme"]["value"] == pytest.approx(scores["logme"].value)
    assert printed["linear"]["evaluated_on"] == "validation file"
    assert main(["probe", "--features", str(files["train"]), "--scores"]) == 0
    assert "LogME" in capsys.readouterr().out
