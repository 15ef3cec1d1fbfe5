"""Measure models on this machine: latency percentiles, throughput, peak memory, training speed.

Method (the same for every number visionzoo reports about speed):
- the thread count is fixed (and reported) before anything is timed;
- each measurement warms up first (allocator, caches, cuDNN autotuning, torch.compile), then
  repeats until both a minimum count and a minimum time are reached, and reports medians and
  percentiles, never means, since a busy machine produces outliers on one side only;
- CUDA work is timed with CUDA events after synchronising, not with the host clock;
- a comparison with timm (`vs_timm`) interleaves the two models repetition by repetition, so
  both see the same machine state, and reports the ratio of medians;
- a re-parameterisable model (RepViT, MobileOne, FastViT) is measured in both forms, as built
  (training branches) and fused for inference (`visionzoo.factory.reparameterized`), interleaved
  the same way, and `reparameterized` holds the fused figures and the fused / unfused time.
Results are cached per machine, software versions and settings, so repeated queries are instant, with
the time and the 1-minute load average they were measured under: a figure taken while the machine was
busy, or more than a week ago, is measured again (`visionzoo.measure.cache_verdict`), and a reused one
says so (`cache_note`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from visionzoo import __version__
from visionzoo.errors import SettingError
from visionzoo.factory import (
    cache_dir,
    code_fingerprint,
    create_model,
    is_reparameterizable,
    model_complexity,
    reparameterized,
    size_overrides,
)
from visionzoo.measure import (
    PeakMemory,
    Timer,
    cache_verdict,
    cached_note,
    conditions_now,
    count_gmacs,
    count_params,
    cpu_name,
    percentile,
)
from visionzoo.registry import get_card

__all__ = ["BenchmarkSettings", "GPU_BATCH", "TARGETS", "benchmark_model", "benchmark_models", "environment",
           "target_settings"]

TARGETS = ("edge", "cpu", "gpu")  # where a chosen model will run; see `target_settings`
GPU_BATCH = 64


@dataclass(frozen=True)
class BenchmarkSettings:
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 8)
    img_size: int | None = None  # None: each model's default input size
    precision: str = "fp32"  # fp32 | bf16 | fp16
    backend: str = "eager"  # eager | compile
    train: bool = False
    threads: int | None = None  # None: all cores torch would use by default
    vs_timm: bool = False
    min_repeats: int = 10
    min_seconds: float = 1.0  # per measurement, after warm-up
    max_repeats: int = 200
    warmup: int = 3

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise SettingError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SettingError("device 'cuda' was asked for but PyTorch sees no CUDA GPU here; use --device cpu")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise SettingError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.precision == "fp16" and self.device == "cpu":
            raise SettingError("fp16 is for CUDA; on the CPU use bf16 or fp32")
        if self.backend not in ("eager", "compile"):
            raise SettingError(f"backend must be 'eager' or 'compile', got {self.backend!r}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise SettingError(f"batch sizes must be positive integers, got {self.batch_sizes}")

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


def target_settings(target: str) -> BenchmarkSettings:
    """How a deployment target is measured: edge, batch 1 on one CPU thread (a stand-in for a small
    device); cpu, batch 1 on all threads; gpu, throughput at batch GPU_BATCH in bf16."""
    if target == "edge":
        return BenchmarkSettings(device="cpu", batch_sizes=(1,), threads=1, min_seconds=0.5, min_repeats=5)
    if target == "cpu":
        return BenchmarkSettings(device="cpu", batch_sizes=(1,), min_seconds=0.5, min_repeats=5)
    return BenchmarkSettings(device="cuda", batch_sizes=(GPU_BATCH,), precision="bf16", min_seconds=0.5,
                             min_repeats=5)


def environment(settings: BenchmarkSettings) -> dict[str, Any]:
    """What the numbers were measured on, printed with the results."""
    info = {
        "visionzoo": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": settings.device,
    }
    if settings.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


# --- timing -------------------------------------------------------------------------------


def _repeat_interleaved(fns: list[Callable[[], Any]], settings: BenchmarkSettings) -> list[list[float]]:
    """Warm each function up, then time them in turn until enough repetitions and time have passed."""
    timer = Timer(settings.device)
    for fn in fns:
        for _ in range(settings.warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    begin = time.perf_counter()
    while True:
        for index, fn in enumerate(fns):
            samples[index].append(timer(fn))
        count = len(samples[0])
        elapsed = time.perf_counter() - begin
        if count >= settings.max_repeats or (count >= settings.min_repeats and elapsed >= settings.min_seconds):
            return samples


# --- memory -------------------------------------------------------------------------------


# --- one model ----------------------------------------------------------------------------


@dataclass
class ModelResult:
    name: str
    params: int
    gmacs: float
    img_size: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # batch 1: p50, p90, p99
    throughput: dict[int, float] = field(default_factory=dict)  # batch -> images / s
    peak_memory_mb: float | None = None
    train_throughput: float | None = None  # images / s of forward + backward + optimizer step
    timm: dict[str, Any] | None = None  # the same figures for timm's model, and the ratios
    reparameterized: dict[str, Any] | None = None  # branches fused: latency_ms, throughput, fused_over_unfused
    cached: bool = False
    measured_at: float | None = None  # Unix seconds
    load_1min: float | None = None  # the 1-minute load average when the timing began
    cpu_count: int | None = None
    cache_note: str = ""  # "cached 3 h ago, load 0.40", or why a cached figure was measured again

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput"] = {str(k): v for k, v in self.throughput.items()}
        return data


def _prepare(model: nn.Module, settings: BenchmarkSettings, train: bool = False) -> nn.Module:
    model = model.to(settings.device).train(train)
    if settings.device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if settings.backend == "compile":
        model = torch.compile(model)
    return model


def _inference_fn(model: nn.Module, x: torch.Tensor, settings: BenchmarkSettings) -> Callable[[], Any]:
    autocast = settings.precision != "fp32"

    def run():
        with torch.inference_mode(), torch.autocast(settings.device, dtype=settings.dtype, enabled=autocast):
            return model(x)
    return run


def _train_fn(model: nn.Module, x: torch.Tensor, settings: BenchmarkSettings) -> Callable[[], Any]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    autocast = settings.precision != "fp32"
    scaler = torch.amp.GradScaler(settings.device, enabled=settings.precision == "fp16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(settings.device, dtype=settings.dtype, enabled=autocast):
            output = model(x)
            output = output[0] if isinstance(output, (tuple, list)) else output
            loss = nn.functional.cross_entropy(output.float(), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def _input(batch: int, size: tuple[int, int, int], settings: BenchmarkSettings) -> torch.Tensor:
    x = torch.randn(batch, *size, device=settings.device)
    return x.to(memory_format=torch.channels_last) if settings.device == "cuda" else x


def _measure(builders: list[Callable[[], nn.Module]], input_size: tuple[int, int, int],
             settings: BenchmarkSettings, inference_only: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Figures for each model from `builders`, measured interleaved with each other; the builders at
    `inference_only` (a fused network: nothing to train) are left out of the training step."""
    figures: list[dict[str, Any]] = [{"throughput": {}} for _ in builders]
    models = [_prepare(build(), settings) for build in builders]
    for batch in settings.batch_sizes:
        x = _input(batch, input_size, settings)
        fns = [_inference_fn(model, x, settings) for model in models]
        memory = []
        for fn in fns:  # peak memory of one forward, measured on its own
            with PeakMemory(settings.device) as peak:
                fn()
            memory.append(peak.peak_mb)
        samples = _repeat_interleaved(fns, settings)
        for figure, times, peak_mb in zip(figures, samples, memory):
            figure["throughput"][batch] = batch * 1e3 / statistics.median(times)
            if batch == 1:
                figure["latency_ms"] = {"p50": statistics.median(times), "p90": percentile(times, 90),
                                        "p99": percentile(times, 99), "repeats": len(times)}
            figure["peak_memory_mb"] = max(filter(None, [figure.get("peak_memory_mb"), peak_mb]), default=None)
    if settings.train:
        batch = max(settings.batch_sizes)
        x = _input(batch, input_size, settings)
        trained = [index for index in range(len(builders)) if index not in inference_only]
        trainers = [_train_fn(_prepare(builders[index](), settings, train=True), x, settings) for index in trained]
        samples = _repeat_interleaved(trainers, settings)
        for index, times in zip(trained, samples):
            figures[index]["train_throughput"] = batch * 1e3 / statistics.median(times)
    return figures


