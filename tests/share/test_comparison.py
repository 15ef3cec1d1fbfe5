"""`runs`: the table of two real runs that differ in their learning rate only."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

import visionzoo
from conftest import MODEL
from visionzoo.cli import main
from visionzoo.errors import SettingError
from visionzoo.share.comparison import plot_runs, runs_csv


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_one_row_per_run_with_the_settings_that_differ(tiny_runs):
    rows = visionzoo.runs([tiny_runs])
    assert {row["run"] for row in rows} == {str(tiny_runs / "fast"), str(tiny_runs / "slow")}
    for row in rows:
        summary = _summary(tiny_runs / row["run"].rsplit("/", 1)[-1])
        assert row["model"] == MODEL and row["weights"] == "none" and row["data"] == "builtin:shapes"
        assert row["top1"] == pytest.approx(summary["best_val_top1"], abs=1e-5)  # the history rounds to 6 places
        assert row["peak_memory_mb"] == summary["peak_memory_mb"] and row["params"] == summary["total_params"]
        assert row["time_s"] == pytest.approx(sum(summary["time"].values()), abs=0.1)
        assert row["status"] == "finished"
    settings = {key for row in rows for key in row if key.startswith("setting.")}
    assert "setting.lr" in settings and "setting.batch_size" not in settings  # only what differs
    assert [row["top1"] for row in rows] == sorted((row["top1"] for row in rows), reverse=True)


def test_sort_by_a_setting_and_by_memory(tiny_runs):
    by_lr = visionzoo.runs(tiny_runs, sort="setting.lr")
    assert [row["setting.lr"] for row in by_lr] == [0.05, 0.005]
    with pytest.raises(SettingError, match="cannot sort by 'nonsense'"):
        visionzoo.runs(tiny_runs, sort="nonsense")


def test_copies_of_run_files_and_model_folders_are_not_runs(tiny_runs, tmp_path):
    # a tracker's artifact folder holds config.json and best/ too, but no metrics_steps.jsonl
    shutil.copytree(tiny_runs / "fast", tmp_path / "artifacts", ignore=shutil.ignore_patterns("metrics_steps.jsonl"))
    shutil.copytree(tiny_runs / "slow", tmp_path / "slow")
    assert [row["run"] for row in visionzoo.runs(tmp_path)] == [str(tmp_path / "slow")]


def test_csv_json_and_plot_from_the_command_line(tiny_runs, tmp_path, capsys):
    assert main(["runs", str(tiny_runs), "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 2 and {"run", "model", "top1", "setting.lr", "peak_memory_mb"} <= set(table[0])
    assert main(["runs", str(tiny_runs), "--json", "--sort", "params"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    png = tmp_path / "top1.png"
    assert main(["runs", str(tiny_runs), "--plot", "top1", "--against", "params", "--plot-out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert "fast" in capsys.readouterr().out  # the table names the runs
    assert main(["runs", str(tmp_path / "empty-nothing")]) == 2


def test_plot_refuses_a_metric_no_run_has(tiny_runs, tmp_path):
    rows = visionzoo.runs(tiny_runs)
    with pytest.raises(SettingError, match="no run has both map"):
        plot_runs(rows, "map", against="time", path=tmp_path / "x.png")
    assert runs_csv(rows).splitlines()[0].startswith("run,model,weights,data")
