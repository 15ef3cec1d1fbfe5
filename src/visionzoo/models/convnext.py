"""ConvNeXt.

Liu et al., 2022, "A ConvNet for the 2020s". The atto, femto, pico and nano sizes are
timm's additions to the paper's tiny..xlarge.

ConvNeXt-V2 (`visionzoo.models.convnextv2`) builds this network with another MLP in each block
and no layer scale, through the config's `mlp_layer` and `layer_scale`.

Module names follow timm's `convnext.py` so that published weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from visionzoo.features import FeatureInfo
from visionzoo.layers.checkpoint import run_blocks
from visionzoo.layers.classifier import NormMlpClassifierHead
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.norm import LayerNorm2d
from visionzoo.registry import CamLayer, LoraTargets, register_family


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> 1x1 expand by 4 -> GELU -> 1x1 project, scaled, plus identity.

    The two 1x1 convolutions are written either as linears on a channels-last tensor
    (`conv_mlp=False`, the paper's form, faster for the larger sizes) or as 1x1 convolutions
    on the (N, C, H, W) map (`conv_mlp=True`, which timm uses for atto..nano). Both compute
    the same function; the parameter shapes differ, so each variant keeps timm's choice.
    """

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, conv_mlp: bool = False,
                 ls_init_value: float | None = 1e-6, drop_path: float = 0.0, mlp_layer: type[nn.Module] = Mlp):
        super().__init__()
        self.use_conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim) if conv_mlp else nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp_layer(dim, int(mlp_ratio * dim), use_conv=conv_mlp)
        # Layer scale is a bare parameter named `gamma` (weight compatibility).
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value)) if ls_init_value is not None else None
        self.shortcut = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
            x = self.mlp(self.norm(x))
            x = x.permute(0, 3, 1, 2)  # back to (N, C, H, W)
        if self.gamma is not None:
            x = x * self.gamma.reshape(1, -1, 1, 1)
        return self.drop_path(x) + self.shortcut(shortcut)


class ConvNeXtStage(nn.Module):
    """LayerNorm + 2x2 stride-2 conv downsampling (all stages but the first), then blocks."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, stride: int, conv_mlp: bool,
                 ls_init_value: float | None, drop_path_rates: list[float], mlp_layer: type[nn.Module] = Mlp):
        super().__init__()
        self.grad_checkpointing = False
        if in_chs != out_chs or stride > 1:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs), nn.Conv2d(in_chs, out_chs, stride, stride=stride))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_chs, conv_mlp=conv_mlp, ls_init_value=ls_init_value, drop_path=rate, mlp_layer=mlp_layer)
            for rate in drop_path_rates
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return run_blocks(self.blocks, x, checkpointed=self.grad_checkpointing)


@dataclass(frozen=True)
class ConvNeXtConfig:
    """ConvNeXt: Liu, Mao, Wu, Feichtenhofer, Darrell and Xie, 2022, "A ConvNet for the 2020s"."""

    depths: tuple[int, int, int, int]  # blocks per stage
    dims: tuple[int, int, int, int]  # channels per stage
    conv_mlp: bool = False  # 1x1 convs instead of channels-last linears (see ConvNeXtBlock)
    patch_size: int = 4  # the stem is a non-overlapping patch_size x patch_size conv
    mlp_layer: type[nn.Module] = Mlp  # each block's pointwise MLP: mlp_layer(dim, hidden, use_conv=conv_mlp)
    layer_scale: bool = True  # ConvNeXt-V2 has none: its MLP's global response norm takes that role


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al., 2022, "A ConvNet for the 2020s")."""

    def __init__(self, config: ConvNeXtConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, ls_init_value: float | None = 1e-6,
                 head_init_scale: float = 1.0):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        dims = config.dims

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], config.patch_size, stride=config.patch_size),
            LayerNorm2d(dims[0]),
        )
        rates = stochastic_depth_rates(drop_path_rate, config.depths)
        stages, self.feature_info = [], []
        in_chs, reduction = dims[0], config.patch_size
        for index, (depth, out_chs) in enumerate(zip(config.depths, dims)):
            stride = 1 if index == 0 else 2
            reduction *= stride
            stages.append(ConvNeXtStage(in_chs, out_chs, depth, stride, config.conv_mlp,
                                        ls_init_value if config.layer_scale else None, rates[index],
                                        mlp_layer=config.mlp_layer))
            self.feature_info.append(FeatureInfo(f"stages.{index}", out_chs, reduction))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)

        self.num_features = in_chs
        # Pool, then norm, then classify: the original ConvNeXt head ordering.
        self.head = NormMlpClassifierHead(self.num_features, num_classes, drop_rate=drop_rate,
                                          norm_layer=LayerNorm2d)
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                if name.startswith("head."):
                    with torch.no_grad():
                        module.weight.mul_(head_init_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

_tiny_mlp = partial(ConvNeXtConfig, conv_mlp=True)  # timm's small sizes use the 1x1-conv MLP

VARIANTS: dict[str, ConvNeXtConfig] = {
    "convnext_atto": _tiny_mlp((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnext_femto": _tiny_mlp((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnext_pico": _tiny_mlp((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnext_nano": _tiny_mlp((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnext_tiny": ConvNeXtConfig((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ConvNeXtConfig((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ConvNeXtConfig((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ConvNeXtConfig((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ConvNeXtConfig((3, 3, 27, 3), (256, 512, 1024, 2048)),
}

CONVNEXT_CAM_LAYER = CamLayer("stages.-1")
# No attention to adapt: LoRA takes the pointwise (1x1) linears of each block's MLP, the bulk of the weights.
CONVNEXT_LORA_TARGETS = LoraTargets(r"stages\.\d+\.blocks\.\d+\.mlp\.(fc1|fc2)")

register_family(VARIANTS, family="convnext", paper="A ConvNet for the 2020s", year=2022, builder=ConvNeXt,
                recipe_style="convnext", cam_layer=CONVNEXT_CAM_LAYER, lora_targets=CONVNEXT_LORA_TARGETS)
