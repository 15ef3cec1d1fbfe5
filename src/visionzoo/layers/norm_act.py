"""Batch norm followed by an activation, as one module (EfficientNet, MobileNetV3)."""

from __future__ import annotations

import torch
import torch.nn as nn


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d, then an activation (`act_layer=None`: none).

    It subclasses BatchNorm2d rather than holding one as `.bn`, so that its parameters are
    named `bn1.weight`, `bn1.running_mean`, ... as in timm's EfficientNet and MobileNetV3
    and in the TensorFlow ports, whose weights then load unchanged.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 act_layer: type[nn.Module] | None = nn.ReLU):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))
