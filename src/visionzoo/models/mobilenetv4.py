"""MobileNetV4 (Qin et al., 2024, "MobileNetV4: Universal Models for the Mobile Ecosystem").

One searched block does most of the work, the Universal Inverted Bottleneck (UIB): an inverted
residual with two optional depthwise convolutions, one before the expansion and one between
expansion and projection. Which of the two are present gives the four forms of the paper's
Figure 4: ExtraDW (both), IB (the middle one only: MobileNetV2's block), ConvNext (the first one
only) and FFN (neither). The early, high-resolution stages use plain and fused convolutions
(FusedIB), which run better on mobile accelerators. The hybrids add Mobile MQA: attention in
which every head shares one key and one value projection (multi-query), optionally computed
on a map downsampled by a strided depthwise convolution, with a layer scale on every block.

The network around the blocks is MobileNetV3's (`visionzoo.models.mobilenetv3`): a stride-2 3x3
stem, the stages, and the "efficient last stage" (global pooling before a 1x1 convolution to 1280
channels), here with batch norm after that convolution. This file holds the blocks, the stage tables
(the paper's Tables 11-13 (conv) and 14-15 (hybrid), as timm's `mobilenetv3.py` writes them) and the
config that builds them into that network. Module names follow timm's `_efficientnet_blocks.py`, so
its weights load with strict=True.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.layers.conv_bn_act import ConvBnAct
from visionzoo.layers.drop import DropPath
from visionzoo.layers.inverted_residual import ConvBlock, FusedMBConv
from visionzoo.layers.norm_act import BatchNormAct2d
from visionzoo.layers.stage_table import BuiltStages, make_divisible, stack_stages
from visionzoo.models.mobilenetv3 import MobileNetV3, MobileNetV3Config
from visionzoo.registry import CamLayer, VariantExtras, register_family


class GELU(nn.GELU):
    """Exact GELU that accepts (and ignores) `inplace`, so it can be the act of BatchNormAct2d and ConvBnAct."""

    def __init__(self, inplace: bool = False):
        super().__init__()


class LayerScale2d(nn.Module):
    """Per-channel scale of a residual branch on (N, C, H, W) maps; the parameter is timm's `gamma`."""

    def __init__(self, channels: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)  # (C,) -> (1, C, 1, 1)


# --- blocks --------------------------------------------------------------------------------


