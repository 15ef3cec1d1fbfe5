"""The transformer MLP, and its gated (GLU / SwiGLU) variant."""

from __future__ import annotations

import torch
import torch.nn as nn

from visionzoo.errors import SettingError


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


class GluMlp(nn.Module):
    """MLP with a gated linear unit (Dauphin et al., 2016; Shazeer, 2020, "GLU Variants Improve Transformer").

    One `fc1` makes both halves; `act(gate) * value` halves the width before `fc2`. `gate_last=False`
    takes the gate from the first half, as DINOv2's packed SwiGLU does (act SiLU): timm's
    `SwiGLUPacked`, whose weights load unchanged. `hidden_features` counts both halves.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.Sigmoid, norm_layer: type[nn.Module] | None = None,
                 bias: bool = True, drop: float = 0.0, gate_last: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        if hidden_features % 2:
            raise SettingError(f"GluMlp hidden_features must be even (gate and value halves), got {hidden_features}")
        self.gate_last = gate_last
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features // 2) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features // 2, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.fc1(x).chunk(2, dim=-1)  # (..., hidden) -> two (..., hidden / 2)
        x = first * self.act(second) if self.gate_last else self.act(first) * second
        return self.drop2(self.fc2(self.norm(self.drop1(x))))


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer, 2020) with separate gate and value projections `fc1_g`, `fc1_x`
    (timm's names; EVA-02 and other unpacked checkpoints): fc2(silu(fc1_g(x)) * fc1_x(x))."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.SiLU, norm_layer: type[nn.Module] | None = None,
                 bias: bool = True, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1_g = nn.Linear(in_features, hidden_features, bias=bias)
        self.fc1_x = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1_g(x)) * self.fc1_x(x))
        return self.drop2(self.fc2(self.norm(x)))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with; its weights
    need it rather than the exact GELU."""

    def __init__(self, inplace: bool = False):  # `inplace` accepted, like nn.ReLU's, and ignored
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)
