"""GoogLeNet (Inception v1).

Szegedy et al., 2014, "Going Deeper with Convolutions".

Nine Inception modules, each running 1x1, 3x3 and "5x5" convolutions and a pooled
projection side by side and concatenating them, and two auxiliary classifiers on
intermediate maps that add gradient signal during training only. Module names follow
torchvision's `googlenet`, with batch norm after every convolution as there, so its
weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.data import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.conv_bn_act import conv_bn_relu
from visionzoo.layers.pool import GlobalPool, make_classifier
from visionzoo.registry import CamLayer, register_family


class Inception(nn.Module):
    """Four parallel branches, concatenated on channels.

    The third branch uses a 3x3 convolution where the paper has 5x5: torchvision's
    published weights were trained that way, and we keep it so they load and agree.
    """

    def __init__(self, in_chs: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1 = conv_bn_relu(in_chs, ch1x1, 1)
        self.branch2 = nn.Sequential(conv_bn_relu(in_chs, ch3x3red, 1), conv_bn_relu(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(conv_bn_relu(in_chs, ch5x5red, 1), conv_bn_relu(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     conv_bn_relu(in_chs, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: pool to 4x4, 1x1 conv to 128, two fully connected layers."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.7):
        super().__init__()
        self.conv = conv_bn_relu(in_chs, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = make_classifier(1024, num_classes)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, 4))
        x = torch.flatten(x, 1)  # (N, 128, 4, 4) -> (N, 2048)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


class GoogLeNetOutputs(NamedTuple):
    """What a GoogLeNet with auxiliary classifiers returns in training mode (torchvision's order)."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


# Inception module widths (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj): the paper's Table 1.
InceptionWidths = tuple[int, int, int, int, int, int, int]


def _out_chs(widths: InceptionWidths) -> int:
    _, ch1x1, _, ch3x3, _, ch5x5, pool_proj = widths
    return ch1x1 + ch3x3 + ch5x5 + pool_proj


@dataclass(frozen=True)
class GoogLeNetConfig:
    """GoogLeNet (Inception v1): Szegedy et al., 2014, "Going Deeper with Convolutions"."""

    inception3: tuple[InceptionWidths, ...] = ((192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64))
    inception4: tuple[InceptionWidths, ...] = (
        (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64),
        (512, 112, 144, 288, 32, 64, 64), (528, 256, 160, 320, 32, 128, 128))
    inception5: tuple[InceptionWidths, ...] = ((832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128))


class GoogLeNet(nn.Module):
    """GoogLeNet (Szegedy et al., 2014), with its two auxiliary classifiers.

    In training mode with `aux_logits=True` (the default, as in torchvision without weights)
    `forward` returns `GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`; in eval mode, or
    with `num_classes=0`, only the logits (or pooled features). `transform_input=True`
    re-normalises ImageNet-normalised input to the [-1, 1] range the original Caffe weights
    expect; off by default, as in torchvision without weights.
    """

    def __init__(self, config: GoogLeNetConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.2, aux_drop_rate: float = 0.7, aux_logits: bool = True,
                 transform_input: bool = False, global_pool: str = "avg"):
        super().__init__()
        if transform_input and in_chans != 3:
            raise SettingError(f"transform_input=True re-normalises RGB input; it needs in_chans=3, got {in_chans}")
        self.config = config
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = conv_bn_relu(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = conv_bn_relu(64, 64, 1)
        self.conv3 = conv_bn_relu(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a, self.inception3b = (Inception(*w) for w in config.inception3)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        (self.inception4a, self.inception4b, self.inception4c,
         self.inception4d, self.inception4e) = (Inception(*w) for w in config.inception4)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a, self.inception5b = (Inception(*w) for w in config.inception5)

        if aux_logits:  # after inception4a and inception4d
            self.aux1 = InceptionAux(config.inception4[1][0], num_classes, aux_drop_rate)
            self.aux2 = InceptionAux(config.inception4[4][0], num_classes, aux_drop_rate)
        else:
            self.aux1 = self.aux2 = None

        self.num_features = _out_chs(config.inception5[-1])
        self.global_pool = GlobalPool(global_pool)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = make_classifier(self.num_features, num_classes)
        self.feature_info = [
            FeatureInfo("conv1", 64, 2),
            FeatureInfo("conv3", 192, 4),
            FeatureInfo("inception3b", _out_chs(config.inception3[-1]), 8),
            FeatureInfo("inception4e", _out_chs(config.inception4[-1]), 16),
            FeatureInfo("inception5b", self.num_features, 32),
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier, and new last layers of the auxiliary classifiers to match."""
        self.num_classes = num_classes
        self.fc = make_classifier(self.num_features, num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = make_classifier(1024, num_classes)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # (x * std + mean - 0.5) / 0.5 per channel: ImageNet normalisation -> [-1, 1] range
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _forward_stages(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final map, and the auxiliary classifiers' outputs (aux1, aux2) when asked for."""
        if self.transform_input:
            x = self._transform_input(x)
        aux_outputs = []
        x = self.maxpool1(self.conv1(x))  # (N, 64, H/4, W/4)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (N, 192, H/8, W/8)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (N, 480, H/16, W/16)
        x = self.inception4a(x)
        if with_aux:
            aux_outputs.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if with_aux:
            aux_outputs.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))  # (N, 832, H/32, W/32)
        x = self.inception5b(self.inception5a(x))  # (N, 1024, H/32, W/32)
        return x, aux_outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_stages(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        with_aux = self.training and self.aux_logits and self.num_classes > 0
        x, aux_outputs = self._forward_stages(x, with_aux)
        logits = self.forward_head(x)
        if with_aux:
            aux1, aux2 = aux_outputs
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, GoogLeNetConfig] = {"googlenet": GoogLeNetConfig()}

register_family(VARIANTS, family="googlenet", paper="Going Deeper with Convolutions", year=2014, builder=GoogLeNet,
                recipe_style="convnet", reference_library="torchvision", cam_layer=CamLayer("inception5b"))