class UniversalInvertedResidual(nn.Module):
    """The Universal Inverted Bottleneck (MobileNetV4, Figure 4).

    [depthwise kxk -> BN] -> 1x1 expand -> BN -> act -> [depthwise kxk -> BN -> act] -> 1x1 project
    -> BN -> [layer scale], with a residual when shapes allow. The stride sits on the middle
    depthwise convolution, or on the first one where there is no middle one (ConvNext form).
    Absent convolutions are `nn.Identity`, so every block has the same attribute names.
    """

    def __init__(self, in_chs: int, out_chs: int, start_kernel: int, mid_kernel: int, stride: int = 1,
                 expansion: float = 1.0, act_layer: type[nn.Module] = nn.ReLU, layer_scale: float | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        if stride > 1 and not (start_kernel or mid_kernel):
            raise SettingError(f"a strided UIB needs a depthwise convolution; got kernels {start_kernel}, {mid_kernel}")
        self.has_skip = stride == 1 and in_chs == out_chs
        mid_chs = make_divisible(in_chs * expansion)
        self.dw_start = nn.Identity()
        if start_kernel:
            self.dw_start = ConvBnAct(in_chs, in_chs, start_kernel, stride=1 if mid_kernel else stride,
                                      padding=start_kernel // 2, groups=in_chs, act_layer=None)
        self.pw_exp = ConvBnAct(in_chs, mid_chs, 1, act_layer=act_layer)
        self.dw_mid = nn.Identity()
        if mid_kernel:
            self.dw_mid = ConvBnAct(mid_chs, mid_chs, mid_kernel, stride=stride, padding=mid_kernel // 2,
                                    groups=mid_chs, act_layer=act_layer)
        self.pw_proj = ConvBnAct(mid_chs, out_chs, 1, act_layer=None)  # linear bottleneck
        self.layer_scale = LayerScale2d(out_chs, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.pw_exp(self.dw_start(x))
        x = self.pw_proj(self.dw_mid(x))
        x = self.layer_scale(x)
        return self.drop_path(x) + shortcut if self.has_skip else x


class MultiQueryAttention2d(nn.Module):
    """Multi-query attention on (N, C, H, W) maps (Shazeer, 2019), as Mobile MQA computes it.

    Queries have `num_heads` heads; keys and values have one head, shared by all. With
    `kv_stride` > 1 a strided depthwise convolution and a BN shrink the map the keys and values
    are read from (the paper's "spatial reduction"), which is what makes attention affordable at
    the 1/16 resolution. Projections are 1x1 convolutions without bias, in `nn.Sequential`s named
    as timm's (`query.proj`, `key.down_conv`, `key.norm`, `key.proj`, ..., `output.proj`).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, key_dim: int, value_dim: int, kv_stride: int = 1,
                 kv_kernel: int = 3):
        super().__init__()
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.query = nn.Sequential(OrderedDict(proj=nn.Conv2d(dim, num_heads * key_dim, 1, bias=False)))
        self.key = self._key_or_value(dim, key_dim, kv_stride, kv_kernel)
        self.value = self._key_or_value(dim, value_dim, kv_stride, kv_kernel)
        self.output = nn.Sequential(OrderedDict(proj=nn.Conv2d(num_heads * value_dim, dim_out, 1, bias=False)))

    @staticmethod
    def _key_or_value(dim: int, out_dim: int, stride: int, kernel: int) -> nn.Sequential:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if stride > 1:
            layers["down_conv"] = nn.Conv2d(dim, dim, kernel, stride=stride, padding=kernel // 2, groups=dim,
                                            bias=False)
            layers["norm"] = nn.BatchNorm2d(dim)
        layers["proj"] = nn.Conv2d(dim, out_dim, 1, bias=False)
        return nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = self.query(x).reshape(n, self.num_heads, self.key_dim, h * w).transpose(-1, -2)  # (N, heads, HW, dk)
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, hw, dk): one head, shared
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, hw, dv)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, dv)
        out = out.transpose(1, 2).reshape(n, h, w, self.num_heads * self.value_dim).permute(0, 3, 1, 2)
        return self.output(out)  # (N, heads * dv, H, W) -> (N, dim_out, H, W)


class MobileAttention(nn.Module):
    """Mobile MQA block of the hybrids: BN -> multi-query attention -> layer scale, with a residual."""

    def __init__(self, in_chs: int, out_chs: int, num_heads: int, key_dim: int, kv_stride: int = 1,
                 kv_kernel: int = 3, layer_scale: float | None = None, drop_path: float = 0.0):
        super().__init__()
        self.has_skip = in_chs == out_chs
        self.norm = BatchNormAct2d(in_chs, act_layer=None)
        self.attn = MultiQueryAttention2d(in_chs, out_chs, num_heads, key_dim, key_dim, kv_stride, kv_kernel)
        self.layer_scale = LayerScale2d(out_chs, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.layer_scale(self.attn(self.norm(x)))
        return self.drop_path(x) + shortcut if self.has_skip else x


# --- stage tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row of a MobileNetV4 stage table: `repeats` blocks of one kind; only a stage's first block strides."""

    block: Literal["conv", "fused_ib", "uib", "mqa"]
    out_chs: int
    stride: int = 1
    repeats: int = 1
    kernel: int = 0  # conv and FusedIB: the kernel; UIB: the middle depthwise kernel (0: none); MQA: the kv downsampling kernel
    start_kernel: int = 0  # UIB only: the depthwise kernel before the expansion (0: none)
    expansion: float = 1.0
    num_heads: int = 0  # MQA only
    key_dim: int = 0  # MQA only: width of each query head and of the shared key and value
    kv_stride: int = 1  # MQA only


def conv(kernel: int, stride: int, out_chs: int) -> Row:
    return Row("conv", out_chs, stride, kernel=kernel)


def fused_ib(kernel: int, stride: int, expansion: float, out_chs: int) -> Row:
    return Row("fused_ib", out_chs, stride, kernel=kernel, expansion=expansion)


def uib(start_kernel: int, mid_kernel: int, stride: int, expansion: float, out_chs: int, repeats: int = 1) -> Row:
    """ExtraDW: both kernels; IB: (0, k); ConvNext: (k, 0); FFN: (0, 0)."""
    return Row("uib", out_chs, stride, repeats, kernel=mid_kernel, start_kernel=start_kernel, expansion=expansion)


def mqa(num_heads: int, key_dim: int, out_chs: int, kv_stride: int = 1) -> Row:
    return Row("mqa", out_chs, kernel=3, num_heads=num_heads, key_dim=key_dim, kv_stride=kv_stride)


Stage = tuple[Row, ...]
HEAD_STAGE: Stage = (conv(1, 1, 960),)  # every variant ends in a 1x1 conv to 960 before pooling

CONV_SMALL_STAGES: tuple[Stage, ...] = (
    (conv(3, 2, 32), conv(1, 1, 32)),
    (conv(3, 2, 96), conv(1, 1, 64)),
    (uib(5, 5, 2, 3, 96), uib(0, 3, 1, 2, 96, repeats=4), uib(3, 0, 1, 4, 96)),
    (uib(3, 3, 2, 6, 128), uib(5, 5, 1, 4, 128), uib(0, 5, 1, 4, 128), uib(0, 5, 1, 3, 128),
     uib(0, 3, 1, 4, 128, repeats=2)),
    HEAD_STAGE,
)

CONV_MEDIUM_STAGES: tuple[Stage, ...] = (
    (fused_ib(3, 2, 4, 48),),
    (uib(3, 5, 2, 4, 80), uib(3, 3, 1, 2, 80)),
    (uib(3, 5, 2, 6, 160), uib(3, 3, 1, 4, 160, repeats=2), uib(3, 5, 1, 4, 160), uib(3, 3, 1, 4, 160),
     uib(3, 0, 1, 4, 160), uib(0, 0, 1, 2, 160), uib(3, 0, 1, 4, 160)),
    (uib(5, 5, 2, 6, 256), uib(5, 5, 1, 4, 256), uib(3, 5, 1, 4, 256, repeats=2), uib(0, 0, 1, 4, 256),
     uib(3, 0, 1, 4, 256), uib(3, 5, 1, 2, 256), uib(5, 5, 1, 4, 256), uib(0, 0, 1, 4, 256, repeats=2),
     uib(5, 0, 1, 2, 256)),
    HEAD_STAGE,
)

CONV_LARGE_STAGES: tuple[Stage, ...] = (
    (fused_ib(3, 2, 4, 48),),
    (uib(3, 5, 2, 4, 96), uib(3, 3, 1, 4, 96)),
    (uib(3, 5, 2, 4, 192), uib(3, 3, 1, 4, 192, repeats=3), uib(3, 5, 1, 4, 192), uib(5, 3, 1, 4, 192, repeats=5),
     uib(3, 0, 1, 4, 192)),
    (uib(5, 5, 2, 4, 512, repeats=4), uib(5, 0, 1, 4, 512), uib(5, 3, 1, 4, 512), uib(5, 0, 1, 4, 512, repeats=2),
     uib(5, 3, 1, 4, 512), uib(5, 5, 1, 4, 512), uib(5, 0, 1, 4, 512, repeats=3)),
    HEAD_STAGE,
)

# The hybrids interleave Mobile MQA with the UIBs of the last two stages; at 1/16 resolution the
# keys and values are read from a map downsampled once more (kv_stride 2).
HYBRID_MEDIUM_STAGES: tuple[Stage, ...] = (
    (fused_ib(3, 2, 4, 48),),
    (uib(3, 5, 2, 4, 80), uib(3, 3, 1, 2, 80)),
    (uib(3, 5, 2, 6, 160), uib(0, 0, 1, 2, 160), uib(3, 3, 1, 4, 160), uib(3, 5, 1, 4, 160),
     mqa(4, 64, 160, kv_stride=2), uib(3, 3, 1, 4, 160), mqa(4, 64, 160, kv_stride=2), uib(3, 0, 1, 4, 160),
     mqa(4, 64, 160, kv_stride=2), uib(3, 3, 1, 4, 160), mqa(4, 64, 160, kv_stride=2), uib(3, 0, 1, 4, 160)),
    (uib(5, 5, 2, 6, 256), uib(5, 5, 1, 4, 256), uib(3, 5, 1, 4, 256, repeats=2), uib(0, 0, 1, 2, 256),
     uib(3, 5, 1, 2, 256), uib(0, 0, 1, 2, 256), uib(0, 0, 1, 4, 256), mqa(4, 64, 256), uib(3, 0, 1, 4, 256),
     mqa(4, 64, 256), uib(5, 5, 1, 4, 256), mqa(4, 64, 256), uib(5, 0, 1, 4, 256), mqa(4, 64, 256),
     uib(5, 0, 1, 4, 256)),
    HEAD_STAGE,
)

HYBRID_LARGE_STAGES: tuple[Stage, ...] = (
    (fused_ib(3, 2, 4, 48),),
    (uib(3, 5, 2, 4, 96), uib(3, 3, 1, 4, 96)),
    (uib(3, 5, 2, 4, 192), uib(3, 3, 1, 4, 192, repeats=3), uib(3, 5, 1, 4, 192), uib(5, 3, 1, 4, 192, repeats=2),
     mqa(8, 48, 192, kv_stride=2), uib(5, 3, 1, 4, 192), mqa(8, 48, 192, kv_stride=2), uib(5, 3, 1, 4, 192),
     mqa(8, 48, 192, kv_stride=2), uib(5, 3, 1, 4, 192), mqa(8, 48, 192, kv_stride=2), uib(3, 0, 1, 4, 192)),
    (uib(5, 5, 2, 4, 512, repeats=4), uib(5, 0, 1, 4, 512), uib(5, 3, 1, 4, 512), uib(5, 0, 1, 4, 512, repeats=2),
     uib(5, 3, 1, 4, 512), uib(5, 5, 1, 4, 512), mqa(8, 64, 512), uib(5, 0, 1, 4, 512), mqa(8, 64, 512),
     uib(5, 0, 1, 4, 512), mqa(8, 64, 512), uib(5, 0, 1, 4, 512), mqa(8, 64, 512), uib(5, 0, 1, 4, 512)),
    HEAD_STAGE,
)


def build_block(row: Row, in_chs: int, stride: int, drop_path: float, *, act_layer: type[nn.Module],
                layer_scale: float | None) -> tuple[nn.Module, int]:
    """The block of one table row, and its output width."""
    if row.block == "conv":
        return ConvBlock(in_chs, row.out_chs, row.kernel, stride, act_layer), row.out_chs
    if row.block == "fused_ib":  # timm's EdgeResidual (EfficientNet-EdgeTPU): EfficientNetV2's fused MBConv
        mid_chs = make_divisible(in_chs * row.expansion)
        block = FusedMBConv(in_chs, mid_chs, row.out_chs, row.kernel, stride, act_layer, drop_path=drop_path)
        return block, row.out_chs
    if row.block == "uib":
        return UniversalInvertedResidual(in_chs, row.out_chs, row.start_kernel, row.kernel, stride, row.expansion,
                                         act_layer, layer_scale, drop_path), row.out_chs
    if row.block == "mqa":
        return MobileAttention(in_chs, row.out_chs, row.num_heads, row.key_dim, row.kv_stride, row.kernel,
                               layer_scale, drop_path), row.out_chs
    raise SettingError(f"unknown MobileNetV4 block {row.block!r}; use 'conv', 'fused_ib', 'uib' or 'mqa'")


@dataclass(frozen=True)
class MobileNetV4Config(MobileNetV3Config):
    """MobileNetV4: Qin et al., 2024, "MobileNetV4: Universal Models for the Mobile Ecosystem".
    MobileNetV3's config with V4's stage tables, blocks and defaults (no width multiplier)."""

    stages: tuple[Stage, ...]  # one of the tables above
    stem_chs: int = 32  # the stride-2 3x3 stem: 32 (small, medium) or 24 (large)
    act_layer: type[nn.Module] = nn.ReLU  # GELU for hybrid_large
    head_norm: bool = True  # a batch norm after the head conv, which has no bias
    layer_scale: float | None = None  # initial layer scale of UIB and MQA blocks; 1e-5 in the hybrids

    def __post_init__(self) -> None:
        if self.width != 1.0:  # the field is MobileNetV3's; V4's tables give every width
            raise SettingError(f"MobileNetV4 has no width multiplier; got width={self.width}. Leave it at 1.0")

    def build_blocks(self, in_chs: int, drop_path_rate: float) -> BuiltStages:
        """The blocks of the stage table, after a stem of `in_chs` channels."""
        rows_per_stage = [[row for row in stage for _ in range(row.repeats)] for stage in self.stages]
        make_block = partial(build_block, act_layer=self.act_layer, layer_scale=self.layer_scale)
        return stack_stages(rows_per_stage, in_chs, make_block, drop_path_rate=drop_path_rate)


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, MobileNetV4Config] = {
    "mobilenetv4_conv_small": MobileNetV4Config(CONV_SMALL_STAGES, stem_chs=32),
    "mobilenetv4_conv_medium": MobileNetV4Config(CONV_MEDIUM_STAGES, stem_chs=32),
    "mobilenetv4_conv_large": MobileNetV4Config(CONV_LARGE_STAGES, stem_chs=24),
    "mobilenetv4_hybrid_medium": MobileNetV4Config(HYBRID_MEDIUM_STAGES, stem_chs=32, layer_scale=1e-5),
    "mobilenetv4_hybrid_large": MobileNetV4Config(HYBRID_LARGE_STAGES, stem_chs=24, act_layer=GELU, layer_scale=1e-5),
}

# The resolution each variant's published weights were trained at (timm's default configs).
_INPUT_SIZES = {"mobilenetv4_conv_medium": 256, "mobilenetv4_conv_large": 384, "mobilenetv4_hybrid_medium": 256,
                "mobilenetv4_hybrid_large": 384}

# The network is MobileNetV3's. The CAM reads the last block: the head convolution comes after the
# global pooling, as in MobileNetV3. No LoRA targets: the hybrids' few attention blocks are 1x1
# convolutions, where a low-rank update saves little.
register_family(VARIANTS, family="mobilenetv4", paper="MobileNetV4: Universal Models for the Mobile Ecosystem",
                year=2024, builder=MobileNetV3, recipe_style="convnet", cam_layer=CamLayer("blocks"), edge=True,
                extras={name: VariantExtras(input_size=(3, size, size)) for name, size in _INPUT_SIZES.items()})
