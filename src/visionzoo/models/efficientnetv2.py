"""EfficientNetV2.

Tan & Le, 2021, "EfficientNetV2: Smaller Models and Faster Training". A stage table like
EfficientNet's, found by a search that also weighs training speed: the early stages use fused
MBConv (one dense kxk conv in place of the 1x1 expansion and kxk depthwise conv, faster at high
resolution on accelerators), smaller expansion ratios, 3x3 kernels only, and no squeeze-excitation
before the MBConv stages. Training is progressive (image size and regularisation grow together);
that is a recipe, not a part of the network.

S is the paper's Table 4; M and L, and B0 (the base that B1-B3 scale by EfficientNet's compound
multipliers), are the stage tables of the official release (google/automl `efficientnetv2`).
The `tf_` variants pad as TensorFlow's "SAME" and use BN eps 1e-3, which the weights ported from
TensorFlow need; the others are PyTorch-padded (timm's own training). Module names follow timm's
`efficientnet.py`, so its weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from visionzoo.layers.norm_act import BatchNormAct2d
from visionzoo.layers.padding import PaddingMode, create_conv2d
from visionzoo.layers.pool import GlobalPool, make_classifier
from visionzoo.layers.stage_table import BlockSpec, Stage, build_stages, init_weights_tf_style, round_channels
from visionzoo.models.efficientnet import efficientnet_se
from visionzoo.registry import CamLayer, VariantExtras, register_family

# "conv" is Fused-MBConv1 (expansion 1: a 3x3 conv, BN, SiLU, with a residual), "er" Fused-MBConv,
# "ir" MBConv with squeeze-excitation a quarter of the block's input width. Every kernel is 3x3.
EFFICIENTNETV2_S_STAGES: tuple[Stage, ...] = (
    #          block  exp kernel stride out repeats
    (BlockSpec("conv", 1, 3, 1, 24, 2, skip=True),),
    (BlockSpec("er",   4, 3, 2, 48, 4),),
    (BlockSpec("er",   4, 3, 2, 64, 4),),
    (BlockSpec("ir",   4, 3, 2, 128, 6, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 1, 160, 9, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 2, 256, 15, se_ratio=0.25),),
)
EFFICIENTNETV2_M_STAGES: tuple[Stage, ...] = (
    #          block  exp kernel stride out repeats
    (BlockSpec("conv", 1, 3, 1, 24, 3, skip=True),),
    (BlockSpec("er",   4, 3, 2, 48, 5),),
    (BlockSpec("er",   4, 3, 2, 80, 5),),
    (BlockSpec("ir",   4, 3, 2, 160, 7, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 1, 176, 14, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 2, 304, 18, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 1, 512, 5, se_ratio=0.25),),
)
EFFICIENTNETV2_L_STAGES: tuple[Stage, ...] = (
    #          block  exp kernel stride out repeats
    (BlockSpec("conv", 1, 3, 1, 32, 4, skip=True),),
    (BlockSpec("er",   4, 3, 2, 64, 7),),
    (BlockSpec("er",   4, 3, 2, 96, 7),),
    (BlockSpec("ir",   4, 3, 2, 192, 10, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 1, 224, 19, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 2, 384, 25, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 1, 640, 7, se_ratio=0.25),),
)
EFFICIENTNETV2_B0_STAGES: tuple[Stage, ...] = (
    #          block  exp kernel stride out repeats
    (BlockSpec("conv", 1, 3, 1, 16, 1, skip=True),),
    (BlockSpec("er",   4, 3, 2, 32, 2),),
    (BlockSpec("er",   4, 3, 2, 48, 2),),
    (BlockSpec("ir",   4, 3, 2, 96, 3, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 1, 112, 5, se_ratio=0.25),),
    (BlockSpec("ir",   6, 3, 2, 192, 8, se_ratio=0.25),),
)
HEAD_CHS = 1280
# The official code rounds widths to multiples of 8 without EfficientNet's floor of 90% of the
# exact width (it matters for B3: 16 * 1.2 rounds to 16, not 24).
ROUND_LIMIT = 0.0


@dataclass(frozen=True)
class EfficientNetV2Config:
    """EfficientNetV2: Tan and Le, 2021, "EfficientNetV2: Smaller Models and Faster Training"."""

    stages: tuple[Stage, ...]  # the stage table, before width and depth scaling
    stem_chs: int  # the stride-2 3x3 stem conv's width, before width scaling
    width: float = 1.0  # channel multiplier (B1-B3)
    depth: float = 1.0  # repeats multiplier, rounded up per stage (B1-B3)
    padding: PaddingMode = ""  # "same": TensorFlow padding, for weights trained in TF
    bn_eps: float = 1e-5  # 1e-3 for weights trained in TF


class EfficientNetV2(nn.Module):
    """EfficientNetV2 S, M, L and B0-B3 (Tan & Le, 2021)."""

    def __init__(self, config: EfficientNetV2Config, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        norm_act = partial(BatchNormAct2d, eps=config.bn_eps)
        stem_chs = round_channels(config.stem_chs, config.width, round_limit=ROUND_LIMIT)
        head_chs = round_channels(HEAD_CHS, config.width, round_limit=ROUND_LIMIT)

        self.conv_stem = create_conv2d(in_chans, stem_chs, 3, stride=2, padding=config.padding)
        self.bn1 = norm_act(stem_chs, act_layer=nn.SiLU)
        built = build_stages(config.stages, stem_chs, width=config.width, depth=config.depth, act_layer=nn.SiLU,
                             norm_act=norm_act, se_layer=efficientnet_se, padding=config.padding,
                             drop_path_rate=drop_path_rate, round_limit=ROUND_LIMIT)
        self.blocks = nn.Sequential(*built.stages)
        self.feature_info = built.feature_info

        self.conv_head = create_conv2d(built.out_chs, head_chs, 1, padding=config.padding)
        self.bn2 = norm_act(head_chs, act_layer=nn.SiLU)
        self.num_features = head_chs
        self.global_pool = GlobalPool(global_pool)
        self.classifier = make_classifier(self.num_features, num_classes)
        init_weights_tf_style(self)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = make_classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))  # (N, stem, H/2, W/2)
        x = self.blocks(x)
        return self.bn2(self.conv_head(x))  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

_TF = {"padding": "same", "bn_eps": 1e-3}
_S = dict(stages=EFFICIENTNETV2_S_STAGES, stem_chs=24)
_M = dict(stages=EFFICIENTNETV2_M_STAGES, stem_chs=24)
_L = dict(stages=EFFICIENTNETV2_L_STAGES, stem_chs=32)
_B0 = dict(stages=EFFICIENTNETV2_B0_STAGES, stem_chs=32)

VARIANTS: dict[str, EfficientNetV2Config] = {
    "efficientnetv2_s": EfficientNetV2Config(**_S),
    "efficientnetv2_m": EfficientNetV2Config(**_M),
    "efficientnetv2_l": EfficientNetV2Config(**_L),
    "tf_efficientnetv2_s": EfficientNetV2Config(**_S, **_TF),
    "tf_efficientnetv2_m": EfficientNetV2Config(**_M, **_TF),
    "tf_efficientnetv2_l": EfficientNetV2Config(**_L, **_TF),
    # B1-B3: EfficientNet's compound multipliers (width, depth) on the B0 table
    "tf_efficientnetv2_b0": EfficientNetV2Config(**_B0, **_TF),
    "tf_efficientnetv2_b1": EfficientNetV2Config(**_B0, width=1.0, depth=1.1, **_TF),
    "tf_efficientnetv2_b2": EfficientNetV2Config(**_B0, width=1.1, depth=1.2, **_TF),
    "tf_efficientnetv2_b3": EfficientNetV2Config(**_B0, width=1.2, depth=1.4, **_TF),
}

# Default input sizes of timm's default weights (trained progressively, they are evaluated larger).
INPUT_SIZES: dict[str, int] = {
    "efficientnetv2_s": 288, "efficientnetv2_m": 320, "efficientnetv2_l": 384,
    "tf_efficientnetv2_s": 300, "tf_efficientnetv2_m": 384, "tf_efficientnetv2_l": 384,
    "tf_efficientnetv2_b0": 192, "tf_efficientnetv2_b1": 192, "tf_efficientnetv2_b2": 208, "tf_efficientnetv2_b3": 240,
}

register_family(
    VARIANTS, family="efficientnetv2", paper="EfficientNetV2: Smaller Models and Faster Training", year=2021,
    builder=EfficientNetV2, recipe_style="convnet",
    cam_layer=CamLayer("bn2"),  # conv_head -> bn2 (with its activation): the last map
    extras={name: VariantExtras(input_size=(3, size, size)) for name, size in INPUT_SIZES.items()})
