"""The weight EMA: saved in every checkpoint (a resumed run ends on the uninterrupted run's weights),
validated beside the raw weights, and best/ holds whichever validated better, as the summary says."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from test_train import SHAPES, TinyNet, _InterruptAt, _photo_folder

import visionzoo
from visionzoo.training.checkpoint import load_checkpoint
from visionzoo.training.validation import validate_beside_ema

QUIET = dict(workers=0, progress=False, plots=False, tensorboard=False)


def test_the_better_of_ema_and_raw_weights_is_kept_and_a_tie_goes_to_the_ema():
    raw, ema = nn.Linear(1, 1), nn.Linear(1, 1)
    scores = {id(raw): 0.7, id(ema): 0.6}
    metrics, module = validate_beside_ema(lambda m: {"top1": scores[id(m)]}, raw, ema, "top1")
    assert module is raw and metrics == {"top1": 0.7, "weights": "raw", "ema_top1": 0.6, "raw_top1": 0.7}
    scores[id(ema)] = 0.7
    metrics, module = validate_beside_ema(lambda m: {"top1": scores[id(m)]}, raw, ema, "top1")
    assert module is ema and metrics["weights"] == "ema"
    metrics, module = validate_beside_ema(lambda m: {"top1": scores[id(m)]}, raw, None, "top1")
    assert module is raw and "weights" not in metrics


def test_ema_resumes_exactly_after_ctrl_c(tmp_path, one_thread):
    settings = dict(epochs=2, batch_size=16, lr=0.05, ema=True, ema_decay=0.8, deterministic=True, **QUIET)
    torch.manual_seed(0)
    visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "whole", **settings)
    torch.manual_seed(0)
    assert visionzoo.train(_InterruptAt(8), SHAPES, out=tmp_path / "cut", **settings).interrupted
    weights, state = load_checkpoint(tmp_path / "cut" / "checkpoint")
    assert state["global_step"] == 7 and set(state["ema"]) == set(weights)
    assert not torch.equal(state["ema"]["fc.weight"], weights["fc.weight"])  # the average, not the weights
    visionzoo.train(TinyNet(), None, resume=tmp_path / "cut", progress=False)
    for folder in ("last", "best"):
        whole = load_file(tmp_path / "whole" / folder / "model.safetensors")
        resumed = load_file(tmp_path / "cut" / folder / "model.safetensors")
        for key in whole:
            torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=f"{folder}/{key}")


def test_best_holds_the_raw_weights_when_they_validate_better_and_the_summary_says_so(tmp_path, one_thread):
    """An EMA that has hardly moved from a zero head (decay 0.9999: one class for every image) loses to the
    trained weights on two classes told apart by colour."""
    torch.manual_seed(0)
    model = TinyNet(num_classes=2, dropout=0.0)
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    data = _photo_folder(tmp_path / "photos", train=24, val=4)
    run = visionzoo.train(model, str(data), out=tmp_path / "run", epochs=3, batch_size=8, lr=0.01, image_size=16,
                          optimizer="adamw", ema=True, ema_decay=0.9999, cache=False, **QUIET).run_dir
    rows = list(csv.DictReader(open(run / "metrics_epochs.csv")))
    assert {"weights", "val_top1_ema", "val_top1_raw"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    best = rows[summary["best_epoch"] - 1]
    assert summary["best_weights"] == best["weights"] == "raw"
    assert float(best["val_top1_raw"]) > float(best["val_top1_ema"])
    assert summary["best_val_top1"] == pytest.approx(float(best["val_top1_raw"]), abs=1e-6)
    best_weights = load_file(run / "best" / "model.safetensors")
    last_weights = load_file(run / "last" / "model.safetensors")  # last/ is the EMA
    assert not torch.equal(best_weights["fc.weight"], last_weights["fc.weight"])


def test_the_ema_of_a_transfer_run_averages_over_a_third_of_its_steps():
    from visionzoo.errors import SettingError
    from visionzoo.training.recipes import ema_decay_for, transfer_plan
    from visionzoo.training.settings import TrainSettings, resolve_settings

    assert ema_decay_for(60) == pytest.approx(0.95)  # a time constant of 20 steps
    assert ema_decay_for(3000) == pytest.approx(0.999)
    assert ema_decay_for(10) == 0.9 and ema_decay_for(10**7) == 0.9998  # the bounds
    plan = transfer_plan(300, epochs=4)  # 19 steps per epoch at batch 16: 76 steps
    assert plan["ema_decay"] == (pytest.approx(1 - 3 / 76), "an average over about a third of the run's 76 "
                                                             "optimizer steps")
    assert transfer_plan(300, ema_decay=0.99)["ema_decay"] == (0.99, "user")
    auto = resolve_settings(TrainSettings(ema=True, epochs=4), "resnet18", pretrained=True, num_train=300)
    assert auto.ema and auto.ema_decay == pytest.approx(1 - 3 / 76) and auto.sources["ema"] == "user"
    assert resolve_settings(TrainSettings(), "resnet18").ema_decay == 0.9998  # from scratch: the usual
    assert resolve_settings(TrainSettings(), "resnet18", pretrained=True, num_train=300).sources["ema"].startswith(
        "recipe auto")
    with pytest.raises(SettingError, match="ema_decay must be in \\[0, 1\\), got 1.0"):
        resolve_settings(TrainSettings(ema_decay=1.0), "resnet18")
