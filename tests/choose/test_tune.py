"""The tuner with a fake trial function: successive halving prunes poor trials, the best trial's command
is written, and a tuner killed by SIGKILL goes on where it stopped, retrying the trial it was in."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("optuna")

import visionzoo  # noqa: E402
from visionzoo.errors import SettingError  # noqa: E402


def fake_trial(settings, folder, report):
    """A score that grows with the epochs towards a ceiling set by the lr (best at 1e-3)."""
    ceiling = 1 - abs(math.log10(settings["lr"]) + 3) / 2
    score = 0.0
    for epoch in range(1, settings["epochs"] + 1):
        score = ceiling * (1 - 0.5 ** epoch)
        report(epoch, score)
    return score


def _rows(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(folder / "trials.csv")))


def test_poor_trials_are_pruned_and_the_best_command_is_written(tmp_path):
    result = visionzoo.tune("resnet18", "builtin:shapes", trials=10, out=tmp_path / "tune", run_trial=fake_trial,
                            max_epochs=6, batch_size=16)
    rows = _rows(tmp_path / "tune")
    assert result.trials == 10 == len(rows)
    pruned = [row for row in rows if row["state"] == "PRUNED"]
    assert result.pruned == len(pruned) >= 1
    assert all(int(row["epochs_run"]) < int(row["epochs"]) for row in pruned)  # stopped before their last epoch
    completed = [float(row["value"]) for row in rows if row["state"] == "COMPLETE"]
    assert result.best_value == max(completed)
    assert result.command.startswith("visionzoo train resnet18 --data builtin:shapes --pretrained default")
    assert f"--lr {result.best_settings['lr']:.3g}" in result.command and "--batch-size 16" in result.command
    assert (tmp_path / "tune" / "best_command.txt").read_text().strip() == result.command
    assert result.importance_plot is not None and result.importance_plot.stat().st_size > 1000
    with pytest.raises(SettingError, match="searched by tune"):
        visionzoo.tune("resnet18", "builtin:shapes", out=tmp_path / "other", run_trial=fake_trial, lr=0.1)


KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from visionzoo.choose.tune import tune
    out = Path(sys.argv[1])

    def trial(settings, folder, report):
        started = len(list(out.glob("started-*")))
        (out / f"started-{started}").write_text(repr(settings["lr"]))
        if started == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        report(1, settings["lr"])
        return settings["lr"]

    tune("resnet18", "builtin:shapes", trials=5, out=out, run_trial=trial, max_epochs=2)
""")


def test_a_tuner_killed_mid_trial_resumes_and_retries_that_trial(tmp_path):
    out = tmp_path / "tune"
    out.mkdir()
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    process = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120)
    assert process.returncode == -9, process.stderr[-2000:]
    killed_lr = float((out / "started-2").read_text())
    seen = []

    def trial(settings, folder, report):
        seen.append(settings)
        report(1, settings["lr"])
        return settings["lr"]

    result = visionzoo.tune("resnet18", "builtin:shapes", trials=5, out=out, run_trial=trial, max_epochs=2)
    assert seen[0]["lr"] == killed_lr  # the interrupted trial first, with its own settings
    assert len(seen) == 3 and result.trials == 5  # two finished before the kill
    states = [row["state"] for row in _rows(out)]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") + states.count("PRUNED") == 5
