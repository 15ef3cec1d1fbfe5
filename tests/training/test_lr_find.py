"""The learning-rate range test: its suggestion on a problem whose good rates are known, and a sweep
over a real run that leaves the model as it was."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import SHAPES, TinyNet

import visionzoo
from visionzoo.cli import main
from visionzoo.errors import SettingError
from visionzoo.training.lr_find import lr_sweep, smooth_losses, suggest_lr, sweep_steps


@pytest.mark.parametrize("curvature", [10.0, 1000.0])
def test_suggestion_lies_in_the_stable_range_of_a_quadratic(curvature):
    """Plain gradient descent on loss = h/2 |w|^2 converges for lr < 2/h, fastest at 1/h: the suggestion
    falls in [0.01/h, 1/h] and so moves with the curvature."""
    weights = torch.ones(10, requires_grad=True)
    optimizer = torch.optim.SGD([weights], lr=0.0)

    def step(lr: float) -> float:
        optimizer.param_groups[0]["lr"] = lr
        loss = 0.5 * curvature * (weights ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    lrs, losses = lr_sweep(step, 1e-7, 10.0, 100)
    assert len(lrs) < 100 and lrs[-1] > 2 / curvature  # stopped once past the stable range, where it diverged
    suggested = suggest_lr(lrs, smooth_losses(losses, 0.96))
    assert 0.01 / curvature <= suggested <= 1 / curvature


def test_a_curve_that_never_falls_suggests_a_tenth_of_its_lowest_point_and_steps_are_bounded():
    lrs = [10.0 ** (i / 10 - 5) for i in range(40)]
    rising = [1.0 + 0.01 * i for i in range(40)]
    assert suggest_lr(lrs, rising) == pytest.approx(lrs[4] / 10)  # the first tenth is not read
    dropping = [1.0] * 30 + [1.0 - 0.01 * i * i for i in range(10)]  # steepest at the end: 3x below it
    assert suggest_lr(lrs, dropping) == pytest.approx(lrs[39] / 3)
    assert sweep_steps(2) == 30 and sweep_steps(10) == 50 and sweep_steps(1000) == 200
    with pytest.raises(SettingError, match="at least 5"):
        sweep_steps(10, steps=2)


def test_sweep_of_a_small_run_writes_the_curve_and_leaves_the_model_unchanged(tmp_path, one_thread):
    torch.manual_seed(0)
    model = TinyNet(dropout=0.0)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    result = visionzoo.lr_find(model, SHAPES, out=tmp_path / "sweep", batch_size=16, workers=0, steps=40,
                               optimizer="adamw", progress=False)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert result.plot.stat().st_size > 5000 and len(result.lrs) == len(result.losses) <= 40
    assert result.lrs[0] == pytest.approx(1e-7) and all(a < b for a, b in zip(result.lrs, result.lrs[1:]))
    assert result.lrs[0] < result.suggested_lr < result.lrs[-1]
    assert result.flag == f"--lr {result.suggested_lr:.2g}"
    saved = json.loads((tmp_path / "sweep" / "lr_find.json").read_text())
    assert saved["suggested_lr"] == result.suggested_lr and saved["losses"] == result.losses


def test_cli_sweeps_a_run_folder_with_its_settings_and_prints_the_flag(tmp_path, one_thread, capsys):
    own = tmp_path / "own"  # the config.json of a run of a network of the user's own
    own.mkdir()
    (own / "config.json").write_text(json.dumps({"model": None, "data": SHAPES, "requested": {}}))
    with pytest.raises(SettingError, match="network of the user's own"):
        visionzoo.lr_find(own)
    registered = visionzoo.train("mobilenetv3_small_050", SHAPES, out=tmp_path / "mnv3", epochs=1, batch_size=32,
                                 workers=0, plots=False, tensorboard=False, progress=False).run_dir
    weights = (registered / "best" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["lr-find", str(registered), "--steps", "12", "--end-lr", "1"]) == 0
    out = capsys.readouterr().out
    assert "suggested: --lr " in out and (registered / "lr_find.png").exists()
    assert json.loads((registered / "lr_find.json").read_text())["steps"] <= 12
    assert (registered / "best" / "model.safetensors").read_bytes() == weights
