"""LayerScale (Touvron et al., 2021, "Going deeper with Image Transformers", CaiT)."""

from __future__ import annotations

import torch
import torch.nn as nn


class LayerScale(nn.Module):
    """Multiplies a residual branch by a learned per-channel factor `gamma` (channels last),
    initialised small so each block starts close to the identity (CaiT, DINOv2, EVA)."""

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False):
        super().__init__()
        self.init_values = init_values
        self.inplace = inplace
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma

    def extra_repr(self) -> str:
        return f"dim={self.gamma.shape[0]}, init_values={self.init_values}"
