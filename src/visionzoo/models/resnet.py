"""ResNet, ResNeXt and Wide ResNet.

He et al., 2015, "Deep Residual Learning for Image Recognition";
Xie et al., 2016, "Aggregated Residual Transformations for Deep Neural Networks" (ResNeXt);
Zagoruyko & Komodakis, 2016, "Wide Residual Networks".

Module names follow timm's `resnet.py` (equal to torchvision's), so published weights
load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.pool import GlobalPool, make_classifier
from visionzoo.registry import CamLayer, VariantExtras, register_family


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, drop_path: float = 0.0):
        super().__init__()
        if cardinality != 1 or base_width != 64:
            raise SettingError("BasicBlock supports only cardinality=1 and base_width=64")
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.drop_path(self.bn2(self.conv2(x)))
        x += shortcut  # in place: one allocation fewer per block (BN's backward needs its input, not its output)
        return self.act2(x)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4, and a shortcut (ResNet-50+)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, drop_path: float = 0.0):
        super().__init__()
        width = int(planes * (base_width / 64)) * cardinality
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        # Stride on the 3x3 rather than the first 1x1 ("ResNet v1.5"), as timm and torchvision do.
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.drop_path(self.bn3(self.conv3(x)))
        x += shortcut  # in place, as in BasicBlock
        return self.act3(x)


@dataclass(frozen=True)
class ResNetConfig:
    """ResNet: He, Zhang, Ren and Sun, 2015, "Deep Residual Learning for Image Recognition"; ResNeXt: Xie,
    Girshick, Dollar, Tu and He, 2016, "Aggregated Residual Transformations for Deep Neural Networks";
    Wide ResNet: Zagoruyko and Komodakis, 2016, "Wide Residual Networks"."""

    block: Literal["basic", "bottleneck"]
    layers: tuple[int, int, int, int]  # blocks per stage
    cardinality: int = 1  # groups in the 3x3 convolution (ResNeXt)
    base_width: int = 64  # channels per group at planes=64; 128 doubles the width (Wide ResNet)
    stem_width: int = 64


class ResNet(nn.Module):
    """ResNet (He et al., 2015) and its ResNeXt / Wide ResNet variants."""

    def __init__(self, config: ResNetConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[config.block]

        self.conv1 = nn.Conv2d(in_chans, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [FeatureInfo("act1", config.stem_width, 2)]

        in_chs = config.stem_width
        rates = stochastic_depth_rates(drop_path_rate, config.layers)
        for index, (depth, stage_rates) in enumerate(zip(config.layers, rates)):
            planes = 64 * 2**index
            stride = 1 if index == 0 else 2
            out_chs = planes * block.expansion
            blocks = []
            for i in range(depth):
                downsample = None
                if i == 0 and (stride != 1 or in_chs != out_chs):
                    downsample = nn.Sequential(
                        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
                    )
                blocks.append(block(in_chs, planes, stride if i == 0 else 1, downsample,
                                    config.cardinality, config.base_width, stage_rates[i]))
                in_chs = out_chs
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(f"layer{index + 1}", out_chs, 4 * 2**index))

        self.num_features = in_chs
        self.global_pool = GlobalPool(global_pool)
        self.fc = make_classifier(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Each residual branch starts as zero, so the network starts close to identity maps.
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                module.zero_init_last()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = make_classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig("basic", (2, 2, 2, 2)),
    "resnet34": ResNetConfig("basic", (3, 4, 6, 3)),
    "resnet50": ResNetConfig("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetConfig("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetConfig("bottleneck", (3, 8, 36, 3)),
    "resnext50_32x4d": ResNetConfig("bottleneck", (3, 4, 6, 3), cardinality=32, base_width=4),
    "resnext101_32x8d": ResNetConfig("bottleneck", (3, 4, 23, 3), cardinality=32, base_width=8),
    "wide_resnet50_2": ResNetConfig("bottleneck", (3, 4, 6, 3), base_width=128),
    "wide_resnet101_2": ResNetConfig("bottleneck", (3, 4, 23, 3), base_width=128),
}

# ResNeXt and Wide ResNet are ResNets with other widths, from their own papers.
_RESNEXT = VariantExtras(paper="Aggregated Residual Transformations for Deep Neural Networks", year=2016)
_WIDE = VariantExtras(paper="Wide Residual Networks", year=2016)

register_family(
    VARIANTS, family="resnet", paper="Deep Residual Learning for Image Recognition", year=2015, builder=ResNet,
    recipe_style="convnet", cam_layer=CamLayer("layer4"),
    extras={"resnext50_32x4d": _RESNEXT, "resnext101_32x8d": _RESNEXT,
            "wide_resnet50_2": _WIDE, "wide_resnet101_2": _WIDE})
