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
TensorFlow need; the others are PyTorch-padded (timm's own training).

The network is EfficientNet's (`visionzoo.models.efficientnet`: stem, the stage table's blocks, a 1x1
head conv, pooling), built from the tables below; the blocks, fused MBConv included, are in
`visionzoo.layers.inverted_residual`. Module names follow timm's `efficientnet.py`, so its weights load
with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionzoo.layers.stage_table import BlockSpec, Stage
from visionzoo.models.efficientnet import EfficientNet, EfficientNetConfig
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


@dataclass(frozen=True)
class EfficientNetV2Config(EfficientNetConfig):
    """EfficientNetV2: Tan and Le, 2021, "EfficientNetV2: Smaller Models and Faster Training".
    EfficientNet's config with V2's defaults; `stages` and `stem_chs` are given per variant."""

    # The official code rounds widths to multiples of 8 without EfficientNet's floor of 90% of the
    # exact width (it matters for B3: 16 * 1.2 rounds to 16, not 24).
    round_limit: float = 0.0


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
    builder=EfficientNet, recipe_style="convnet",
    cam_layer=CamLayer("bn2"),  # conv_head -> bn2 (with its activation): the last map
    extras={name: VariantExtras(input_size=(3, size, size)) for name, size in INPUT_SIZES.items()})
