"""The mobile convolution blocks of MobileNetV2/V3 and EfficientNet (V1 and V2), and MobileNetV4's FusedIB.

Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (the
inverted residual, called MBConv in MnasNet and EfficientNet); Howard et al., 2017,
"MobileNets" (the depthwise-separable convolution); Tan & Le, 2021, "EfficientNetV2" (the
fused MBConv, first in Google's EfficientNet-EdgeTPU).

Each block is given its widths (`mid_chs`, the SE module) by the stage builder in
`visionzoo.layers.stage_table`, so the blocks hold no rounding rules. Submodule names follow
timm's `_efficientnet_blocks.py` (`conv_pw`, `bn1`, `conv_dw`, ...), so its weights load unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from visionzoo.layers.drop import DropPath
from visionzoo.layers.norm_act import BatchNormAct2d
from visionzoo.layers.padding import PaddingMode, create_conv2d

NormActLayer = Callable[..., nn.Module]  # norm_act(channels, act_layer=...) -> module; BatchNormAct2d by default


class DepthwiseSeparableConv(nn.Module):
    """Depthwise conv -> BN -> act -> (SE) -> pointwise conv -> BN, with a residual when shapes allow.

    It stands in for an inverted residual with expansion 1 (EfficientNet's and MobileNetV3's
    first stage), where the expanding 1x1 convolution would be wasted.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU, norm_act: NormActLayer = BatchNormAct2d,
                 se_layer: nn.Module | None = None, padding: PaddingMode = "", drop_path: float = 0.0):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = create_conv2d(in_chs, in_chs, kernel_size, stride=stride, groups=in_chs, padding=padding)
        self.bn1 = norm_act(in_chs, act_layer=act_layer)
        self.se = se_layer if se_layer is not None else nn.Identity()
        self.conv_pw = create_conv2d(in_chs, out_chs, 1, padding=padding)
        self.bn2 = norm_act(out_chs, act_layer=None)  # linear output, as in the inverted residual
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.bn1(self.conv_dw(x)))
        x = self.bn2(self.conv_pw(x))
        return self.drop_path(x) + shortcut if self.has_skip else x


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> BN -> act -> kxk depthwise -> BN -> act -> (SE) -> 1x1 project -> BN.

    The residual joins the narrow ends and the projection has no activation ("linear
    bottleneck"); the residual exists only when stride is 1 and widths agree.
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU, norm_act: NormActLayer = BatchNormAct2d,
                 se_layer: nn.Module | None = None, padding: PaddingMode = "", drop_path: float = 0.0):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = create_conv2d(in_chs, mid_chs, 1, padding=padding)
        self.bn1 = norm_act(mid_chs, act_layer=act_layer)
        self.conv_dw = create_conv2d(mid_chs, mid_chs, kernel_size, stride=stride, groups=mid_chs, padding=padding)
        self.bn2 = norm_act(mid_chs, act_layer=act_layer)
        self.se = se_layer if se_layer is not None else nn.Identity()
        self.conv_pwl = create_conv2d(mid_chs, out_chs, 1, padding=padding)
        self.bn3 = norm_act(out_chs, act_layer=None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn1(self.conv_pw(x))
        x = self.se(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pwl(x))
        return self.drop_path(x) + shortcut if self.has_skip else x


class FusedMBConv(nn.Module):
    """Fused MBConv: kxk expanding conv -> BN -> act -> (SE) -> 1x1 project -> BN.

    The inverted residual with its 1x1 expansion and kxk depthwise conv fused into one dense kxk
    conv, which makes better use of accelerators in the early, high-resolution stages (EfficientNetV2,
    section 3.2; MobileNetV4's FusedIB). Residual and linear projection as in `InvertedResidual`. timm calls
    it `EdgeResidual`; its names (`conv_exp`, `bn1`, `conv_pwl`, `bn2`) are kept for weight compatibility.
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU, norm_act: NormActLayer = BatchNormAct2d,
                 se_layer: nn.Module | None = None, padding: PaddingMode = "", drop_path: float = 0.0):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_exp = create_conv2d(in_chs, mid_chs, kernel_size, stride=stride, padding=padding)
        self.bn1 = norm_act(mid_chs, act_layer=act_layer)
        self.se = se_layer if se_layer is not None else nn.Identity()
        self.conv_pwl = create_conv2d(mid_chs, out_chs, 1, padding=padding)
        self.bn2 = norm_act(out_chs, act_layer=None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.bn1(self.conv_exp(x)))
        x = self.bn2(self.conv_pwl(x))
        return self.drop_path(x) + shortcut if self.has_skip else x


class ConvBlock(nn.Module):
    """A plain conv -> BN -> act layer placed among the blocks (MobileNetV3's last 1x1 conv), with a
    residual when `skip` and shapes allow (EfficientNetV2's first stage: a fused MBConv of expansion 1).

    The norm is named `bn1`, not `bn`, for weight compatibility with timm. Only a block with a residual
    has a `drop_path` module: without one there is no branch to drop.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU, norm_act: NormActLayer = BatchNormAct2d,
                 padding: PaddingMode = "", skip: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.bn1 = norm_act(out_chs, act_layer=act_layer)
        if self.has_skip:
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn1(self.conv(x))
        return self.drop_path(x) + shortcut if self.has_skip else x
