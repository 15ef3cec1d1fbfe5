"""Squeeze-and-excitation (Hu et al., 2017, "Squeeze-and-Excitation Networks"), in the form
MobileNetV3 and EfficientNet use inside their inverted residual blocks."""

from __future__ import annotations

import torch
import torch.nn as nn


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 reduce, activation, 1x1 expand, gate; the gate scales each channel.

    Families differ only in `rd_channels` (EfficientNet: a quarter of the block's input
    channels; MobileNetV3: a quarter of the expanded channels, rounded to a multiple of 8),
    the activation (the block's own, or ReLU) and the gate (sigmoid, or hard sigmoid).
    """

    def __init__(self, channels: int, rd_channels: int, act_layer: type[nn.Module] = nn.ReLU,
                 gate_layer: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (N, C, H, W) -> (N, C, 1, 1)
        scale = self.conv_expand(self.act1(self.conv_reduce(scale)))
        return x * self.gate(scale)
