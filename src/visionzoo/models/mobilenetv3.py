"""MobileNetV3 (Howard et al., 2019, "Searching for MobileNetV3").

Inverted residual blocks found by architecture search, some with squeeze-excitation
(ReLU and hard-sigmoid inside), with ReLU in the early stages and hard-swish in the late
ones, and an "efficient last stage": global pooling comes before the last 1x1 convolution,
which has no batch norm. The stage tables below are the paper's Tables 1 and 2, with each
expansion written as a ratio of the block's input width, so that width multipliers scale
the expanded widths as timm does (whose weights these models load with strict=True).

MobileNetV4 (`visionzoo.models.mobilenetv4`) builds this network (stem, stages, efficient last stage)
with its own stages and a batch norm after the head convolution, through its config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from visionzoo.layers.norm_act import BatchNormAct2d
from visionzoo.layers.padding import create_conv2d
from visionzoo.layers.pool import GlobalPool, make_classifier
from visionzoo.layers.squeeze_excite import SqueezeExcite
from visionzoo.layers.stage_table import (
    BlockSpec,
    BuiltStages,
    Stage,
    build_stages,
    init_weights_tf_style,
    make_divisible,
    round_channels,
)
from visionzoo.registry import CamLayer, register_family

_RELU = nn.ReLU  # rows without it use the network's hard-swish

# Table 1 of the paper (Large). Expanded widths: 16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960.
LARGE_STAGES: tuple[Stage, ...] = (
    #           block  exp  kernel stride out  repeats
    (BlockSpec("ds", 1, 3, 1, 16, 1, act=_RELU),),
    (BlockSpec("ir", 4, 3, 2, 24, 1, act=_RELU),
     BlockSpec("ir", 3, 3, 1, 24, 1, act=_RELU)),
    (BlockSpec("ir", 3, 5, 2, 40, 3, se_ratio=0.25, act=_RELU),),
    (BlockSpec("ir", 6, 3, 2, 80, 1),
     BlockSpec("ir", 2.5, 3, 1, 80, 1),
     BlockSpec("ir", 2.3, 3, 1, 80, 2)),
    (BlockSpec("ir", 6, 3, 1, 112, 2, se_ratio=0.25),),
    (BlockSpec("ir", 6, 5, 2, 160, 3, se_ratio=0.25),),
    (BlockSpec("conv", 1, 1, 1, 960, 1),),
)

# Table 2 of the paper (Small). Expanded widths: 16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576.
SMALL_STAGES: tuple[Stage, ...] = (
    (BlockSpec("ds", 1, 3, 2, 16, 1, se_ratio=0.25, act=_RELU),),
    (BlockSpec("ir", 4.5, 3, 2, 24, 1, act=_RELU),
     BlockSpec("ir", 3.67, 3, 1, 24, 1, act=_RELU)),
    (BlockSpec("ir", 4, 5, 2, 40, 1, se_ratio=0.25),
     BlockSpec("ir", 6, 5, 1, 40, 2, se_ratio=0.25)),
    (BlockSpec("ir", 3, 5, 1, 48, 2, se_ratio=0.25),),
    (BlockSpec("ir", 6, 5, 2, 96, 3, se_ratio=0.25),),
    (BlockSpec("conv", 1, 1, 1, 576, 1),),
)
STEM_CHS = 16


def mobilenetv3_se(channels: int, spec: BlockSpec, act_layer: type[nn.Module]) -> SqueezeExcite:
    """MobileNetV3's SE: a quarter of the expanded width, rounded to 8; always ReLU, gated by hard sigmoid."""
    return SqueezeExcite(channels, make_divisible(channels * spec.se_ratio), act_layer=nn.ReLU,
                         gate_layer=nn.Hardsigmoid)


@dataclass(frozen=True)
class MobileNetV3Config:
    """MobileNetV3: Howard et al., 2019, "Searching for MobileNetV3"."""

    stages: tuple[Stage, ...]  # LARGE_STAGES or SMALL_STAGES
    width: float = 1.0  # channel multiplier
    head_chs: int = 1280  # width of the 1x1 conv after pooling: 1280 (large) or 1024 (small), at every multiplier
    stem_chs: int = STEM_CHS  # the stride-2 3x3 stem conv's width, before width scaling
    act_layer: type[nn.Module] = nn.Hardswish  # the network's; ReLU where a row says so
    head_norm: bool = False  # MobileNetV4: a batch norm after the head conv, in place of its bias

    def build_blocks(self, in_chs: int, drop_path_rate: float) -> BuiltStages:
        """The blocks of the stage table, scaled by `width`, after a stem of `in_chs` channels."""
        return build_stages(self.stages, in_chs, width=self.width, depth=1.0, act_layer=self.act_layer,
                            norm_act=BatchNormAct2d, se_layer=mobilenetv3_se, drop_path_rate=drop_path_rate)


class MobileNetV3(nn.Module):
    """MobileNetV3 Large and Small (Howard et al., 2019); MobileNetV4 through its config.

    `forward_features` returns the last stage's map (960 channels for Large); the head pools
    it and applies the 1x1 conv to `num_features` (1280) channels, which `pre_logits` returns.
    """

    def __init__(self, config: MobileNetV3Config, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        act_layer = config.act_layer
        # timm keeps the stem at 16 channels below width 0.75
        stem_chs = config.stem_chs if config.width < 0.75 else round_channels(config.stem_chs, config.width)

        self.conv_stem = create_conv2d(in_chans, stem_chs, 3, stride=2)
        self.bn1 = BatchNormAct2d(stem_chs, act_layer=act_layer)
        built = config.build_blocks(stem_chs, drop_path_rate)
        self.blocks = nn.Sequential(*built.stages)
        self.feature_info = built.feature_info

        # The "efficient last stage": pooling, then a 1x1 conv with a bias and an activation (V3), or
        # without a bias and with a batch norm and activation (V4). The unused one of `norm_head` and
        # `act2` is an identity; both names are timm's.
        self.global_pool = GlobalPool(global_pool)
        self.conv_head = nn.Conv2d(built.out_chs, config.head_chs, 1, bias=not config.head_norm)
        self.norm_head = BatchNormAct2d(config.head_chs, act_layer=act_layer) if config.head_norm else nn.Identity()
        self.act2 = nn.Identity() if config.head_norm else act_layer(inplace=True)
        self.num_features = config.head_chs
        self.classifier = make_classifier(self.num_features, num_classes)
        init_weights_tf_style(self)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = make_classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        return self.blocks(x)  # (N, last stage width, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)[:, :, None, None]  # (N, C) -> (N, C, 1, 1) for the 1x1 conv
        x = self.act2(self.norm_head(self.conv_head(x))).flatten(1)  # (N, num_features)
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, MobileNetV3Config] = {
    "mobilenetv3_small_050": MobileNetV3Config(SMALL_STAGES, 0.50, 1024),
    "mobilenetv3_small_075": MobileNetV3Config(SMALL_STAGES, 0.75, 1024),
    "mobilenetv3_small_100": MobileNetV3Config(SMALL_STAGES, 1.00, 1024),
    "mobilenetv3_large_075": MobileNetV3Config(LARGE_STAGES, 0.75, 1280),
    "mobilenetv3_large_100": MobileNetV3Config(LARGE_STAGES, 1.00, 1280),
}

# The CAM reads the last block: MobileNetV3's head convolution comes after the global pooling.
register_family(VARIANTS, family="mobilenetv3", paper="Searching for MobileNetV3", year=2019, builder=MobileNetV3,
                recipe_style="convnet", cam_layer=CamLayer("blocks"), edge=True)
