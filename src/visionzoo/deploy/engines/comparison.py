"""`visionzoo benchmark --engine`: every engine that runs here side by side, latency percentiles at
batch 1 and throughput at each batch size, with `--engine auto`'s pick; for a re-parameterisable
network (RepViT, MobileOne, FastViT) both forms, its training branches fused (as deployed) and kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from visionzoo.deploy.engines.artifacts import Artifacts, artifacts_for
from visionzoo.deploy.engines.backends import Engine, available_engines
from visionzoo.deploy.engines.choice import choose_engine
from visionzoo.deploy.engines.latency import measure_engine_latency

__all__ = ["benchmark_engines"]


def benchmark_engines(model: str | nn.Module, engines: str = "all", *, batch_sizes: Sequence[int] = (1, 8),
                      img_size: int | None = None, threads: int | None = None, use_cache: bool = True,
                      eval_dir: str | Path | None = None, seconds: float = 1.0,
                      reparameterize: bool = True) -> dict[str, Any]:
    """`visionzoo benchmark --engine`: latency percentiles (batch 1) and throughput (each batch size) per
    engine. `engines`: comma-separated names, 'all' (every engine that runs here), or 'auto' (all but
    compile, and `choose_engine`'s pick with its accuracy figures; with random weights and no
    `eval_dir` those figures only exercise the rule).

    A re-parameterisable model runs fused (`rows`); its unfused form is measured too, in the same
    engines (`unfused_engines`, with each engine's fused / unfused ratio at the latency batch).
    `reparameterize=False` measures the unfused form only."""
    artifacts = artifacts_for(model, img_size, reparameterize=reparameterize)
    if engines in ("all", "auto"):
        runners, skipped = available_engines(artifacts, threads=threads, exclude=("compile",) if engines == "auto" else ())
    else:
        runners, skipped = available_engines(artifacts, threads=threads,
                                             names=[n.strip() for n in engines.split(",") if n.strip()])
    rows = _rows(model, artifacts, runners, batch_sizes, img_size, threads, seconds, use_cache)
    result: dict[str, Any] = {"model": artifacts.name, "engines": rows, "skipped": skipped,
                              "reparameterized": artifacts.model is not artifacts.unfused}
    if result["reparameterized"]:
        unfused = Artifacts(artifacts.unfused, img_size=img_size, reparameterize=False)
        unfused_rows = _rows(model if isinstance(model, str) else artifacts.unfused, unfused,
                             available_engines(unfused, threads=threads, names=[r.name for r in runners])[0],
                             batch_sizes, img_size, threads, seconds, use_cache)
        fused_p50 = {row["engine"]: row["latency_ms"]["p50"] for row in rows}
        for row in unfused_rows:
            row["fused_over_unfused"] = fused_p50[row["engine"]] / row["latency_ms"]["p50"]
        result["unfused_engines"] = unfused_rows
    if engines == "auto":
        choice = choose_engine(artifacts, [r.name for r in runners], eval_dir=eval_dir, threads=threads)
        result["chosen"], result["choice"] = choice.chosen, choice.as_dict()
    return result


def _rows(model: str | nn.Module, artifacts: Artifacts, runners: Sequence[Engine], batch_sizes: Sequence[int],
          img_size: int | None, threads: int | None, seconds: float, use_cache: bool) -> list[dict[str, Any]]:
    rows = []
    for runner in runners:
        figures = {b: measure_engine_latency(model, runner.name, b, threads=threads, img_size=img_size, seconds=seconds,
                                             use_cache=use_cache, artifacts=artifacts) for b in batch_sizes}
        latency_batch = 1 if 1 in figures else batch_sizes[0]
        timed = figures[latency_batch]
        rows.append({"engine": runner.name, "precision": runner.precision, "latency_batch": latency_batch,
                     "latency_ms": {k: timed[k] for k in ("p50", "p90", "p99", "repeats")},
                     "throughput": {str(b): f["throughput"] for b, f in figures.items()},
                     "cached": all(f["cached"] for f in figures.values()), "cache_note": timed.get("cache_note", "")})
    return rows
