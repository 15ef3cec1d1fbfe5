"""TensorFlow "SAME" padding for convolutions, which the original TF weights of
EfficientNet, MnasNet and MobileNet were trained with.

PyTorch pads symmetrically by `(kernel - 1) // 2`. TensorFlow's "SAME" pads so that the
output is `ceil(input / stride)` and, when the total padding is odd, puts the extra pixel
at the bottom and right. For a stride-1 convolution with an odd kernel the two agree; for a
strided convolution they differ by a one-pixel shift, which is enough to spoil ported weights.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError

PaddingMode = Literal["", "same"]  # "" pads symmetrically (PyTorch); "same" pads as TensorFlow does


def same_padding_amount(size: int, kernel_size: int, stride: int, dilation: int = 1) -> int:
    """Total padding TensorFlow's "SAME" adds along one spatial dimension."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """A Conv2d that pads its input as TensorFlow's "SAME" does, computed from the input size.

    The padding depends on the input's height and width, so it is applied in `forward`,
    not fixed at construction. Parameters are those of `nn.Conv2d` (`weight`, `bias`).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = True):
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=0, dilation=dilation,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = same_padding_amount(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = same_padding_amount(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        # F.pad takes (left, right, top, bottom); the odd pixel goes right and bottom, as in TF
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def create_conv2d(in_chs: int, out_chs: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
                  groups: int = 1, bias: bool = False, padding: PaddingMode = "") -> nn.Conv2d:
    """A convolution padded symmetrically (`padding=""`) or as TensorFlow's "SAME" (`"same"`).

    With "same", a convolution whose TF padding is symmetric anyway (stride 1, odd kernel)
    is a plain `nn.Conv2d`, so only the strided ones pay for padding at run time.
    """
    if padding not in ("", "same"):
        raise SettingError(f"padding must be '' (symmetric) or 'same' (TensorFlow), got {padding!r}")
    symmetric = (stride - 1 + dilation * (kernel_size - 1)) // 2
    if padding == "same" and not (stride == 1 and dilation * (kernel_size - 1) % 2 == 0):
        return Conv2dSame(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, groups=groups, bias=bias)
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=symmetric, dilation=dilation,
                     groups=groups, bias=bias)
