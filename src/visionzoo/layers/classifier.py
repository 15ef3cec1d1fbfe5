"""Classifier heads with submodule names of timm's `ClassifierHead` and `NormMlpClassifierHead`.

The names (`head.norm`, `head.pre_logits.fc`, `head.fc`) are kept so that published
weights of ConvNeXt, Swin and MaxViT load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Literal

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.layers.pool import make_classifier


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> linear, for (N, C, H, W) or (N, H, W, C) maps."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0,
                 input_fmt: Literal["NCHW", "NHWC"] = "NCHW"):
        super().__init__()
        if input_fmt not in ("NCHW", "NHWC"):
            raise SettingError(f"input_fmt must be 'NCHW' or 'NHWC', got {input_fmt!r}")
        self.spatial_dims = (2, 3) if input_fmt == "NCHW" else (1, 2)
        self.in_features = self.num_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = make_classifier(in_features, num_classes)

    def reset(self, num_classes: int) -> None:
        self.fc = make_classifier(self.num_features, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(self.spatial_dims))  # (N, C)
        return x if pre_logits else self.fc(x)


class NormMlpClassifierHead(nn.Module):
    """Global average pool -> norm -> optional hidden linear + activation -> dropout -> linear.

    Pooling comes before the norm (ConvNeXt, MaxViT): the norm sees one (N, C, 1, 1) vector
    per image, so `norm_layer` is a channels-first norm such as `LayerNorm2d`.
    """

    def __init__(self, in_features: int, num_classes: int, hidden_size: int | None = None,
                 drop_rate: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.Identity,
                 act_layer: Callable[[], nn.Module] = nn.Tanh):
        super().__init__()
        self.in_features = in_features
        self.norm = norm_layer(in_features)
        self.flatten = nn.Flatten(1)
        if hidden_size:
            self.pre_logits = nn.Sequential(OrderedDict([
                ("fc", nn.Linear(in_features, hidden_size)),
                ("act", act_layer()),
            ]))
        else:
            self.pre_logits = nn.Identity()
        self.num_features = hidden_size or in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = make_classifier(self.num_features, num_classes)

    def reset(self, num_classes: int) -> None:
        self.fc = make_classifier(self.num_features, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3), keepdim=True)  # (N, C, H, W) -> (N, C, 1, 1)
        x = self.flatten(self.norm(x))  # (N, C)
        x = self.drop(self.pre_logits(x))
        return x if pre_logits else self.fc(x)
