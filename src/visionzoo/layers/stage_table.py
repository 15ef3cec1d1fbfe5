"""Mobile networks written as a stage table, and the builder that turns one into modules.

MnasNet, MobileNetV3 and EfficientNet (V1 and V2) are each described in their paper by a table whose
rows read "block type, expansion, kernel, stride, output channels, repeats, squeeze-
excitation, activation". A family writes that table as `BlockSpec` rows; `build_stages`
scales it by a width and a depth multiplier and builds the blocks, one `nn.Sequential` per
stage, with the stochastic-depth rate of each block and the feature levels for
`features_only`. A family with blocks of its own (MobileNetV4) stacks them with `stack_stages`,
which `build_stages` uses too: one rule for strides, stochastic-depth rates and feature levels.

The scaling rules are EfficientNet's (and timm's, whose weights these models load):
channels are multiplied by the width multiplier and rounded to a multiple of 8, never
falling more than 10% below the exact value (EfficientNetV2's reference drops that floor:
`round_limit=0`); each stage's repeats are multiplied by the depth multiplier and rounded up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.inverted_residual import (
    ConvBlock,
    DepthwiseSeparableConv,
    FusedMBConv,
    InvertedResidual,
    NormActLayer,
)
from visionzoo.layers.padding import PaddingMode


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """The multiple of `divisor` nearest `value`, at least `divisor`, and never below `round_limit * value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def round_channels(channels: int, multiplier: float = 1.0, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Width scaling: `channels * multiplier` rounded by `make_divisible`."""
    return make_divisible(channels * multiplier, divisor, round_limit)


@dataclass(frozen=True)
class BlockSpec:
    """One row of a stage table: `repeats` blocks of one kind.

    Only the first block of a stage has the stride; the others have stride 1.
    """

    block: Literal["ds", "ir", "er", "conv"]  # depthwise-separable, inverted residual (MBConv), fused MBConv,
    # conv-BN-act
    expansion: float  # mid width / input width of an inverted residual (1 for "ds" and "conv")
    kernel: int
    stride: int
    out_chs: int  # before width scaling
    repeats: int  # before depth scaling
    se_ratio: float = 0.0  # squeeze-excitation width as a fraction of its reference width; 0: no SE
    act: type[nn.Module] | None = None  # this row's activation; None: the network's
    skip: bool = False  # "conv" rows: a residual where shapes allow (the other blocks always have one)


Stage = tuple[BlockSpec, ...]  # most stages are one row; MobileNetV3's mix two or three

# se_layer(channels, spec, block_act) -> module: how a family sizes and activates its SE
SeFactory = Callable[[int, BlockSpec, type[nn.Module]], nn.Module]


def scale_depth(stage: Stage, multiplier: float) -> list[BlockSpec]:
    """The stage's rows, one per block, after scaling its total repeats by `multiplier` (rounded up).

    The scaled count is shared among the rows in proportion, last row first, so that a
    stage's distinct first block stays single as long as possible.
    """
    remaining = sum(spec.repeats for spec in stage)
    remaining_scaled = int(math.ceil(remaining * multiplier))
    counts = []
    for spec in reversed(stage):
        count = max(1, round(spec.repeats / remaining * remaining_scaled))
        counts.append(count)
        remaining -= spec.repeats
        remaining_scaled -= count
    return [spec for spec, count in zip(stage, reversed(counts)) for _ in range(count)]


@dataclass
class BuiltStages:
    """What `build_stages` returns: the stages, their feature levels and the last width."""

    stages: list[nn.Sequential]
    feature_info: list[FeatureInfo]  # module names relative to the network ("blocks.N")
    out_chs: int


# make_block(row, in_chs, stride, drop_path) -> (block, out_chs): how a family turns one table row into a block
BlockFactory = Callable[[Any, int, int, float], tuple[nn.Module, int]]


def stack_stages(rows_per_stage: Sequence[Sequence[Any]], in_chs: int, make_block: BlockFactory, *,
                 drop_path_rate: float = 0.0) -> BuiltStages:
    """One `nn.Sequential` per stage of `rows_per_stage` (a row per block, each with a `stride`), after a
    stem of `in_chs` channels and stride 2 named `bn1`.

    Only a stage's first block has its row's stride. Block `i` of `n` drops its residual branch with
    rate `drop_path_rate * i / n`, as in the TF reference. A feature level is taken where the
    resolution is about to halve and at the end; the stem is one when the first stage downsamples.
    """
    total_blocks = sum(len(rows) for rows in rows_per_stage)
    reduction = 2
    feature_info = []
    if rows_per_stage[0][0].stride > 1:  # the first stage downsamples, so the stem (`bn1`) is a level of its own
        feature_info.append(FeatureInfo("bn1", in_chs, reduction))

    stages, block_index = [], 0
    for stage_index, rows in enumerate(rows_per_stage):
        blocks = []
        for index_in_stage, row in enumerate(rows):
            stride = row.stride if index_in_stage == 0 else 1
            block, in_chs = make_block(row, in_chs, stride, drop_path_rate * block_index / total_blocks)
            blocks.append(block)
            reduction *= stride
            block_index += 1
        stages.append(nn.Sequential(*blocks))
        is_last = stage_index + 1 == len(rows_per_stage)
        if is_last or rows_per_stage[stage_index + 1][0].stride > 1:
            feature_info.append(FeatureInfo(f"blocks.{stage_index}", in_chs, reduction))
    return BuiltStages(stages, feature_info, in_chs)


def build_stages(table: tuple[Stage, ...], in_chs: int, *, width: float, depth: float, act_layer: type[nn.Module],
                 norm_act: NormActLayer, se_layer: SeFactory | None, padding: PaddingMode = "",
                 drop_path_rate: float = 0.0, fixed_depth_stages: tuple[int, ...] = (),
                 round_limit: float = 0.9) -> BuiltStages:
    """Build the blocks of `table` after a stem of `in_chs` channels and stride 2 (see `stack_stages`).

    `fixed_depth_stages` are stage indices whose repeats are not scaled (EfficientNet-Lite's
    first and last). `round_limit` is `round_channels`'s, for the output widths.
    """

    def make_block(spec: BlockSpec, in_chs: int, stride: int, drop_path: float) -> tuple[nn.Module, int]:
        out_chs = round_channels(spec.out_chs, width, round_limit=round_limit)
        act = spec.act or act_layer
        if spec.block == "ds":
            se = se_layer(in_chs, spec, act) if se_layer is not None and spec.se_ratio else None
            return DepthwiseSeparableConv(in_chs, out_chs, spec.kernel, stride, act, norm_act, se, padding,
                                          drop_path), out_chs
        if spec.block == "ir":
            mid_chs = make_divisible(in_chs * spec.expansion)
            se = se_layer(mid_chs, spec, act) if se_layer is not None and spec.se_ratio else None
            return InvertedResidual(in_chs, mid_chs, out_chs, spec.kernel, stride, act, norm_act, se, padding,
                                    drop_path), out_chs
        if spec.block == "er":
            mid_chs = make_divisible(in_chs * spec.expansion)
            se = se_layer(mid_chs, spec, act) if se_layer is not None and spec.se_ratio else None
            return FusedMBConv(in_chs, mid_chs, out_chs, spec.kernel, stride, act, norm_act, se, padding,
                               drop_path), out_chs
        if spec.block == "conv":
            return ConvBlock(in_chs, out_chs, spec.kernel, stride, act, norm_act, padding, spec.skip,
                             drop_path), out_chs
        raise SettingError(f"unknown block type {spec.block!r} in a stage table; use 'ds', 'ir', 'er' or 'conv'")

    rows_per_stage = [scale_depth(stage, 1.0 if index in fixed_depth_stages else depth)
                      for index, stage in enumerate(table)]
    return stack_stages(rows_per_stage, in_chs, make_block, drop_path_rate=drop_path_rate)


def init_weights_tf_style(model: nn.Module) -> None:
    """Initialisation of the TF reference implementations of MnasNet, EfficientNet and MobileNetV3.

    Convolutions: normal with std sqrt(2 / fan_out), fan_out counting one group;
    linears: uniform in +-1/sqrt(out_features); batch norm: identity.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.weight.shape[0])
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)
