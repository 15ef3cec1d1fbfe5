"""Convolution, batch norm and activation as one module (GoogLeNet, Inception v3, ...)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["BN_EPS_TF", "ConvBnAct", "conv_bn_relu"]

# TensorFlow's batch norm epsilon, kept by the ports of networks first trained there: the Inception
# family (torchvision's BasicConv2d) and MaxViT's TF weights
BN_EPS_TF = 1e-3


class ConvBnAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation.

    Submodules are named `conv` and `bn`, as in torchvision's `BasicConv2d` and timm's
    `ConvNormAct`, so their published weights load unchanged. The activation holds no
    weights; `act_layer=None` leaves it out. Arguments follow `nn.Conv2d`: padding
    defaults to 0, as there, not to "same".
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0, groups: int = 1, eps: float = 1e-5,
                 act_layer: type[nn.Module] | None = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=eps)
        # None rather than nn.Identity: small networks call this module a hundred times per image,
        # and an empty module call is a measurable share of their eager latency
        self.act = act_layer(inplace=True) if act_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


def conv_bn_relu(in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> ConvBnAct:
    """The Inception networks' unit (GoogLeNet, Inception v3): conv -> BN (eps 1e-3) -> ReLU."""
    return ConvBnAct(in_chs, out_chs, kernel_size, stride=stride, padding=padding, eps=BN_EPS_TF)
