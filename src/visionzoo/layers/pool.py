"""Global pooling and the classifier head shared by the convolutional families."""

from __future__ import annotations

import torch
import torch.nn as nn

from visionzoo.errors import SettingError


class GlobalPool(nn.Module):
    """Global average (or max) pooling of an (N, C, H, W) map to (N, C)."""

    def __init__(self, pool_type: str = "avg"):
        super().__init__()
        if pool_type not in ("avg", "max"):
            raise SettingError(f"pool_type must be 'avg' or 'max', got {pool_type!r}")
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "avg":
            return x.mean((2, 3))
        return x.amax((2, 3))


def make_classifier(num_features: int, num_classes: int) -> nn.Module:
    """A linear classifier, or the identity when `num_classes` is 0 (pooled features out)."""
    if num_classes < 0:
        raise SettingError(f"num_classes must be >= 0, got {num_classes}")
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
