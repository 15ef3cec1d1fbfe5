"""AlexNet.

Krizhevsky et al., 2012, "ImageNet Classification with Deep Convolutional Neural Networks".

This is the single-tower form of torchvision's `alexnet` (from Krizhevsky's 2014 "One weird
trick" paper: 64 filters in the first layer instead of 96, no local response normalisation),
which is the network published weights exist for. Module names and indices follow torchvision,
so its weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.registry import CamLayer, register_family


@dataclass(frozen=True)
class AlexNetConfig:
    """AlexNet: Krizhevsky, Sutskever and Hinton, 2012, "ImageNet Classification with Deep Convolutional
    Neural Networks" (in the single-tower form of Krizhevsky, 2014, "One weird trick for parallelizing
    convolutional neural networks")."""

    widths: tuple[int, int, int, int, int] = (64, 192, 384, 256, 256)  # channels of the five convolutions
    pooled_size: int = 6  # the last feature map is average-pooled to this size before the MLP
    hidden_features: int = 4096  # width of the two fully connected hidden layers


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al., 2012): five convolutions and a three-layer MLP classifier.

    `forward_head(x, pre_logits=True)` returns the second 4096-wide hidden layer, the
    representation the last linear layer classifies.
    """

    def __init__(self, config: AlexNetConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.5):
        super().__init__()
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        c1, c2, c3, c4, c5 = config.widths
        # Indices into `features` and `classifier` are part of the weight names (torchvision's layout).
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        # After each ReLU that ends a resolution, and the last pool; nominal strides (the unpadded
        # pools make the maps a pixel or two smaller than input / stride).
        self.feature_info = [FeatureInfo("features.1", c1, 4), FeatureInfo("features.4", c2, 8),
                             FeatureInfo("features.11", c5, 16), FeatureInfo("features.12", c5, 32)]
        self.avgpool = nn.AdaptiveAvgPool2d(config.pooled_size)
        hidden = config.hidden_features
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(c5 * config.pooled_size**2, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            self._make_fc(hidden, num_classes),
        )
        self.num_features = hidden

    @staticmethod
    def _make_fc(in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.classifier[6] = self._make_fc(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 256, ~H/32, ~W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 256, 6, 6) -> (N, 9216)
        x = self.classifier[:6](x)
        return x if pre_logits else self.classifier[6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, AlexNetConfig] = {"alexnet": AlexNetConfig()}

register_family(VARIANTS, family="alexnet", paper="ImageNet Classification with Deep Convolutional Neural Networks",
                year=2012, builder=AlexNet, recipe_style="convnet", reference_library="torchvision",
                cam_layer=CamLayer("features.-2"))  # the last ReLU, before the final max-pool halves the map
