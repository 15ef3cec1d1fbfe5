"""Imbalanced classes (issue 33): the auto choice and why, each balancing mode's numbers on a
synthetic imbalanced set (the weights' values, the logit adjustment's prior, the sampler's class
counts), the imbalance line and counts a run records, and balanced accuracy in `eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import visionzoo
from visionzoo.data.samples import ArraySamples, DataSplits
from visionzoo.errors import SettingError
from visionzoo.metrics.classification import balanced_accuracy, classification_metrics
from visionzoo.training.balance import (
    AUTO_MIN_RATIO,
    AUTO_MODE,
    choose_balance,
    effective_number_weights,
    imbalance_ratio,
    inverse_frequency_weights,
)
from visionzoo.training.losses import build_loss
from visionzoo.training.settings import TrainSettings, resolve_settings

COUNTS = np.array([60, 20, 6])  # imbalance 10
LABELS = np.repeat(np.arange(3), COUNTS)


def test_imbalance_ratio_and_the_auto_choice_say_why():
    assert imbalance_ratio(COUNTS) == pytest.approx(10.0)
    assert imbalance_ratio([5, 0]) == float("inf")
    mode, why = choose_balance("auto", COUNTS)
    assert mode == AUTO_MODE == "effective" and "imbalance 10.0" in why and "effective-number" in why
    mode, why = choose_balance("auto", [50, 48, 40])
    assert mode == "none" and "nearly balanced" in why and f"{AUTO_MIN_RATIO:g}" in why
    assert choose_balance("sampler", COUNTS) == ("sampler", "user")
    assert choose_balance("auto", None, multilabel=True)[0] == "none"  # multi-label stays as it was
    with pytest.raises(SettingError, match="single-label"):
        choose_balance("logit-adjust", None, multilabel=True)
    with pytest.raises(SettingError, match="unknown class balance 'reweight'"):
        choose_balance("reweight", COUNTS)


def test_resolved_settings_record_the_auto_rule():
    settings = resolve_settings(TrainSettings(), "resnet18", class_counts=COUNTS, num_train=int(COUNTS.sum()))
    assert settings.class_balance == "effective"
    assert settings.sources["class_balance"].startswith("auto: class imbalance 10.0")
    given = resolve_settings(TrainSettings(class_balance="effective"), "resnet18", class_counts=COUNTS)
    assert given.class_balance == "effective" and given.sources["class_balance"] == "user"


def test_weight_values():
    inverse = inverse_frequency_weights(COUNTS)
    np.testing.assert_allclose(inverse, COUNTS.sum() / (3 * COUNTS))
    np.testing.assert_allclose((inverse * COUNTS).sum(), COUNTS.sum())  # each class weighs N / C in total
    beta = 0.99
    effective = effective_number_weights(COUNTS, beta)
    by_hand = np.array([(1 - beta) / (1 - beta ** n) for n in COUNTS])
    np.testing.assert_allclose(effective, by_hand * 3 / by_hand.sum())
    assert effective.sum() == pytest.approx(3.0)
    # between no weighting (beta 0) and inverse frequency (beta -> 1)
    np.testing.assert_allclose(effective_number_weights(COUNTS, 0.0), np.ones(3))
    near_one = effective_number_weights(COUNTS, 1 - 1e-9)
    np.testing.assert_allclose(near_one, inverse * 3 / inverse.sum(), rtol=1e-4)
    assert effective[2] / effective[0] < inverse[2] / inverse[0]


@pytest.mark.parametrize("mode", ["weights", "effective", "logit-adjust", "none"])
def test_each_loss_is_cross_entropy_with_its_weights_or_prior(mode):
    settings = TrainSettings(class_balance=mode, label_smoothing=0.0, balance_beta=0.9, balance_tau=1.5)
    loss = build_loss(settings, LABELS, 3, torch.device("cpu"))
    logits, targets = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 1, 0, 2, 2])
    prior = torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32)
    weight = {"weights": torch.tensor(inverse_frequency_weights(COUNTS), dtype=torch.float32),
              "effective": torch.tensor(effective_number_weights(COUNTS, 0.9), dtype=torch.float32)}.get(mode)
    shifted = logits + 1.5 * prior.log() if mode == "logit-adjust" else logits
    expected = nn.functional.cross_entropy(shifted, targets, weight=weight)
    assert float(loss(logits, targets)) == pytest.approx(float(expected), rel=1e-6)
    if mode == "logit-adjust":  # the tail's logits must rise further to win: its loss is larger
        assert float(loss(torch.zeros(1, 3), torch.tensor([2]))) > float(loss(torch.zeros(1, 3), torch.tensor([0])))


def test_sampler_draws_the_classes_about_equally():
    from visionzoo.data.config import resolve_data_config
    from visionzoo.data.loaders import build_loaders

    splits = _imbalanced_splits()
    loaders = build_loaders(splits.train, None, data_config=resolve_data_config({"crop_pct": 1.0}, input_size=(3, 16, 16)),
                            image_size=16, batch_size=8, val_batch_size=8, augment="none", balanced=True, num_classes=3,
                            workers=0, device=torch.device("cpu"))
    drawn = []
    for epoch in range(20):
        loaders.sampler.set_position(epoch, 0)
        drawn.extend(LABELS[loaders.sampler.epoch_table()[:, 0]])
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.04)  # the data itself: 0.70, 0.23, 0.07


def test_balanced_accuracy_is_the_mean_recall():
    labels = torch.tensor([0] * 8 + [1] * 2)
    logits = torch.zeros(10, 2)
    logits[:, 0] = 1.0  # always the big class: 80% top-1, 50% balanced
    metrics = classification_metrics(logits, labels, ["big", "small"])
    assert metrics["top1"] == pytest.approx(0.8) and metrics["balanced_accuracy"] == pytest.approx(0.5)
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 0, 1]])  # class 1 absent: left out
    assert balanced_accuracy(confusion) == pytest.approx((0.75 + 0.5) / 2)


def _imbalanced_splits() -> DataSplits:
    rng = np.random.default_rng(0)
    colours = np.array([[220, 30, 30], [30, 30, 220], [30, 200, 30]])

    def images(labels):
        return np.clip(colours[labels][:, None, None, :] + rng.normal(0, 20, (len(labels), 16, 16, 3)),
                       0, 255).astype(np.uint8)

    val_labels = np.repeat(np.arange(3), 4)
    return DataSplits(["red", "blue", "green"], ArraySamples(images(LABELS), LABELS),
                      ArraySamples(images(val_labels), val_labels), "imbalanced colours", native_size=16)


def test_a_run_reports_the_imbalance_and_eval_the_tail(tmp_path, one_thread, capsys):
    from visionzoo.cli import main

    result = visionzoo.train("resnet18", _imbalanced_splits(), out=tmp_path / "run", epochs=1, batch_size=16,
                             workers=0, progress=False, plots=False, tensorboard=False, calibrate=False, reject=False)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["resolved"]["class_balance"] == "effective"
    assert config["settings_source"]["class_balance"].startswith("auto: class imbalance 10.0")
    assert config["train_class_counts"] == {"red": 60, "blue": 20, "green": 6}
    assert "class imbalance 10.0 (largest class 'red' 60 images, smallest 'green' 6)" in capsys.readouterr().err
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert 0 <= summary["best_val_balanced_accuracy"] <= 1
    # eval of a saved model of the run: balanced accuracy printed, in --json, and a recall plot
    folder = tmp_path / "colours"
    for name, label in (("red", 0), ("blue", 1), ("green", 2)):
        (folder / name).mkdir(parents=True)
        from PIL import Image

        for i in range(2):
            Image.fromarray(_imbalanced_splits().val.images[label * 4 + i]).save(folder / name / f"{i}.png")
    capsys.readouterr()
    assert main(["eval", str(result.run_dir / "best"), "--data", str(folder), "--json",
                 "--out", str(tmp_path / "eval")]) == 0
    printed = json.loads(capsys.readouterr().out)
    recalls = [row["recall"] for row in printed["per_class"].values()]
    assert printed["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert (tmp_path / "eval" / "per_class_recall.png").stat().st_size > 0
    assert main(["eval", str(result.run_dir / "best"), "--data", str(folder), "--out", str(tmp_path / "eval")]) == 0
    assert "balanced accuracy" in capsys.readouterr().out
