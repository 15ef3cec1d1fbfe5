"""`benchmark_model` measures a re-parameterisable model in both forms, as built and fused."""

from __future__ import annotations

from visionzoo.choose.benchmark import BenchmarkSettings, benchmark_model

QUICK = BenchmarkSettings(batch_sizes=(1,), img_size=64, min_repeats=2, min_seconds=0.0, warmup=1, threads=1)


def test_benchmark_reports_fused_and_unfused_latency():
    result = benchmark_model("repvit_m0_9", QUICK, use_cache=False)
    assert result.latency_ms["p50"] > 0  # as built: the training branches
    fused = result.reparameterized
    assert fused["latency_ms"]["p50"] > 0 and fused["fused_over_unfused"]["time_b1"] > 0
    assert "1" in fused["throughput"]
    assert benchmark_model("resnet18", QUICK, use_cache=False).reparameterized is None
