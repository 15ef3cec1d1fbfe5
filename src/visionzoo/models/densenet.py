"""DenseNet (DenseNet-BC).

Huang et al., 2016, "Densely Connected Convolutional Networks".

Each layer of a dense block sees the concatenation of every earlier map in the block and adds
`growth_rate` channels to it; transitions between blocks halve the channels (compression 0.5)
and the resolution. Module names follow timm's `densenet.py` (torchvision's, with `norm1`
rather than `norm.1`), so published weights load with strict=True. The network is
pre-activation (norm, ReLU, conv); as in timm, each ReLU lives inside its norm module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.features import FeatureInfo
from visionzoo.layers.norm_act import BatchNormAct2d
from visionzoo.layers.pool import GlobalPool, make_classifier
from visionzoo.registry import CamLayer, register_family


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to `bn_size * growth_rate` channels, then BN-ReLU-3x3 conv to `growth_rate`."""

    def __init__(self, in_chs: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0):
        super().__init__()
        self.norm1 = BatchNormAct2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = BatchNormAct2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.norm1(torch.cat(features, 1)))
        x = self.conv2(self.norm2(x))
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x


class DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers; returns the input and every layer's output, concatenated."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(in_chs + i * growth_rate, growth_rate, bn_size, drop_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # (N, in_chs + num_layers * growth_rate, H, W)


class DenseTransition(nn.Sequential):
    """BN-ReLU, a 1x1 convolution that compresses the channels, and 2x2 average pooling."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.add_module("norm", BatchNormAct2d(in_chs))
        self.add_module("conv", nn.Conv2d(in_chs, out_chs, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


@dataclass(frozen=True)
class DenseNetConfig:
    """DenseNet-BC: Huang, Liu, van der Maaten and Weinberger, 2016, "Densely Connected Convolutional Networks"."""

    growth_rate: int  # channels each dense layer adds (k in the paper)
    block_config: tuple[int, ...]  # dense layers per block
    bn_size: int = 4  # the bottleneck 1x1 convolution has bn_size * growth_rate channels


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al., 2016).

    `drop_rate` is the dropout before the classifier; `proj_drop_rate` the dropout on each
    dense layer's new features (the paper's dropout, used without data augmentation).
    """

    def __init__(self, config: DenseNetConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        chs = 2 * config.growth_rate

        # Everything up to the final norm lives in one `features` container, as in timm.
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_chans, chs, kernel_size=7, stride=2, padding=3, bias=False))
        self.features.add_module("norm0", BatchNormAct2d(chs))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.feature_info = [FeatureInfo("features.norm0", chs, 2)]

        stride = 4
        last = len(config.block_config) - 1
        for i, num_layers in enumerate(config.block_config):
            self.features.add_module(f"denseblock{i + 1}",
                                     DenseBlock(num_layers, chs, config.growth_rate, config.bn_size, proj_drop_rate))
            chs += num_layers * config.growth_rate
            if i != last:
                self.feature_info.append(FeatureInfo(f"features.denseblock{i + 1}", chs, stride))
                self.features.add_module(f"transition{i + 1}", DenseTransition(chs, chs // 2))
                chs //= 2
                stride *= 2
        # The last block is followed by norm and ReLU instead of a transition.
        self.features.add_module("norm5", BatchNormAct2d(chs))
        self.feature_info.append(FeatureInfo("features.norm5", chs, stride))

        self.num_features = chs
        self.global_pool = GlobalPool(global_pool)
        self.classifier = make_classifier(chs, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = make_classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, DenseNetConfig] = {
    "densenet121": DenseNetConfig(growth_rate=32, block_config=(6, 12, 24, 16)),
    "densenet161": DenseNetConfig(growth_rate=48, block_config=(6, 12, 36, 24)),
    "densenet169": DenseNetConfig(growth_rate=32, block_config=(6, 12, 32, 32)),
    "densenet201": DenseNetConfig(growth_rate=32, block_config=(6, 12, 48, 32)),
}

register_family(VARIANTS, family="densenet", paper="Densely Connected Convolutional Networks", year=2016,
                builder=DenseNet, recipe_style="convnet",
                cam_layer=CamLayer("features"))  # `features` ends with the final norm and activation
