"""Measuring, the same way everywhere: timers, percentiles, peak memory, parameter counts and
multiply-accumulates (measured rather than typed in), the processor's name.

Torch is imported inside the functions that need it, so the torch-free predictors may use this module.
Counts are computed on the `meta` device (or any other), so even the largest variants cost no
memory and little time; building a registered variant and caching its figures is
`visionzoo.factory.model_complexity`.
"""

from __future__ import annotations

import collections
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["count_params", "count_gmacs", "count_operators", "compute_operators", "percentile", "cpu_name",
           "Timer", "time_in_blocks", "PeakMemory", "rss_bytes", "CACHE_MAX_AGE_S", "conditions_now", "cache_verdict",
           "cached_note", "counted"]

# ATen operators that only re-describe memory: no kernel runs for them.
METADATA_OPERATORS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "transpose", "t", "permute", "expand", "squeeze",
    "unsqueeze", "as_strided", "alias", "detach", "slice", "select", "split", "split_with_sizes", "unbind",
    "chunk", "narrow", "view_as", "lift_fresh", "unfold", "diagonal", "flatten", "empty", "empty_strided",
    "new_empty", "new_empty_strided"})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates of one forward pass on one image, in billions.

    FlopCounterMode counts a multiply-accumulate as two floating-point operations.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros((1, *input_size), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def count_operators(model: nn.Module, input_size: tuple[int, int, int], *, train: bool = False,
                    batch: int = 2, channels_last: bool = False) -> collections.Counter[str]:
    """ATen operators dispatched by one eval forward or, with `train`, one training forward and
    backward, by name (views included; `compute_operators` leaves them out).

    On a GPU, a network at a large batch is as fast as its kernels: two implementations that
    dispatch the same operators the same number of times do the same work. On the `meta` device
    this costs no compute; there, `scaled_dot_product_attention` is counted through its math
    path, as on a CPU that cannot use a fused kernel. `batch` defaults to 2: BatchNorm needs two
    samples to train. The model is left as it was (gradients, BatchNorm statistics, mode).
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class OperatorCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    parameter = next(model.parameters())
    x = torch.randn((batch, *input_size), device=parameter.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # BatchNorm statistics move in training
    model.train(train)
    try:
        with OperatorCounter() as counter:
            if train:
                out = model(x)
                out = sum(o.float().sum() for o in out) if isinstance(out, (tuple, list)) else out.float().sum()
                # autograd.grad rather than backward: the model's .grad fields stay as they were
                torch.autograd.grad(out, [p for p in model.parameters() if p.requires_grad])
            else:
                with torch.no_grad():
                    model(x)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    return counter.counts


def compute_operators(counts: collections.Counter[str]) -> int:
    """How many of `count_operators`' operators run a kernel (views and other metadata-only ones left out)."""
    return sum(n for op, n in counts.items() if op not in METADATA_OPERATORS)


# --- timing ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Timer:
    """Times one call of `fn`, in milliseconds, with CUDA events on the GPU and perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def time_in_blocks(fns: dict[str, Callable[[], Any]], seconds: float, min_repeats: int = 10, block: int = 4,
                   pause: float = 0.05, warmup: int = 3) -> dict[str, list[float]]:
    """Milliseconds per call of each function, timed in alternating blocks (for deployment engines).

    Each engine runs as deployed, with its own thread pool's defaults (onnxruntime's, OpenVINO's
    and OpenMP's workers spin a while after a run). So that one engine's spinning threads never
    take the cores from the next, each block starts after a short pause and one untimed call;
    blocks alternate, so slow drifts of the machine reach every engine alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    first = next(iter(fns))
    begin = time.perf_counter()
    while len(times[first]) < min_repeats or time.perf_counter() - begin < seconds:
        for name, fn in fns.items():
            if pause:
                time.sleep(pause)
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return times



# --- memory and machine --------------------------------------------------------------------


def rss_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux resets the process's peak resident set (VmHWM) when 5 is written to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or growth of the process's peak resident set."""

    def __init__(self, device: str):
        self.device = device
        self.peak_mb: float | None = None

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.supported = _reset_peak_rss()
            self.base = rss_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.supported and self.base is not None:
            peak = rss_bytes("VmHWM")
            self.peak_mb = max(peak - self.base, 0) / 2**20 if peak is not None else None
        return False


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --- when a cached measurement may stand for a new one ----------------------------------------

CACHE_MAX_AGE_S = 7 * 24 * 3600  # a week: drivers, governors and background load drift; measuring again is cheap


def conditions_now() -> dict[str, Any]:
    """What a measurement records beside its figures: when (`measured_at`, Unix seconds) and under what
    load (`load_1min`, the 1-minute load average; None where the system has none) on how many cores."""
    try:
        load = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # Windows has no load average
        load = None
    return {"measured_at": round(time.time(), 1), "load_1min": load, "cpu_count": os.cpu_count() or 1}


def cache_verdict(record: dict[str, Any], now: float, *, max_age_s: float = CACHE_MAX_AGE_S) -> str | None:
    """None when a cached measurement may be reused at time `now`, else why it is measured again:
    taken while the machine was busy (1-minute load average above its core count: other work was
    competing for the cores, so the figures are too slow), older than `max_age_s`, or from before
    the conditions were recorded. A pure function of the record: `conditions_now` fills it in."""
    measured_at, load = record.get("measured_at"), record.get("load_1min")
    if measured_at is None:
        return "cached before the load and time were recorded"
    if now - measured_at > max_age_s:
        return f"cached {(now - measured_at) / 86400:.0f} days ago (older than {max_age_s / 86400:g})"
    cores = record.get("cpu_count") or os.cpu_count() or 1
    if load is not None and load > cores:
        return f"cached under load (1-minute load average {load:.2f} on {cores} cores)"
    return None


def cached_note(record: dict[str, Any], now: float) -> str:
    """How a reused figure is shown: "cached 3 h ago, load 0.4"."""
    age = max(now - float(record.get("measured_at") or now), 0.0)
    when = f"{age / 60:.0f} min" if age < 3600 else f"{age / 3600:.0f} h" if age < 86400 else f"{age / 86400:.0f} d"
    load = record.get("load_1min")
    return f"cached {when} ago" + (f", load {load:.2f}" if load is not None else "")


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and `noun`, in the singular for one: "1 epoch", "3 epochs", "1,200 images"; `plural`
    where adding an s is wrong ("1 process", "2 processes")."""
    return f"{count:,} {noun if count == 1 else (plural or noun + 's')}"
