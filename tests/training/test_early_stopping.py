"""Early stopping, the transfer recipes' default: the rule (patience from the recipe, the user's value
kept, 0 for never), a run that stops on a plateau and says so in its summary, and an exact resume of a
run that stops early (its patience counter is in the checkpoint; a run resumed after its stopping epoch
trains no further)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train import SHAPES, TinyNet, _InterruptAt
from test_transfer import Small, _photos

import visionzoo
from visionzoo.errors import SettingError
from visionzoo.training.recipes import TRANSFER_PATIENCE, transfer_plan
from visionzoo.training.settings import TrainSettings, resolve_settings

QUIET = dict(workers=0, progress=False, plots=False, tensorboard=False)


def test_the_transfer_recipes_stop_after_their_patience_unless_told_otherwise():
    patience, why = transfer_plan(300)["early_stopping"]
    assert patience == TRANSFER_PATIENCE == 2 and "best/ keeps the best epoch" in why
    assert transfer_plan(300, early_stopping=0)["early_stopping"] == (0, "user")
    assert transfer_plan(300, early_stopping=5)["early_stopping"] == (5, "user")
    auto = resolve_settings(TrainSettings(), "resnet18", pretrained=True, num_train=300, num_val=30)
    assert auto.early_stopping == 2 and auto.sources["early_stopping"].startswith("transfer runs peak early")
    off = resolve_settings(TrainSettings(early_stopping=0), "resnet18", pretrained=True, num_train=300)
    assert off.early_stopping == 0 and off.sources["early_stopping"] == "user"
    scratch = resolve_settings(TrainSettings(), "resnet18", num_train=300)
    assert scratch.early_stopping is None and "early_stopping" not in scratch.sources  # from scratch: never
    with pytest.raises(SettingError, match="early_stopping must be 0 .* got -1"):
        resolve_settings(TrainSettings(early_stopping=-1), "resnet18", pretrained=True, num_train=300)


def test_a_transfer_run_stops_on_a_plateau_and_its_summary_says_so(tmp_path, one_thread):
    """lr 0: the validation never improves after the first epoch, so the default patience of 2 ends the
    run after epoch 3 of the data-size rule's many epochs."""
    data = _photos(tmp_path / "photos", train=6, val=3)
    run = visionzoo.train(Small(), data, out=tmp_path / "run", recipe="finetune", image_size=16, lr=0.0,
                          **QUIET).run_dir
    config = json.loads((run / "config.json").read_text())
    epochs = config["resolved"]["epochs"]
    assert epochs > 3 and config["resolved"]["early_stopping"] == 2
    assert config["settings_source"]["early_stopping"].startswith("transfer runs peak early")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["best_epoch"] == 1
    assert summary["stopped_early"] == (f"val top-1 had not improved for 2 epochs after epoch 3 of {epochs}; "
                                        "best/ holds epoch 1")
    assert (run / "best" / "model.safetensors").exists()
    never = visionzoo.train(Small(), data, out=tmp_path / "never", recipe="finetune", image_size=16, lr=0.0,
                            epochs=5, early_stopping=0, **QUIET).run_dir
    summary = json.loads((never / "summary.json").read_text())
    assert summary["epochs"] == 5 and "stopped_early" not in summary


def test_a_run_that_stops_early_resumes_exactly_and_is_not_extended(tmp_path, one_thread):
    """Uninterrupted, this run stops one epoch after its best, before epoch 8 (here val top-1 0.125,
    0.1875, then lower). Interrupted in epoch 2 and resumed, it stops at the same epoch with the same
    weights; resumed again after it stopped, it trains no further."""
    settings = dict(epochs=8, batch_size=16, lr=0.05, early_stopping=1, deterministic=True, **QUIET)
    torch.manual_seed(0)
    whole = visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "whole", **settings)
    # The rule, not one trajectory: near chance (val loss 2.29 of ln 10), another CPU's kernels may
    # order the epochs differently.
    tops = [r["val_top1"] for r in whole.history]
    assert whole.best_epoch == tops.index(max(tops)) and len(tops) == whole.best_epoch + 2 < 8, tops
    torch.manual_seed(0)
    assert visionzoo.train(_InterruptAt(10), SHAPES, out=tmp_path / "cut", **settings).interrupted
    resumed = visionzoo.train(TinyNet(), None, resume=tmp_path / "cut", progress=False)
    assert [r["epoch"] for r in resumed.history] == [r["epoch"] for r in whole.history]
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.history[-1]["val_top1"] == whole.history[-1]["val_top1"]
    for folder in ("last", "best"):
        expected = load_file(tmp_path / "whole" / folder / "model.safetensors")
        got = load_file(tmp_path / "cut" / folder / "model.safetensors")
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{folder}/{key}")
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("whole", "cut")]
    assert summaries[0]["stopped_early"] == summaries[1]["stopped_early"]
    again = visionzoo.train(TinyNet(), None, resume=tmp_path / "cut", progress=False)
    assert len(again.history) == 3 and "stopped_early" in json.loads((tmp_path / "cut" / "summary.json").read_text())


def test_the_command_line_overrides_patience_and_ema():
    from visionzoo.cli import build_parser
    from visionzoo.training.command import settings_from_args

    given = settings_from_args(build_parser().parse_args(["train", "--model", "resnet18", "--data", "d",
                                                          "--early-stopping", "0", "--no-ema", "--epochs", "9"]))
    assert given == {"early_stopping": 0, "ema": False, "epochs": 9}
    resolved = resolve_settings(TrainSettings(**given), "resnet18", pretrained=True, num_train=300)
    assert (resolved.early_stopping, resolved.ema, resolved.epochs) == (0, False, 9)
    assert {resolved.sources[name] for name in given} == {"user"}
    left_out = settings_from_args(build_parser().parse_args(["train", "--model", "resnet18", "--data", "d"]))
    assert not {"early_stopping", "ema", "ema_decay", "epochs"} & set(left_out)  # the recipe decides
