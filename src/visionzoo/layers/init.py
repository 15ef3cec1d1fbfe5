"""Weight initialisation shared by the transformer families."""

from __future__ import annotations

import torch.nn as nn


def init_linears_trunc_normal_(model: nn.Module, std: float = 0.02) -> None:
    """Every nn.Linear: truncated-normal weights (std 0.02, ViT's recipe), zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
