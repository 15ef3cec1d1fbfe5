"""EfficientNet and EfficientNet-Lite.

Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks".
EfficientNet-Lite (2020) is the same network made friendly to integer accelerators: no
squeeze-excitation, ReLU6 instead of swish, and a stem and head that do not grow with width.

B0 is the stage table below (the paper's Table 1); B1-B7 scale its widths and repeats by
the compound-scaling multipliers (and train at larger resolutions). The `tf_` variants pad
as TensorFlow's "SAME" and use BN eps 1e-3, which the weights ported from TensorFlow need.

EfficientNetV2 (`visionzoo.models.efficientnetv2`) builds this network from its own stage tables,
through the config's `stages`, `stem_chs` and `round_limit`.

Module names follow timm's `efficientnet.py`, so its weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from visionzoo.layers.norm_act import BatchNormAct2d
from visionzoo.layers.padding import PaddingMode, create_conv2d
from visionzoo.layers.pool import GlobalPool, make_classifier
from visionzoo.layers.squeeze_excite import SqueezeExcite
from visionzoo.layers.stage_table import BlockSpec, Stage, build_stages, init_weights_tf_style, round_channels
from visionzoo.registry import CamLayer, VariantExtras, register_family

# Table 1 of the paper: EfficientNet-B0. "ds" is MBConv1 (no expanding 1x1 conv), "ir" MBConv6.
# Every block has squeeze-excitation, a quarter of the block's input width.
EFFICIENTNET_B0_STAGES: tuple[Stage, ...] = (
    #           block  exp  kernel stride out  repeats       resolution in
    (BlockSpec("ds", 1, 3, 1, 16, 1, se_ratio=0.25),),   # 112 x 112
    (BlockSpec("ir", 6, 3, 2, 24, 2, se_ratio=0.25),),   # 112 x 112
    (BlockSpec("ir", 6, 5, 2, 40, 2, se_ratio=0.25),),   # 56 x 56
    (BlockSpec("ir", 6, 3, 2, 80, 3, se_ratio=0.25),),   # 28 x 28
    (BlockSpec("ir", 6, 5, 1, 112, 3, se_ratio=0.25),),  # 14 x 14
    (BlockSpec("ir", 6, 5, 2, 192, 4, se_ratio=0.25),),  # 14 x 14
    (BlockSpec("ir", 6, 3, 1, 320, 1, se_ratio=0.25),),  # 7 x 7
)
STEM_CHS = 32
HEAD_CHS = 1280


@dataclass(frozen=True)
class EfficientNetConfig:
    """EfficientNet and EfficientNet-Lite: Tan and Le, 2019, "EfficientNet: Rethinking Model Scaling for
    Convolutional Neural Networks"."""

    width: float = 1.0  # channel multiplier (rounded to multiples of 8)
    depth: float = 1.0  # repeats multiplier (rounded up per stage)
    stages: tuple[Stage, ...] = EFFICIENTNET_B0_STAGES  # the stage table, before width and depth scaling
    stem_chs: int = STEM_CHS  # the stride-2 3x3 stem conv's width, before width scaling
    head_chs: int = HEAD_CHS  # the 1x1 conv before pooling, before width scaling
    act_layer: type[nn.Module] = nn.SiLU  # swish
    squeeze_excite: bool = True  # in the blocks whose row has an se_ratio
    fixed_stem_head: bool = False  # Lite: stem and head keep their widths (32, 1280) at every width
    fixed_first_last_depth: bool = False  # Lite: the first and last stages keep one block at every depth
    round_limit: float = 0.9  # width rounding never falls below this share of the exact width (see stage_table)
    padding: PaddingMode = ""  # "same": TensorFlow padding, for weights trained in TF
    bn_eps: float = 1e-5  # 1e-3 for weights trained in TF


