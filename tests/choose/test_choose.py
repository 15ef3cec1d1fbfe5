"""Choosing an architecture: benchmark, advise, evolution (figures are measured, never asserted)."""

from __future__ import annotations

import json
import os

import pytest

from visionzoo.choose.advice import advise, recommended_recipe
from visionzoo.choose.benchmark import BenchmarkSettings, benchmark_model
from visionzoo.choose.candidates import Candidate, Constraints, candidate_pool, pareto_front
from visionzoo.cli import main
from visionzoo.measure import percentile

QUICK = dict(min_seconds=0.05, min_repeats=3, warmup=1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_percentile_interpolates():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile(values, 90) == pytest.approx(4.6)


def test_benchmark_reports_every_figure_and_caches(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine: the figure may be reused
    settings = BenchmarkSettings(batch_sizes=(1, 2), img_size=64, train=True, **QUICK)
    result = benchmark_model("resnet18", settings, use_cache=False)
    assert result.params == 11_689_512 and result.img_size == 64
    assert result.latency_ms["p50"] <= result.latency_ms["p90"] <= result.latency_ms["p99"]
    assert result.latency_ms["repeats"] >= 3
    assert set(result.throughput) == {1, 2} and all(v > 0 for v in result.throughput.values())
    assert result.train_throughput > 0
    assert result.peak_memory_mb is None or result.peak_memory_mb >= 0
    again = benchmark_model("resnet18", settings)
    assert again.cached and again.throughput == result.throughput and again.cache_note.startswith("cached ")
    assert again.load_1min == 0.0 and again.as_dict()["measured_at"] == result.measured_at


def test_a_latency_cached_under_load_is_measured_again_and_says_why(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (os.cpu_count() + 1.5, 0.0, 0.0))
    settings = BenchmarkSettings(batch_sizes=(1,), img_size=32, **QUICK)
    assert benchmark_model("resnet18", settings, use_cache=False).load_1min == os.cpu_count() + 1.5
    again = benchmark_model("resnet18", settings)
    assert not again.cached and again.cache_note.startswith("measured again: cached under load (1-minute load")


def test_the_cache_reuse_rule():
    from visionzoo.measure import CACHE_MAX_AGE_S, cache_verdict

    now, cores = 1_000_000_000.0, 4
    idle = {"measured_at": now - 3600, "load_1min": 0.5, "cpu_count": cores}
    assert cache_verdict(idle, now) is None
    assert cache_verdict({**idle, "load_1min": float(cores)}, now) is None  # every core busy, none oversubscribed
    assert "under load (1-minute load average 4.10 on 4 cores)" in cache_verdict({**idle, "load_1min": 4.1}, now)
    assert "days ago" in cache_verdict({**idle, "measured_at": now - CACHE_MAX_AGE_S - 1}, now)
    assert cache_verdict(idle, now, max_age_s=60) is not None
    assert "before the load and time were recorded" in cache_verdict({"p50": 3.0}, now)  # an old cache file
    assert cache_verdict({**idle, "load_1min": None}, now) is None  # no load average here (Windows): age alone


def test_benchmark_vs_timm_interleaved_ratio():
    pytest.importorskip("timm")
    result = benchmark_model("resnet18", BenchmarkSettings(batch_sizes=(1,), img_size=64, vs_timm=True, **QUICK),
                             use_cache=False)
    ratios = result.timm["ratio_ours_over_timm"]
    assert ratios["latency_p50"] > 0 and ratios["time_b1"] > 0
    assert result.timm["latency_ms"]["repeats"] == result.latency_ms["repeats"]  # interleaved: same count


def test_benchmark_settings_reject_bad_values():
    with pytest.raises(ValueError, match="precision"):
        BenchmarkSettings(precision="int4")
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        BenchmarkSettings(precision="fp16")


def test_benchmark_cli_json_and_csv(capsys, tmp_path):
    code = main(["benchmark", "resnet18", "--img-size", "48", "--batch-sizes", "1,2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"torch", "threads", "processor", "device"} <= set(out["environment"])
    assert out["results"][0]["name"] == "resnet18" and set(out["results"][0]["throughput"]) == {"1", "2"}
    csv_file = tmp_path / "bench.csv"
    assert main(["benchmark", "resnet18", "--img-size", "48", "--batch-sizes", "1,2", "--csv", str(csv_file)]) == 0
    assert csv_file.read_text().splitlines()[0].startswith("name,params,gmacs")


def test_benchmark_cli_unknown_model_fails_cleanly(capsys):
    assert main(["benchmark", "resnet5"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_candidates_come_from_the_catalog():
    pool, _ = candidate_pool()
    names = {c.name for c in pool}
    assert {"resnet50", "mobilenetv3_large_100"} <= names
    resnet50 = next(c for c in pool if c.name == "resnet50")
    assert 75 < resnet50.top1 < 85 and resnet50.weights.startswith("resnet50.")


def test_pareto_front():
    points = [(1.0, 70.0), (2.0, 75.0), (3.0, 74.0), (4.0, 80.0), (0.5, 60.0)]
    assert pareto_front(points) == [4, 0, 1, 3]


def test_recommended_recipe_follows_data_budget():
    assert recommended_recipe(5)[0] == "linear-probe"
    assert recommended_recipe(200)[0] == "finetune"
    assert recommended_recipe(50_000)[0] == "scratch"


def test_advise_respects_constraints_on_measured_numbers(tmp_path):
    advice = advise("edge", max_params_m=6, latency_ms=5000, images_per_class=5, top=3, max_measured=3)
    assert advice.picks, advice.message
    for pick in advice.picks:
        assert pick["measured"] and pick["params"] <= 6e6 and pick["latency_ms"] <= 5000
        assert pick["command"].startswith(f"visionzoo train --model {pick['name']} --pretrained {pick['weights']}")
        assert "--recipe linear-probe" in pick["command"] and pick["why"]
    top1s = [p["top1"] for p in advice.picks]
    assert top1s == sorted(top1s, reverse=True)


def test_advise_impossible_constraints_name_the_culprit(capsys):
    code = main(["advise", "--no-measure", "--min-top1", "99.5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["picks"] == []
    assert "min_top1" in out["message"] and "Closest" in out["message"]


def test_advise_no_measure_json_and_plot(capsys, tmp_path):
    plot = tmp_path / "advice.png"
    code = main(["advise", "--target", "cpu", "--no-measure", "--max-params", "30", "--top", "4",
                 "--plot", str(plot), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(out) >= {"target", "constraints", "measured", "picks"} and out["measured"] is False
    assert out["constraints"] == {"max_params_m": 30.0}
    assert len(out["picks"]) == 4
    for pick in out["picks"]:
        assert set(pick) >= {"name", "weights", "top1", "latency_ms", "params", "gmacs", "why", "command"}
        assert pick["params"] <= 30e6
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_constraints_violations_measure_distance():
    c = Candidate("m", "m.w", "f", 2020, top1=70.0, params=20_000_000, gmacs=1.0, latency_ms=30.0)
    violations = Constraints(latency_ms=20, max_params_m=10, min_top1=80).violations(c)
    assert violations["latency_ms"] == pytest.approx(0.5) and violations["max_params"] == pytest.approx(1.0)
    assert violations["min_top1"] == pytest.approx(0.125)


def test_evolution_plot(tmp_path, capsys):
    plot = tmp_path / "evolution.png"
    assert main(["evolution", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert main(["evolution"]) == 0 and "alexnet" in capsys.readouterr().out


def test_advise_gpu_no_measure_asks_for_no_gpu(capsys, tmp_path, monkeypatch):
    import torch

    import visionzoo.choose.benchmark

    def no_measuring(*args, **kwargs):
        raise AssertionError("--no-measure without a GPU must measure nothing")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(visionzoo.choose.benchmark, "benchmark_model", no_measuring)
    plot = tmp_path / "gpu.png"
    code = main(["advise", "--target", "gpu", "--no-measure", "--max-params", "30", "--top", "3",
                 "--plot", str(plot), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out["picks"]) == 3 and "no CUDA GPU" in out["method"]
    assert all(p["latency_ms"] is None and p["params"] <= 30e6 for p in out["picks"])
    tops = [p["top1"] for p in out["picks"]]
    assert tops == sorted(tops, reverse=True)
    assert plot.read_bytes()[:8] == PNG_MAGIC
    # a latency bound cannot be judged without a GPU to calibrate on: a usage error, not a guess
    assert main(["advise", "--target", "gpu", "--no-measure", "--latency-ms", "5"]) == 2
    assert "CUDA GPU" in capsys.readouterr().err


def test_models_advise_cannot_rank_are_named_with_the_reason():
    """A feature backbone has no ImageNet top-1 of its own: said, not silently dropped; a classifier with a
    published figure is ranked."""
    from visionzoo.choose.advice import left_out

    missing = left_out()
    assert missing["vit_small_patch16_dinov3"].startswith("a feature backbone")
    assert "mobilenetv4_conv_small" not in missing and "resnet50" not in missing