def _cache_file(name: str, settings: BenchmarkSettings) -> Path:
    machine = f"{platform.node()}|{cpu_name()}|{os.cpu_count()}|{torch.__version__}|{code_fingerprint()}"
    if settings.device == "cuda":
        machine += f"|{torch.cuda.get_device_name()}"
    key = hashlib.sha256(f"{machine}|{name}|{json.dumps(asdict(settings), sort_keys=True)}|"
                         f"{torch.get_num_threads()}".encode()).hexdigest()[:24]
    return cache_dir() / "benchmark" / f"{name}-{key}.json"


def benchmark_model(name: str, settings: BenchmarkSettings = BenchmarkSettings(), *,
                    use_cache: bool = True) -> ModelResult:
    """Benchmark a registered model with `settings` (from the cache when it was measured before)."""
    card = get_card(name)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cache_file = _cache_file(name, settings)
    stale = None  # why a cached figure is not reused
    if use_cache:
        try:
            data = json.loads(cache_file.read_text())
            data["throughput"] = {int(k): v for k, v in data["throughput"].items()}
            stale = cache_verdict(data, time.time())
            if stale is None:
                return ModelResult(**{**data, "cached": True, "cache_note": cached_note(data, time.time())})
        except (OSError, ValueError, TypeError):
            pass
    conditions = conditions_now()  # before timing: the load that other work puts on the machine
    channels, default_size, _ = card.input_size
    img_size = settings.img_size or default_size
    overrides = size_overrides(card, img_size)
    if img_size == default_size:
        complexity = model_complexity(name)
    else:
        with torch.device("meta"):
            meta_model = create_model(name, **overrides)
        complexity = {"params": count_params(meta_model),
                      "gmacs": round(count_gmacs(meta_model, (channels, img_size, img_size)), 4)}
    builders: list[Callable[[], nn.Module]] = [lambda: create_model(name, **overrides)]
    fuse = is_reparameterizable(name)
    if fuse:
        builders.append(lambda: reparameterized(create_model(name, **overrides)))
    if settings.vs_timm:
        builders.append(lambda: _timm_model(card, overrides))
    figures = _measure(builders, (channels, img_size, img_size), settings, inference_only=(1,) if fuse else ())
    ours = figures[0]
    result = ModelResult(name=name, params=complexity["params"], gmacs=complexity["gmacs"], img_size=img_size,
                         latency_ms=ours.get("latency_ms", {}), throughput=ours["throughput"],
                         peak_memory_mb=ours.get("peak_memory_mb"), train_throughput=ours.get("train_throughput"),
                         **conditions, cache_note=f"measured again: {stale}" if stale else "")
    if fuse:
        fused = figures[1]
        result.reparameterized = {"latency_ms": fused.get("latency_ms", {}),
                                  "throughput": {str(k): v for k, v in fused["throughput"].items()},
                                  "peak_memory_mb": fused.get("peak_memory_mb"),
                                  "fused_over_unfused": {f"time_b{b}": ours["throughput"][b] / v
                                                         for b, v in fused["throughput"].items()}}
    if settings.vs_timm:
        theirs = figures[-1]
        ratios = {}  # ours / timm, in time: below 1 means ours is faster
        if "latency_ms" in ours:
            ratios["latency_p50"] = ours["latency_ms"]["p50"] / theirs["latency_ms"]["p50"]
        for batch, value in ours["throughput"].items():
            ratios[f"time_b{batch}"] = theirs["throughput"][batch] / value
        if ours.get("train_throughput"):
            ratios["train_time"] = theirs["train_throughput"] / ours["train_throughput"]
        result.timm = {**theirs, "throughput": {str(k): v for k, v in theirs["throughput"].items()},
                       "ratio_ours_over_timm": ratios}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.as_dict()))
        tmp.replace(cache_file)
    except OSError:
        pass  # an unwritable cache costs a re-measurement, nothing else
    return result


def _timm_model(card, overrides: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise SettingError("--vs-timm needs timm installed (pip install timm)") from None
    if card.reference_library != "timm":
        raise SettingError(f"{card.name} matches {card.reference}, not a timm model; it cannot be compared with timm")
    return timm.create_model(card.reference_name, pretrained=False, **overrides)


def benchmark_models(names: Iterable[str], settings: BenchmarkSettings = BenchmarkSettings(), *,
                     use_cache: bool = True, progress: Callable[[str], None] | None = None) -> list[ModelResult]:
    results = []
    for name in names:
        if progress is not None:
            progress(name)
        results.append(benchmark_model(name, settings, use_cache=use_cache))
    return results