def efficientnet_se(channels: int, spec: BlockSpec, act_layer: type[nn.Module]) -> SqueezeExcite:
    """EfficientNet's SE: width `se_ratio` of the block's input (channels / expansion), the block's activation."""
    return SqueezeExcite(channels, round(channels * (spec.se_ratio / spec.expansion)), act_layer=act_layer)


class EfficientNet(nn.Module):
    """EfficientNet B0-B7 and EfficientNet-Lite (Tan & Le, 2019); EfficientNetV2 through its config."""

    def __init__(self, config: EfficientNetConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        norm_act = partial(BatchNormAct2d, eps=config.bn_eps)
        stem_head_width = 1.0 if config.fixed_stem_head else config.width
        stem_chs = round_channels(config.stem_chs, stem_head_width, round_limit=config.round_limit)
        head_chs = round_channels(config.head_chs, stem_head_width, round_limit=config.round_limit)

        self.conv_stem = create_conv2d(in_chans, stem_chs, 3, stride=2, padding=config.padding)
        self.bn1 = norm_act(stem_chs, act_layer=config.act_layer)
        last_stage = len(config.stages) - 1
        built = build_stages(
            config.stages, stem_chs, width=config.width, depth=config.depth,
            act_layer=config.act_layer, norm_act=norm_act,
            se_layer=efficientnet_se if config.squeeze_excite else None, padding=config.padding,
            drop_path_rate=drop_path_rate, fixed_depth_stages=(0, last_stage) if config.fixed_first_last_depth else (),
            round_limit=config.round_limit,
        )
        self.blocks = nn.Sequential(*built.stages)
        self.feature_info = built.feature_info

        self.conv_head = create_conv2d(built.out_chs, head_chs, 1, padding=config.padding)
        self.bn2 = norm_act(head_chs, act_layer=config.act_layer)
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
_LITE = {"act_layer": nn.ReLU6, "squeeze_excite": False, "fixed_stem_head": True, "fixed_first_last_depth": True}

# name: (width, depth, paper resolution, dropout); the last two are the paper's training recipe, kept here
# as its table gives them: models build with drop_rate=0, as timm's do
SCALES: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}

# Default input sizes of timm's default weights for each name (not always the paper's resolution).
INPUT_SIZES: dict[str, int] = {
    "efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 256, "efficientnet_b3": 288,
    "efficientnet_b4": 320, "efficientnet_b5": 448, "efficientnet_b6": 528, "efficientnet_b7": 600,
    "tf_efficientnet_b0": 224, "tf_efficientnet_b1": 240, "tf_efficientnet_b2": 260, "tf_efficientnet_b3": 300,
    "tf_efficientnet_b4": 380, "tf_efficientnet_b5": 456, "tf_efficientnet_b6": 528, "tf_efficientnet_b7": 600,
    "efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260, "efficientnet_lite3": 300,
    "efficientnet_lite4": 380,
    "tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260,
    "tf_efficientnet_lite3": 300, "tf_efficientnet_lite4": 380,
}

# each scale in PyTorch padding (timm's own weights) and TensorFlow's (ported weights):
# efficientnet_b0, tf_efficientnet_b0, efficientnet_b1, ...
VARIANTS: dict[str, EfficientNetConfig] = {
    f"{prefix}_{scale}": EfficientNetConfig(*SCALES[scale][:2], **(_LITE if scale.startswith("lite") else {}),
                                            **padding)
    for scale in SCALES for prefix, padding in (("efficientnet", {}), ("tf_efficientnet", _TF))
}

# the paper's networks, released for mobile in 2020 (ReLU6, no squeeze-excitation: they quantise well)
_LITE_CARD = dict(family="efficientnet_lite", year=2020, edge=True)

register_family(
    VARIANTS, family="efficientnet", paper="EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    year=2019, builder=EfficientNet, recipe_style="convnet",
    cam_layer=CamLayer("bn2"),  # conv_head -> bn2 (with its activation): the last map
    extras={name: VariantExtras(input_size=(3, size, size), **(_LITE_CARD if "lite" in name else {}))
            for name, size in INPUT_SIZES.items()})
