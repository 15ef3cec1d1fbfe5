"""The transformer MLP, and its gated (GLU / SwiGLU) variant."""

from __future__ import annotations

import torch
import torch.nn as nn


class Mlp(nn.Module):
    """Linear -> activation -> (norm) -> linear, as in ViT, Swin, ConvNeXt and MLP-Mixer.

    `use_conv=True` uses 1x1 convolutions on (N, C, H, W) maps instead of linears on (..., C).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] | None = None,
                 bias: bool = True, drop: float = 0.0, use_conv: bool = False):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        make_linear = (lambda i, o, bias: nn.Conv2d(i, o, 1, bias=bias)) if use_conv else nn.Linear
        self.fc1 = make_linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = make_linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))
