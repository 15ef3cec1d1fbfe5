"""Stochastic depth (Huang et al., 2016, "Deep Networks with Stochastic Depth")."""

from __future__ import annotations

import torch
import torch.nn as nn


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero the whole residual branch for a random subset of samples, rescaling the rest.

    Applied per sample, not per element, so a dropped sample skips the block entirely.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # broadcast over every non-batch dimension
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def stochastic_depth_rates(drop_path_rate: float, depths: list[int] | tuple[int, ...]) -> list[list[float]]:
    """Per-block drop rates rising linearly from 0 to `drop_path_rate`, split per stage.

    Plain Python arithmetic (not torch.linspace) so models build on the `meta` device.
    """
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out
