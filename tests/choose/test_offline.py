"""`advise --data` without the Hub: every candidate's weights are checked before any work, those not
here are skipped by name, none left is a one-line error at once, and --budget-min bounds the whole run."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import visionzoo
from visionzoo.choose.candidates import Candidate

DATA = "builtin:shapes?size=32&train=40&val=20"
SRC = str(Path(__file__).resolve().parents[2] / "src")
HERE, AWAY = "mobilenetv3_small_050", "convnext_atto"  # a model whose weights are placed here, one whose are not


@pytest.fixture
def offline(tmp_path, monkeypatch) -> dict[str, str]:
    """HF_HUB_OFFLINE=1 and empty caches, for this process and the CLI processes a test starts."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HOME": str(tmp_path / "hf-home"),
           "VISIONZOO_CACHE": str(tmp_path / "cache")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def _cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visionzoo.cli", "advise", "--data", DATA, *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def _fake_latency(c: Candidate, target: str, image_size: int | None) -> tuple[float, str, str]:
    return 1.0, "fake", "cached 1 h ago, load 0.30"  # as the engine layer says a figure it reused


def test_offline_without_weights_fails_fast_naming_the_weights_flag(offline, tmp_path):
    started = time.monotonic()
    done = _cli(["--out", str(tmp_path / "out"), "--budget-min", "3"], offline, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    message = [line for line in done.stderr.splitlines() if line.strip() and "bake-off on" not in line]
    assert len(message) == 1 and "--weights NAME=FILE" in message[0] and "HF_HUB_OFFLINE" in message[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()  # nothing was done
    assert elapsed < 30, f"{elapsed:.1f} s to fail"


def test_offline_with_a_local_weights_file_runs_and_says_what_it_does_from_the_start(offline, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / f"{HERE}.pth"
    torch.save(visionzoo.create_model(HERE).state_dict(), weights)
    done = _cli(["--weights", f"{HERE}={weights}", "--out", str(tmp_path / "out"), "--image-size", "32",
                 "--finetune-top", "0", "--budget-min", "5"], offline, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines()[0].startswith(f"bake-off on {DATA} for target cpu within --budget-min 5")
    assert f"winner: {HERE}" in done.stdout


def test_candidates_whose_weights_are_not_here_are_skipped_by_name(offline, monkeypatch, capsys):
    from visionzoo.weights.files import weights_home

    catalog = importlib.import_module("visionzoo.weights.catalog")  # the module (a function shares its name)
    entries = [e for e in catalog.list_weights() if e.default and e.architecture in (HERE, AWAY)]
    monkeypatch.setattr(catalog, "list_weights", lambda: entries)
    here = next(e for e in entries if e.architecture == HERE)
    placed = weights_home() / here.hub["repo"] / "pytorch_model.bin"  # a file placed by hand, as the Hub's error says
    placed.parent.mkdir(parents=True)
    torch.save(visionzoo.create_model(HERE).state_dict(), placed)

    result = visionzoo.advise(data=DATA, out=Path(os.environ["VISIONZOO_CACHE"]) / "out", image_size=32,
                              finetune_top=0, measure_fn=_fake_latency)
    status = {c.name: c.status for c in result.candidates}
    assert status[AWAY].startswith("skipped: weights not here") and f"--weights {AWAY}=FILE" in status[AWAY]
    assert result.winner["name"] == HERE
    assert next(c for c in result.candidates if c.name == HERE).latency_note == "cached 1 h ago, load 0.30"
    said = capsys.readouterr().err
    assert f"skipped 1 candidate whose weights are not here ({AWAY}); add one with --weights NAME=FILE" in said


def test_the_budget_bounds_every_stage_not_only_the_fine_tunes(tmp_path):
    files = {}
    for name in (HERE, AWAY):
        files[name] = str(tmp_path / f"{name}.pth")
        torch.save(visionzoo.create_model(name).state_dict(), files[name])

    def slow_latency(c: Candidate, target: str, image_size: int | None) -> tuple[float, str]:
        time.sleep(1.5)
        return 1.0, "fake"

    started = time.monotonic()
    result = visionzoo.advise(data=DATA, weights=files, out=tmp_path / "out", image_size=32, finetune_top=1,
                              budget_min=1 / 60, measure_fn=slow_latency, progress=False)
    assert time.monotonic() - started < 30
    status = {c.name: c.status for c in result.candidates}
    # the first measurement outlasts the 1 s budget: the second is never measured, the first never probed
    assert sorted(status.values()) == ["not measured: --budget-min 0.0166667 ran out",
                                       "not probed: --budget-min 0.0166667 ran out"], status
    assert result.winner is None and "--budget-min" in result.message
