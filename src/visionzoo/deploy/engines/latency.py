"""One engine's latency on this machine, cached per machine, software versions, model, engine, batch
size and thread count, as `visionzoo.choose.benchmark` caches its own figures: with the time and load
they were measured under, reused only when `visionzoo.measure.cache_verdict` allows."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.engines.artifacts import Artifacts, artifacts_for
from visionzoo.deploy.engines.backends import ENGINES, create_engine
from visionzoo.errors import SettingError
from visionzoo.files import atomic_write_json
from visionzoo.measure import cache_verdict, cached_note, conditions_now, cpu_name, percentile, time_in_blocks

__all__ = ["measure_engine_latency", "random_batch", "latency_percentiles"]


def random_batch(preprocessing: dict[str, Any], batch_size: int) -> np.ndarray:
    """A batch of the model's input shape to time engines on (speed does not depend on the pixels)."""
    channels, height, width = preprocessing["input_size"]
    return np.random.default_rng(0).standard_normal((batch_size, channels, height, width), dtype=np.float32)


def latency_percentiles(times: list[float]) -> dict[str, float]:
    """p50 (the median), p90 and p99 of `times`."""
    return {"p50": statistics.median(times), "p90": percentile(times, 90), "p99": percentile(times, 99)}


def _identity(model_or_export, img_size: int | None, reparameterize: bool = True) -> tuple[str, str]:
    """(name, fingerprint) of what is measured: a registered name, a model, or an exported file; a
    re-parameterisable model's fused and unfused forms are measured apart."""
    if isinstance(model_or_export, Artifacts):
        reparameterize = model_or_export.reparameterize
        model_or_export = model_or_export.unfused if model_or_export.model is not None else model_or_export.source
    if isinstance(model_or_export, nn.Module):
        from visionzoo.factory import model_name

        name = model_name(model_or_export)
        shapes = [(k, tuple(v.shape)) for k, v in model_or_export.state_dict().items()]
        form = _form(model_or_export, reparameterize)
        return name, hashlib.sha256(f"{model_or_export!r}|{shapes}|{img_size}{form}".encode()).hexdigest()[:16]
    path = Path(model_or_export)
    if path.suffix in (".onnx", ".xml", ".tflite", ".pte"):
        stat = path.stat()
        return path.stem, hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return str(model_or_export), f"registered|{img_size}{_form(str(model_or_export), reparameterize)}"


def _form(model: nn.Module | str, reparameterize: bool) -> str:
    """'|fused' or '|unfused' for a re-parameterisable model; nothing for the others (their keys stay)."""
    from visionzoo.factory import is_reparameterizable

    if not is_reparameterizable(model):
        return ""
    return "|fused" if reparameterize else "|unfused"


def _cache_file(name: str, fingerprint: str, engine: str, batch_size: int, threads: int | None,
                seconds: float) -> Path:
    from visionzoo.factory import cache_dir, code_fingerprint

    versions = []
    for module in ("onnxruntime", "openvino", "nncf", "ai_edge_litert", "executorch"):
        try:
            versions.append(getattr(__import__(module), "__version__", "?"))
        except ImportError:
            versions.append("-")
    machine = f"{platform.node()}|{cpu_name()}|{os.cpu_count()}|{torch.__version__}|{'|'.join(versions)}"
    key = hashlib.sha256(f"{machine}|{code_fingerprint()}|{fingerprint}|{engine}|{batch_size}|"
                         f"{threads or torch.get_num_threads()}|{seconds}".encode()).hexdigest()[:24]
    return cache_dir() / "engine-latency" / f"{name}-{engine}-b{batch_size}-{key}.json"


def measure_engine_latency(model_or_export, engine: str, batch_size: int = 1, *, threads: int | None = None,
                           img_size: int | None = None, seconds: float = 1.0, use_cache: bool = True,
                           artifacts: Artifacts | None = None, reparameterize: bool = True) -> dict[str, Any]:
    """Latency of `engine` on this machine: `{"engine", "precision", "batch_size", "p50", "p90", "p99"
    (ms per batch), "throughput" (images/s), "repeats", "cached", "measured_at", "load_1min", "cache_note"}`.

    `model_or_export`: a registered name (random weights: speed does not depend on them), a model,
    an `Artifacts`, or an exported .onnx / .xml file. Results are cached per machine, software
    versions, model, engine, batch size and thread count, as `visionzoo.choose.benchmark` caches its own.
    A re-parameterisable model runs with its branches fused unless `reparameterize=False` (an
    `artifacts` given decides that itself).
    """
    if engine not in ENGINES:
        create_engine(engine, None)  # raises the unknown-engine error
    if artifacts is not None:
        reparameterize = artifacts.reparameterize
    name, fingerprint = _identity(model_or_export, img_size, reparameterize)
    cache_file = _cache_file(name, fingerprint, engine, batch_size, threads, seconds)
    stale = None  # why a cached figure is not reused
    if use_cache:
        try:
            saved = json.loads(cache_file.read_text())
            stale = cache_verdict(saved, time.time())
            if stale is None:
                return {**saved, "cached": True, "cache_note": cached_note(saved, time.time())}
        except (OSError, ValueError, AttributeError):
            pass
    if artifacts is None:
        artifacts = artifacts_for(model_or_export, img_size, reparameterize=reparameterize)
    runner = create_engine(engine, artifacts, threads=threads)
    reason = runner.unavailable()
    if reason:
        raise SettingError(f"engine {engine} cannot run {name} here: {reason}")
    if threads:
        torch.set_num_threads(threads)
    runner.load()
    x = random_batch(artifacts.preprocessing, batch_size)
    conditions = conditions_now()  # before timing: the load that other work puts on the machine
    times = time_in_blocks({engine: lambda: runner.run(x)}, seconds, pause=0.0)[engine]
    percentiles = latency_percentiles(times)
    result = {"model": name, "engine": engine, "precision": runner.precision, "batch_size": batch_size,
              **percentiles, "throughput": batch_size * 1e3 / percentiles["p50"], "repeats": len(times),
              "threads": threads or torch.get_num_threads(), **conditions}
    try:
        atomic_write_json(cache_file, result, indent=None)
    except OSError:
        pass  # an unwritable cache costs a re-measurement, nothing else
    return {**result, "cached": False, "cache_note": f"measured again: {stale}" if stale else ""}
