"""Inception v3.

Szegedy et al., 2015, "Rethinking the Inception Architecture for Computer Vision".

A stem of unpadded convolutions, then three groups of Inception modules (35x35, 17x17 and
8x8 at 299 px) joined by grid-reduction modules, with large convolutions factorised into
stacks of small and asymmetric (1xn, nx1) ones. Module names follow timm's
`inception_v3.py` (the TensorFlow-style `Mixed_6e`, `Conv2d_1a_3x3` names are kept for
weight compatibility), so published weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.features import FeatureInfo
from visionzoo.layers.conv_bn_act import conv_bn_relu
from visionzoo.layers.pool import GlobalPool, make_classifier
from visionzoo.registry import CamLayer, VariantExtras, register_family


class InceptionA(nn.Module):
    """35x35 module: 1x1, 5x5, double 3x3 and pooled-projection branches (paper Figure 5)."""

    def __init__(self, in_chs: int, pool_features: int):
        super().__init__()
        self.branch1x1 = conv_bn_relu(in_chs, 64, 1)
        self.branch5x5_1 = conv_bn_relu(in_chs, 48, 1)
        self.branch5x5_2 = conv_bn_relu(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv_bn_relu(in_chs, 64, 1)
        self.branch3x3dbl_2 = conv_bn_relu(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv_bn_relu(96, 96, 3, padding=1)
        self.branch_pool = conv_bn_relu(in_chs, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17: strided 3x3, strided double 3x3 and max-pool branches."""

    def __init__(self, in_chs: int):
        super().__init__()
        self.branch3x3 = conv_bn_relu(in_chs, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv_bn_relu(in_chs, 64, 1)
        self.branch3x3dbl_2 = conv_bn_relu(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv_bn_relu(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """17x17 module with 7x7 convolutions factorised into 1x7 and 7x1 (paper Figure 6)."""

    def __init__(self, in_chs: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = conv_bn_relu(in_chs, 192, 1)
        self.branch7x7_1 = conv_bn_relu(in_chs, c7, 1)
        self.branch7x7_2 = conv_bn_relu(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv_bn_relu(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv_bn_relu(in_chs, c7, 1)
        self.branch7x7dbl_2 = conv_bn_relu(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv_bn_relu(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv_bn_relu(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv_bn_relu(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv_bn_relu(in_chs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8: strided 3x3, strided 7x7-then-3x3 and max-pool branches."""

    def __init__(self, in_chs: int):
        super().__init__()
        self.branch3x3_1 = conv_bn_relu(in_chs, 192, 1)
        self.branch3x3_2 = conv_bn_relu(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv_bn_relu(in_chs, 192, 1)
        self.branch7x7x3_2 = conv_bn_relu(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv_bn_relu(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv_bn_relu(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """8x8 module whose 3x3 branches fan out into parallel 1x3 and 3x1 (paper Figure 7)."""

    def __init__(self, in_chs: int):
        super().__init__()
        self.branch1x1 = conv_bn_relu(in_chs, 320, 1)
        self.branch3x3_1 = conv_bn_relu(in_chs, 384, 1)
        self.branch3x3_2a = conv_bn_relu(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv_bn_relu(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv_bn_relu(in_chs, 448, 1)
        self.branch3x3dbl_2 = conv_bn_relu(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv_bn_relu(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv_bn_relu(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv_bn_relu(in_chs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 map (the paper finds it acts as a regulariser)."""

    def __init__(self, in_chs: int, num_classes: int):
        super().__init__()
        self.conv0 = conv_bn_relu(in_chs, 128, 1)
        self.conv1 = conv_bn_relu(128, 768, 5)
        self.fc = make_classifier(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)  # (N, 768, 17, 17) -> (N, 768, 5, 5)
        x = self.conv1(self.conv0(x))  # (N, 768, 1, 1)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, 768)
        return self.fc(x)


@dataclass(frozen=True)
class InceptionV3Config:
    """Inception v3: Szegedy, Vanhoucke, Ioffe, Shlens and Wojna, 2015, "Rethinking the Inception
    Architecture for Computer Vision"."""

    channels_7x7: tuple[int, int, int, int] = (128, 160, 160, 192)  # bottleneck width of Mixed_6b..6e
    pool_features: tuple[int, int, int] = (32, 64, 64)  # pooled-branch width of Mixed_5b..5d


class InceptionV3(nn.Module):
    """Inception v3 (Szegedy et al., 2015).

    Without auxiliary classifier by default, as timm's `inception_v3`. With `aux_logits=True`
    (the layout of torchvision's weights) `forward` returns `(logits, aux_logits)` in training
    mode and the logits alone in eval mode. Needs an input of at least 75 px; the auxiliary
    classifier's unpadded 5x5 convolution needs at least 299 px (a 17x17 Mixed_6e map).
    """

    def __init__(self, config: InceptionV3Config, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, aux_logits: bool = False, global_pool: str = "avg"):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.aux_logits = aux_logits

        self.Conv2d_1a_3x3 = conv_bn_relu(in_chans, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv_bn_relu(32, 32, 3)
        self.Conv2d_2b_3x3 = conv_bn_relu(32, 64, 3, padding=1)
        self.Pool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = conv_bn_relu(64, 80, 1)
        self.Conv2d_4a_3x3 = conv_bn_relu(80, 192, 3)
        self.Pool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        p5b, p5c, p5d = config.pool_features
        self.Mixed_5b = InceptionA(192, pool_features=p5b)
        self.Mixed_5c = InceptionA(224 + p5b, pool_features=p5c)
        self.Mixed_5d = InceptionA(224 + p5c, pool_features=p5d)
        self.Mixed_6a = InceptionB(224 + p5d)
        c6b, c6c, c6d, c6e = config.channels_7x7
        self.Mixed_6b = InceptionC(768, channels_7x7=c6b)
        self.Mixed_6c = InceptionC(768, channels_7x7=c6c)
        self.Mixed_6d = InceptionC(768, channels_7x7=c6d)
        self.Mixed_6e = InceptionC(768, channels_7x7=c6e)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)

        self.num_features = 2048
        self.global_pool = GlobalPool(global_pool)
        self.fc = make_classifier(self.num_features, num_classes)
        # timm's stage ends, with nominal strides: the unpadded convolutions make each map a few
        # pixels smaller than input / stride (e.g. 147, 71, 35, 17, 8 at 299 px).
        self.feature_info = [FeatureInfo("Conv2d_2b_3x3", 64, 2), FeatureInfo("Conv2d_4a_3x3", 192, 4),
                             FeatureInfo("Mixed_5d", 224 + p5d, 8), FeatureInfo("Mixed_6e", 768, 16),
                             FeatureInfo("Mixed_7c", 2048, 32)]
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, std=0.01)
            if isinstance(self.AuxLogits.fc, nn.Linear):
                nn.init.trunc_normal_(self.AuxLogits.fc.weight, std=0.001)

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier, and a new last layer of the auxiliary classifier to match."""
        self.num_classes = num_classes
        self.fc = make_classifier(self.num_features, num_classes)
        if self.AuxLogits is not None:
            self.AuxLogits.fc = make_classifier(768, num_classes)

    def _forward_to_aux(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147) at 299 px
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.Pool1(x)))  # (N, 192, 71, 71)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(self.Pool2(x))))  # (N, 288, 35, 35)
        x = self.Mixed_6a(x)  # (N, 768, 17, 17)
        return self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (N, 768, 17, 17)

    def _forward_from_aux(self, x: torch.Tensor) -> torch.Tensor:
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_from_aux(self._forward_to_aux(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.dropout(self.global_pool(x), self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self._forward_to_aux(x)
        if self.training and self.AuxLogits is not None and self.num_classes > 0:
            aux = self.AuxLogits(x)
            return self.forward_head(self._forward_from_aux(x)), aux
        return self.forward_head(self._forward_from_aux(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, InceptionV3Config] = {"inception_v3": InceptionV3Config()}

register_family(VARIANTS, family="inception_v3", paper="Rethinking the Inception Architecture for Computer Vision",
                year=2015, builder=InceptionV3, recipe_style="convnet", cam_layer=CamLayer("Mixed_7c"),
                extras={"inception_v3": VariantExtras(input_size=(3, 299, 299))})
