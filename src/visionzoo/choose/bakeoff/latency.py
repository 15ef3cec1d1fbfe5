"""Stage 1 of the bake-off: the candidates, spread across families and sizes, latency measured on
this machine in the target's deploy engine, and those over a constraint dropped with the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from visionzoo.choose.bakeoff.state import BakeoffRequest, BakeoffState, Deadline
from visionzoo.choose.candidates import Candidate, Constraints, nothing_fits, spread
from visionzoo.errors import SettingError

__all__ = ["MeasureFn", "measure_latency", "shortlist"]

# (candidate, target, image side) -> (ms, engine) or (ms, engine, note): the note says when a figure was
# reused from the per-machine cache ("cached 3 h ago, load 0.40"), as advise and benchmark say it
MeasureFn = Callable[[Candidate, str, int | None], tuple]
_FLAGS = {"latency_ms": "--latency-ms", "max_params": "--max-params"}  # how the bake-off's messages name them


def measure_latency(c: Candidate, target: str, image_size: int | None) -> tuple[float, str, str]:
    """(latency ms, engine, cache note) in the target's deploy engine, cached per machine by the engine
    layer: edge/cpu, onnxruntime fp32 and int8 at batch 1, the faster; gpu, eager bf16 per image at batch
    64. The note is empty for a figure measured now."""
    if target == "gpu":
        return _eager_latency(c, target, image_size), "pytorch-eager-bf16", ""
    try:
        from visionzoo.deploy.engines import artifacts_for, measure_engine_latency
    except ImportError:  # the engine layer is not installed here: eager PyTorch, as `advise` measures
        return _eager_latency(c, target, image_size), "pytorch-eager", ""
    best: tuple[float, str, str] | None = None
    failures = []
    shared = artifacts_for(c.name, image_size)  # one ONNX export for both engines (files are made on first use)
    for engine in ("onnxruntime-fp32", "onnxruntime-int8"):
        try:
            figures = measure_engine_latency(c.name, engine, 1, threads=1 if target == "edge" else None,
                                             img_size=image_size, seconds=0.5, artifacts=shared)
        except Exception as error:  # one engine failing (an op int8 lacks) costs that engine only
            failures.append(f"{engine}: {str(error).splitlines()[0][:200]}")
            continue
        if best is None or figures["p50"] < best[0]:
            best = (figures["p50"], engine, figures.get("cache_note", "") if figures.get("cached") else "")
    if best is None:
        raise SettingError(f"could not measure {c.name} in any deploy engine: {'; '.join(failures)}")
    return best


def _eager_latency(c: Candidate, target: str, image_size: int | None) -> float:
    from visionzoo.choose.benchmark import GPU_BATCH, benchmark_model, target_settings

    settings = target_settings(target)
    if image_size:
        settings = dataclasses.replace(settings, img_size=image_size)
    result = benchmark_model(c.name, settings)
    return 1e3 / result.throughput[GPU_BATCH] if target == "gpu" else result.latency_ms["p50"]


def shortlist(request: BakeoffRequest, state: BakeoffState, bars, measure: MeasureFn,
              candidates: tuple[list[Candidate], list[Candidate]], deadline: Deadline = Deadline()
              ) -> tuple[list[Candidate], list[Candidate], str]:
    """(every candidate with its status, the chosen ones, why nothing fits when none is chosen), from
    `candidates` (`candidate_pool`'s usable and dropped); nothing new is measured past `deadline`."""
    pool, dropped = candidates
    ordered = spread(pool)
    limit_m = request.max_params_m
    static = [c for c in ordered if limit_m is None or c.params / 1e6 <= limit_m]
    for c in ordered:
        if c not in static:
            c.status = f"dropped: {c.params / 1e6:.2f}M params > --max-params {limit_m:g}"
    limit = request.max_measured or max(3 * request.candidates, request.candidates + 4)
    task = bars.add_task("candidates: measuring latency", total=min(len(static), limit))
    chosen: list[Candidate] = []
    measured: list[Candidate] = []
    for c in static[:limit]:
        if len(chosen) >= request.candidates:
            c.status = f"not chosen: --candidates {request.candidates} already spread across families and sizes"
            continue
        saved = state.get(c.name)
        if saved.get("latency_ms") is None:
            if deadline.passed():
                c.status = deadline.reason("not measured")
                continue
            bars.update(task, description=f"candidates: measuring {c.name}")
            figures = measure(c, request.target, request.image_size)
            saved["latency_ms"], saved["engine"] = figures[:2]
            saved["latency_note"] = figures[2] if len(figures) > 2 else ""
            state.save()
        c.latency_ms, c.engine, c.latency_note = saved["latency_ms"], saved["engine"], saved.get("latency_note", "")
        measured.append(c)
        bars.advance(task)
        if request.latency_ms is not None and c.latency_ms > request.latency_ms:
            c.status = f"dropped: {c.latency_ms:.2f} ms in {c.engine} > --latency-ms {request.latency_ms:g}"
        else:
            chosen.append(c)
    for c in static[limit:]:
        c.status = "not measured: beyond the candidates tried"
    message = "" if chosen else nothing_fits(measured or static or pool, _violations(request))
    return ordered + dropped, chosen, message


def _violations(request: BakeoffRequest) -> Callable[[Candidate], dict[str, float]]:
    constraints = Constraints(latency_ms=request.latency_ms, max_params_m=request.max_params_m)
    return lambda c: {_FLAGS[k]: v for k, v in constraints.violations(c).items()}
