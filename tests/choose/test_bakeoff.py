"""The bake-off (`advise --data`): offline on builtin:shapes with small random-initialised models
whose weight files the tests write. Each case checks what it names on real measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import visionzoo
from visionzoo.choose.bakeoff.state import STATE_FILE
from visionzoo.choose.candidates import Candidate, candidate_pool, spread

DATA = "builtin:shapes?size=32&train=40&val=20"
MODELS = ("mobilenetv3_small_050", "convnext_atto")
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name in MODELS:
        torch.manual_seed(0)
        files[name] = str(folder / f"{name}.pth")
        torch.save(visionzoo.create_model(name).state_dict(), files[name])
    return files


def _run(weight_files, out, target_override="cpu", **options):
    options.setdefault("finetune_top", 1)
    options.setdefault("finetune_settings", {"epochs": 1})
    return visionzoo.advise(data=DATA, target=target_override, weights=weight_files, out=out, image_size=32,
                            progress=False, **options)


@pytest.fixture(scope="module")
def first(weight_files, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bakeoff")
    cache = tmp_path_factory.mktemp("embeddings")
    return _run(weight_files, out, cache_dir=cache), out, cache


def test_json_shape_winner_export_and_plot(first):
    result, out, _ = first
    shape = result.as_dict()
    assert set(shape) == {"target", "constraints", "data", "candidates", "winner"}
    assert shape["target"] == "cpu" and shape["constraints"] == {}
    assert shape["data"]["train"] == 40 and shape["data"]["val"] == 20 and len(shape["data"]["classes"]) == 10
    assert [c["name"] for c in shape["candidates"]] and all(
        set(c) == {"name", "weights", "probe_top1", "finetune_top1", "latency_ms", "engine", "params", "status",
                   "scores"} for c in shape["candidates"])
    probed = [c for c in shape["candidates"] if c["probe_top1"] is not None]
    assert len(probed) == 2 and all(0.0 <= c["probe_top1"] <= 1.0 for c in probed)
    assert all(set(c["scores"]) == {"logme", "knn_loo", "linear"} and c["scores"]["linear"] == c["probe_top1"]
               for c in probed)
    tuned = [c for c in shape["candidates"] if c["finetune_top1"] is not None]
    assert len(tuned) == 1  # --finetune-top 1; the other is not fine-tuned and says why
    assert tuned[0]["name"] == max(probed, key=lambda c: c["scores"]["logme"])["name"]  # ranked by LogME
    assert any(c["status"].startswith("not fine-tuned: LogME rank 2") for c in shape["candidates"])
    winner = shape["winner"]
    assert set(winner) == {"name", "weights", "top1", "scored_by", "status", "latency_ms", "engine", "run_dir",
                           "export", "decision"}
    assert winner["name"] == tuned[0]["name"] and winner["top1"] == tuned[0]["finetune_top1"]
    assert winner["scored_by"] == "fine-tune" and winner["status"] == tuned[0]["status"] == "winner (fine-tuned)"
    assert Path(winner["export"]).is_file() and (Path(winner["run_dir"]) / "best" / "config.json").is_file()
    assert Path(result.plot).is_file() and Path(result.plot).stat().st_size > 10_000
    assert json.loads((out / "bakeoff.json").read_text())["winner"] == json.loads(json.dumps(winner))
    assert result.commands["train"].startswith(f"visionzoo train --model {winner['name']} --pretrained ")
    assert result.commands["export"].startswith("visionzoo export ")
    assert result.embedded == 2 * (40 + 20)


def test_embedding_cache_is_reused_across_runs(first, weight_files, tmp_path):
    result, _, cache = first
    again = _run(weight_files, tmp_path / "other-out", cache_dir=cache, finetune_top=0)
    assert again.embedded == 0  # a new --out, the same images, models and weights: nothing embedded
    assert {c.name: c.probe_top1 for c in again.candidates} == {c.name: c.probe_top1 for c in result.candidates}


def test_constraints_hold_on_the_measured_latency_and_params(first, weight_files, tmp_path):
    result, _, cache = first
    measured = {c.name: c.latency_ms for c in result.candidates}
    limit = (min(measured.values()) * max(measured.values())) ** 0.5  # between the two, as measured before
    fast = _run(weight_files, tmp_path / "fast", cache_dir=cache, finetune_top=0, latency_ms=limit)
    for c in fast.candidates:  # judged on this run's own measurements
        if c.latency_ms > limit:
            assert c.status.startswith("dropped:") and "--latency-ms" in c.status and c.probe_top1 is None
        else:
            assert c.probe_top1 is not None and not c.status.startswith("dropped")
    if fast.winner is not None:
        assert fast.winner["latency_ms"] <= limit
    small = _run(weight_files, tmp_path / "small", cache_dir=cache, finetune_top=0, max_params_m=2.0)
    assert small.winner["name"] == "mobilenetv3_small_050"  # 1.6M params; convnext_atto has 3.7M
    assert next(c for c in small.candidates if c.name == "convnext_atto").status.startswith("dropped: 3.70M params")

    nothing = _run(weight_files, tmp_path / "none", cache_dir=cache, latency_ms=min(measured.values()) / 10)
    assert nothing.winner is None and nothing.as_dict()["winner"] is None
    assert "--latency-ms rules out every candidate" in nothing.message
    closest = min(nothing.candidates, key=lambda c: c.latency_ms)
    assert f"Closest: {closest.name}" in nothing.message


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "visionzoo.cli", "advise", "--data", DATA, *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False)


def test_resume_after_kill_9(weight_files, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": SRC, "VISIONZOO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [*[a for name, file in weight_files.items() for a in ("--weights", f"{name}={file}")], "--out", str(out),
            "--image-size", "32", "--finetune-epochs", "1", "--finetune-top", "2", "--finalists", "top", "--json"]
    killed = _cli(args, {**env, "VISIONZOO_BAKEOFF_KILL_AT": "after-finetune"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((out / STATE_FILE).read_text())
    finished = [name for name, entry in state["candidates"].items() if entry.get("finetune", {}).get("state") == "done"]
    assert len(finished) == 1 and all(entry.get("probe_top1") is not None for entry in state["candidates"].values())
    epochs_file = Path(state["candidates"][finished[0]]["finetune"]["run_dir"]) / "metrics_epochs.csv"
    rows_before = epochs_file.read_text()
    embeddings = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "embeddings").iterdir()}
    assert len(embeddings) == 4  # train and val of both candidates

    resumed = _cli(args, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    shape = json.loads(resumed.stdout)
    assert all(c["finetune_top1"] is not None for c in shape["candidates"])  # the second was fine-tuned now
    assert epochs_file.read_text() == rows_before  # the finished fine-tune was reused, not rerun
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "embeddings").iterdir()} == embeddings


def test_two_fine_tunes_run_at_once_one_per_device(weight_files, tmp_path):
    # enough epochs that each run outlasts the other's start-up (a 1-epoch run ends in under a second)
    result = _run(weight_files, tmp_path / "out", finetune_top=2, finalists="top", devices=["cpu", "cpu"],
                  finetune_settings={"epochs": 8})
    spans = []
    for c in result.candidates:
        assert c.status in ("fine-tuned", "winner (fine-tuned)") or "successive halving" in c.status, c.status
        started, validated = Path(c.run_dir) / "config.json", Path(c.run_dir) / "metrics_epochs.csv"
        spans.append((started.stat().st_mtime, validated.stat().st_mtime))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a  # the two processes overlapped in time


def test_the_budget_stops_the_running_fine_tune_and_skips_the_rest(weight_files, tmp_path):
    # --budget-min bounds the whole run: measure and probe first (reused below), then fine-tune within seconds
    _run(weight_files, tmp_path / "out", finetune_top=0, finetune_settings={"epochs": 50})
    result = _run(weight_files, tmp_path / "out", finetune_top=2, finalists="top", budget_min=20 / 60,
                  finetune_settings={"epochs": 50})
    state = json.loads((tmp_path / "out" / STATE_FILE).read_text())
    finetunes = [entry["finetune"] for entry in state["candidates"].values()]
    assert sorted(f["state"] for f in finetunes) == ["skipped", "stopped"]
    assert all("--budget-min" in f["reason"] for f in finetunes)
    assert state["finetune_seconds"] < 60  # 50 epochs were asked for; the budget ended them at once
    assert result.winner is not None and all(c.probe_top1 is not None for c in result.candidates)


def test_target_gpu_needs_a_gpu_and_measures_there(weight_files, tmp_path, monkeypatch):
    from visionzoo.errors import SettingError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SettingError, match="target 'gpu' measures on a CUDA GPU and none is visible"):
        _run(weight_files, tmp_path / "none", target_override="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU's latency, measured by a stand-in
    calls = []

    def measure(c, target, image_size):
        calls.append((c.name, target))
        return {"mobilenetv3_small_050": 2.0, "convnext_atto": 30.0}[c.name], "pytorch-eager-bf16"

    result = visionzoo.advise(data=DATA, target="gpu", weights=weight_files, out=tmp_path / "gpu", image_size=32,
                              finetune_top=0, latency_ms=10, progress=False, measure_fn=measure, devices=["cpu"])
    assert sorted(calls) == [("convnext_atto", "gpu"), ("mobilenetv3_small_050", "gpu")]
    assert result.target == "gpu" and result.winner["name"] == "mobilenetv3_small_050"
    assert result.winner["engine"] == "pytorch-eager-bf16" and result.winner["export"].endswith(".onnx")
    assert not Path(result.winner["export"]).name.endswith("int8.onnx")  # no int8 export for a GPU


def test_commercial_keeps_only_weights_whose_licence_allows_it(monkeypatch):
    import dataclasses
    import importlib

    catalog = importlib.import_module("visionzoo.weights.catalog")  # the module (a function shares its name)

    real = {e.architecture: e for e in catalog.list_weights() if e.default and e.num_classes == 1000 and e.imagenet
            and e.imagenet.get("top1") is not None and e.architecture in ("resnet18", "resnet50")}
    # resnet18: a better non-commercial entry beside its default; resnet50: non-commercial weights only
    entries = [real["resnet18"],
               dataclasses.replace(real["resnet18"], name="resnet18.nc_better", default=True, license="cc-by-nc-4.0",
                                   imagenet={**real["resnet18"].imagenet, "top1": 99.0}),
               dataclasses.replace(real["resnet50"], license="cc-by-nc-4.0")]
    monkeypatch.setattr(catalog, "list_weights", lambda: entries)
    every, none_dropped = candidate_pool(None, commercial=False)
    assert not none_dropped and {(c.name, c.weights) for c in every} == {("resnet18", "resnet18.nc_better"),
                                                                      ("resnet50", real["resnet50"].name)}
    usable, dropped = candidate_pool(None, commercial=True)
    assert [(c.name, c.weights) for c in usable] == [("resnet18", real["resnet18"].name)]
    assert [c.name for c in dropped] == ["resnet50"]
    assert dropped[0].status == "dropped: licence cc-by-nc-4.0 does not allow commercial use"


# --- the pure parts -----------------------------------------------------------------------------


def test_spread_takes_families_before_sizes():
    pool = [Candidate(name=f"{family}{size}", weights="", family=family, params=size, top1=top1)
            for family, top1 in (("a", 80.0), ("b", 70.0)) for size in (1, 2, 3)]
    order = [c.name for c in spread(pool)]
    assert order[:2] == ["a2", "b2"] and sorted(order) == sorted(c.name for c in pool)
    assert order[2:4] == ["a1", "b1"] and order[4:] == ["a3", "b3"]



def test_visionzoo_advise_is_callable_whether_or_not_the_module_was_imported():
    import importlib

    from visionzoo.errors import SettingError

    module = importlib.import_module("visionzoo.choose.advice")
    for advise in (visionzoo.advise, module.advise):  # the lazy top-level name, and the function in its module
        with pytest.raises(SettingError, match="target must be one of"):
            advise("tpu")
        with pytest.raises(SettingError, match="apply only with data="):
            advise("cpu", candidates=3)


def test_a_fine_tune_spec_and_the_command_it_shows(tmp_path):
    from visionzoo.choose.bakeoff.finetune import finetune_recipe, run_spec
    from visionzoo.training.worker import command_line

    c = Candidate(name="convnext_atto", weights="w.pth", family="convnext", params=3_700_000)
    run_dir = tmp_path / "runs" / "convnext_atto"
    fresh = run_spec(c, DATA, run_dir, 6, 32, {"epochs": 6, "lr": 0.01, "ema": True}, "cpu", resume=False)
    assert fresh["settings"] == {"recipe": finetune_recipe(), "epochs": 6, "val_every": 3, "image_size": 32,
                                 "lr": 0.01, "ema": True, "device": "cpu", "progress": False}
    assert fresh["result"] == str(tmp_path / "runs" / "convnext_atto.result.json")
    assert command_line(fresh) == ["train", "--model", "convnext_atto", "--pretrained", "w.pth", "--data", DATA,
                                   "--recipe", finetune_recipe(), "--epochs", "6", "--val-every", "3", "--out",
                                   str(run_dir), "--image-size", "32", "--lr", "0.01", "--ema"]
    resumed = run_spec(c, DATA, run_dir, 6, 32, {"lr": 0.01}, "cuda:1", resume=True)
    assert resumed["resume"] and resumed["settings"] == {"device": "cuda:1", "progress": False}


def _stopped_winner_result(tmp_path, monkeypatch):
    """The bake-off of issue 30: the best probe's fine-tune was stopped by the budget after it validated at
    94.8% (its probe: 92.8%); a second candidate was only probed."""
    from types import SimpleNamespace

    from visionzoo.choose.bakeoff import result as stage
    from visionzoo.choose.bakeoff.state import BakeoffState

    monkeypatch.setattr(stage, "export_winner", lambda c, *args: (str(tmp_path / "winner" / "model.onnx"),
                                                                  f"visionzoo export {c.run_dir}/best"))
    tuned = Candidate("mobilenetv3_small_050", "a.pth", top1=58.0, latency_ms=2.0, engine="onnxruntime-fp32",
                      probe_top1=0.928, finetune_top1=0.948, status="stopped: --budget-min spent",
                      run_dir=str(tmp_path / "runs" / "mobilenetv3_small_050"))
    probed = Candidate("convnext_atto", "b.pth", top1=75.0, latency_ms=9.0, engine="onnxruntime-fp32",
                       probe_top1=0.90, status="not fine-tuned: probe rank 2 > --finetune-top 1")
    request = SimpleNamespace(out=tmp_path, target="cpu", data="builtin:shapes")
    state = BakeoffState(tmp_path, {"data": "builtin:shapes"})
    winner, commands = stage.choose_winner([tuned, probed], [tuned], request, state, None, None)
    return stage.BakeoffResult("cpu", {}, {"train": 40, "val": 20, "classes": ["a", "b"]}, [tuned, probed], winner,
                               commands=commands, out=str(tmp_path)), tuned


def test_the_winner_line_json_table_and_plot_tell_one_story(tmp_path, monkeypatch, capsys):
    """Issue 30: the table said the winner fine-tuned to 94.8%, the winner line 'top-1 92.8%' with 'probe
    only: nothing was fine-tuned', while the export was the fine-tuned model; the plot drew it in red
    under a legend saying blue is fine-tuned."""
    import argparse

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from visionzoo.choose.bakeoff import result as stage
    from visionzoo.cli import choose as cli

    result, tuned = _stopped_winner_result(tmp_path, monkeypatch)
    winner = result.winner
    assert winner["name"] == tuned.name and winner["top1"] == 0.948 and winner["scored_by"] == "fine-tune"
    assert winner["status"] == tuned.status == "winner (fine-tuned; stopped: --budget-min spent)"
    assert winner["run_dir"] == tuned.run_dir and "probe only" not in winner["status"]
    stage.write_result(result, None, tmp_path)
    saved = json.loads((tmp_path / "bakeoff.json").read_text())
    assert saved["winner"]["top1"] == saved["candidates"][0]["finetune_top1"] == 0.948
    assert saved["candidates"][0]["status"] == saved["winner"]["status"]

    monkeypatch.setattr("visionzoo.choose.bakeoff.bakeoff", lambda *a, **k: result)
    args = argparse.Namespace(data="builtin:shapes", target="cpu", latency_ms=None, max_params=None,
                              commercial=False, weights=None, candidates=2, finetune_top=1, budget_min=None,
                              out=str(tmp_path), plot=None, devices=None, image_size=None, progress=False,
                              json=False, finetune_epochs=None, finalists="adaptive",
                              rank_by="logme")
    capsys.readouterr()
    assert cli.cmd_bakeoff(args) == 0
    out = capsys.readouterr().out
    [line] = [row for row in out.splitlines() if row.startswith("winner:")]
    assert "(fine-tuned; stopped: --budget-min spent) top-1 94.8%" in line and "92.8" not in line
    [row] = [row for row in out.splitlines() if "mobilenetv3_small_" in row and row.startswith("│")]
    assert "92.8%" in row and "94.8%" in row and "winner" in row  # the table: probe, fine-tuned, status

    fig, ax = plt.subplots()
    points = stage.draw_bakeoff(result, ax)
    assert [(p.name, round(p.top1, 1), p.scored_by, p.winner) for p in points] == [
        (tuned.name, 94.8, "fine-tune", True), ("convnext_atto", 90.0, "probe", False)]
    drawn = {c.get_label(): c for c in ax.collections}
    fine_tuned = drawn["fine-tuned on your validation set"]
    assert to_hex(fine_tuned.get_facecolors()[0]) == to_hex("tab:blue")
    assert [tuple(xy) for xy in fine_tuned.get_offsets()] == [(2.0, pytest.approx(94.8))]
    assert to_hex(drawn["linear probe on your validation set"].get_facecolors()[0]) == to_hex("tab:cyan")
    ring = drawn[f"winner: {tuned.name}, fine-tuned 94.8%"]
    assert to_hex(ring.get_edgecolors()[0]) == to_hex("tab:red") and len(ring.get_facecolors()) == 0
    assert [tuple(xy) for xy in ring.get_offsets()] == [(2.0, pytest.approx(94.8))]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert {"fine-tuned on your validation set", "linear probe on your validation set",
            f"winner: {tuned.name}, fine-tuned 94.8%"} <= set(legend)
    assert not any("blue" in text or "cyan" in text for text in legend)  # the legend shows colours, not names
    plt.close(fig)


def test_a_named_candidate_without_pretrained_weights_is_refused(weight_files):
    from visionzoo.errors import SettingError

    # efficientnet_lite1 has no catalog weights: random weights must never win, so it is refused by name
    usable, dropped = candidate_pool({"convnext_atto": weight_files["convnext_atto"]},
                                     names=["convnext_atto", "efficientnet_lite1"])
    assert [c.name for c in usable] == ["convnext_atto"] and usable[0].weights == weight_files["convnext_atto"]
    [refused] = dropped
    assert refused.name == "efficientnet_lite1" and refused.status.startswith("refused: efficientnet_lite1 has no "
                                                                               "pretrained ImageNet weights")
    assert "--weights efficientnet_lite1=FILE" in refused.status
    with pytest.raises(SettingError, match="no named candidate has pretrained weights"):
        candidate_pool(None, names=["efficientnet_lite1"])
    from visionzoo.cli import build_parser

    parse = lambda *given: build_parser().parse_args(["advise", "--data", "d", *given])  # noqa: E731
    assert parse("--candidates", "3").candidates == 3
    assert parse("--candidates", "resnet18, convnext_atto").candidates == ["resnet18", "convnext_atto"]
    assert parse().finalists == "adaptive" and parse().rank_by == "logme"
    with pytest.raises(SettingError, match="rank_by must be one of logme, knn_loo, linear"):
        visionzoo.advise(data=DATA, weights=weight_files, rank_by="imagenet", progress=False)
    with pytest.raises(SettingError, match="not among the candidates"):
        candidate_pool({"convnext_atto": weight_files["convnext_atto"]}, names=["mobilenetv3_small_050"])


def test_a_state_from_before_the_scores_resumes_and_gains_them(first, weight_files):
    result, out, cache = first
    state = json.loads((out / STATE_FILE).read_text())
    for entry in state["candidates"].values():
        entry.pop("scores")
    (out / STATE_FILE).write_text(json.dumps(state))
    again = _run(weight_files, out, cache_dir=cache)
    assert again.embedded == 0  # the scores came from the embedding cache
    assert {c.name: c.scores for c in again.candidates} == {c.name: c.scores for c in result.candidates}
    assert all("scores" in entry for entry in json.loads((out / STATE_FILE).read_text())["candidates"].values())
