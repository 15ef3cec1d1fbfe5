"""Parameter counts, multiply-accumulates and dispatched operators, measured rather than typed in.

All are computed on the `meta` device (or any other), so even the largest variants cost no
memory and little time. These are pure functions of a model; building a registered variant
and caching its figures is `visionzoo.factory.model_complexity`.
"""

from __future__ import annotations

import collections

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_gmacs", "count_operators", "compute_operators"]

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


class _OperatorCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


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
    parameter = next(model.parameters())
    x = torch.randn((batch, *input_size), device=parameter.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # BatchNorm statistics move in training
    model.train(train)
    try:
        with _OperatorCounter() as counter:
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
