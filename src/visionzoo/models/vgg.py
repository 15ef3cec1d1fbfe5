"""VGG.

Simonyan & Zisserman, 2014, "Very Deep Convolutional Networks for Large-Scale Image Recognition".

Stacks of 3x3 convolutions separated by 2x2 max pools, then a three-layer classifier. The
layout is timm's: the two 4096-wide fully connected layers are a convolutional MLP
(`pre_logits`: a 7x7 convolution, then a 1x1) followed by pooling and a linear `head.fc`, so
timm's published VGG weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.features import FeatureInfo
from visionzoo.layers.classifier import ClassifierHead
from visionzoo.registry import CamLayer, register_family

MAX_POOL = "M"


class ConvMlp(nn.Module):
    """The two hidden fully connected layers of VGG, written as convolutions.

    `fc1` is a 7x7 convolution over the 7x7 map a 224 px input gives, so the weights equal
    the paper's first fully connected layer; at a larger input it slides, giving a map of
    logits that the head averages. A map smaller than 7x7 is first resized to 7x7 by
    adaptive average pooling, so any input size of at least 32 px works.
    """

    def __init__(self, in_features: int, hidden_features: int, kernel_size: int = 7, drop_rate: float = 0.0):
        super().__init__()
        self.input_kernel_size = kernel_size
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size)
        self.act1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Conv2d(hidden_features, hidden_features, 1)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.input_kernel_size
        if x.shape[-2] < k or x.shape[-1] < k:
            x = F.adaptive_avg_pool2d(x, (max(k, x.shape[-2]), max(k, x.shape[-1])))
        x = self.drop(self.act1(self.fc1(x)))
        return self.act2(self.fc2(x))


@dataclass(frozen=True)
class VGGConfig:
    """VGG: Simonyan and Zisserman, 2014, "Very Deep Convolutional Networks for Large-Scale Image Recognition"."""

    layers: tuple[int | str, ...]  # output channels of each 3x3 convolution, "M" for a 2x2 max pool
    batch_norm: bool = False  # BatchNorm after every convolution (the `_bn` variants)
    hidden_features: int = 4096  # width of the two hidden fully connected layers


class VGG(nn.Module):
    """VGG (Simonyan & Zisserman, 2014), with or without batch norm.

    `num_features` is the width of `forward_head(x, pre_logits=True)`: the 4096 outputs of
    the second hidden layer. The last convolutional stage has `feature_info[-1].num_chs` (512).
    """

    def __init__(self, config: VGGConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.feature_info: list[FeatureInfo] = []

        layers: list[nn.Module] = []
        chs, stride = in_chans, 1
        for item in config.layers:
            if item == MAX_POOL:
                # each stage's map is tapped after its last activation, before the pool
                self.feature_info.append(FeatureInfo(f"features.{len(layers) - 1}", chs, stride))
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                stride *= 2
            else:
                layers.append(nn.Conv2d(chs, item, kernel_size=3, padding=1))
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(item))
                layers.append(nn.ReLU(inplace=True))
                chs = item
        # Flat Sequential: indices are part of the weight names (features.0.weight, ...).
        self.features = nn.Sequential(*layers)
        self.feature_info.append(FeatureInfo(f"features.{len(layers) - 1}", chs, stride))

        self.pre_logits = ConvMlp(chs, config.hidden_features, 7, drop_rate=drop_rate)
        self.num_features = config.hidden_features
        self.head = ClassifierHead(config.hidden_features, num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 512, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(self.pre_logits(x), pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

M = MAX_POOL
LAYERS: dict[str, tuple[int | str, ...]] = {  # the paper's configurations A, B, D and E
    "vgg11": (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "vgg13": (64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "vgg16": (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
    "vgg19": (64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M),
}

# each configuration without and with BatchNorm: vgg11, vgg11_bn, vgg13, ...
VARIANTS: dict[str, VGGConfig] = {
    f"{depth}_bn" if batch_norm else depth: VGGConfig(layers, batch_norm=batch_norm)
    for depth, layers in LAYERS.items() for batch_norm in (False, True)
}

register_family(VARIANTS, family="vgg", paper="Very Deep Convolutional Networks for Large-Scale Image Recognition",
                year=2014, builder=VGG, recipe_style="convnet",
                cam_layer=CamLayer("features.-2"))  # the last ReLU, before the final max-pool halves the map
