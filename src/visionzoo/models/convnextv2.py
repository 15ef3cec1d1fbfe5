"""ConvNeXt-V2.

Woo et al., 2023, "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders".
The network is ConvNeXt's (`visionzoo.models.convnext`) with one change to each block: a
global response normalization (GRN) between the MLP's two pointwise layers, and no layer scale.
The paper adds GRN because, without it, FCMAE (masked-autoencoder) pretraining leaves many
channels dead or saturated (feature collapse); with GRN in place it finds layer scale unnecessary. The atto, femto, pico and nano sizes are
the paper's; they use timm's 1x1-conv form of the MLP, as for ConvNeXt.

Module names follow timm's `convnext.py` (GRN's parameters are `weight` and `bias` where the
paper's code says `gamma` and `beta`), so its weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from visionzoo.models.convnext import CONVNEXT_CAM_LAYER, CONVNEXT_LORA_TARGETS, ConvNeXt, ConvNeXtConfig
from visionzoo.registry import register_family


class GlobalResponseNorm(nn.Module):
    """GRN (Woo et al., 2023, eq. 1-3): aggregate each channel by its L2 norm over space, normalize
    those norms by their mean over channels, and scale the input by the result.

    out = x + bias + weight * (x * ||x||_c / mean_c ||x||_c). Both parameters start at zero, so a
    fresh GRN is the identity. `channels_last` picks the layout: (N, H, W, C) or (N, C, H, W).
    """

    def __init__(self, dim: int, eps: float = 1e-6, channels_last: bool = True):
        super().__init__()
        self.eps = eps
        self.spatial_dims, self.channel_dim = ((1, 2), -1) if channels_last else ((2, 3), 1)
        self.param_shape = (1, 1, 1, -1) if channels_last else (1, -1, 1, 1)
        self.weight = nn.Parameter(torch.zeros(dim))  # the paper's gamma
        self.bias = nn.Parameter(torch.zeros(dim))  # the paper's beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_norm = x.norm(p=2, dim=self.spatial_dims, keepdim=True)  # (N, 1, 1, C) or (N, C, 1, 1)
        relative = spatial_norm / (spatial_norm.mean(dim=self.channel_dim, keepdim=True) + self.eps)
        # one fused addcmul for bias + weight * (x * relative)
        return x + torch.addcmul(self.bias.view(self.param_shape), self.weight.view(self.param_shape), x * relative)


class GlobalResponseNormMlp(nn.Module):
    """The ConvNeXt-V2 block's MLP: pointwise expand -> GELU -> GRN -> pointwise project.

    Linears on a channels-last tensor, or 1x1 convolutions on (N, C, H, W) with `use_conv=True`,
    like `visionzoo.layers.mlp.Mlp`, whose call signature and names (`fc1`, `fc2`) it shares.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0, use_conv: bool = False):
        super().__init__()
        out_features = out_features or in_features
        make_linear = partial(nn.Conv2d, kernel_size=1) if use_conv else nn.Linear
        self.fc1 = make_linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.grn = GlobalResponseNorm(hidden_features, channels_last=not use_conv)
        self.fc2 = make_linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.grn(x)))


@dataclass(frozen=True)
class ConvNeXtV2Config(ConvNeXtConfig):
    """ConvNeXt-V2: Woo, Debnath, Hu, Chen, Liu, Kweon and Xie, 2023, "ConvNeXt V2: Co-designing and
    Scaling ConvNets with Masked Autoencoders". ConvNeXt's config with V2's block defaults."""

    mlp_layer: type[nn.Module] = GlobalResponseNormMlp
    layer_scale: bool = False


# --- variants ------------------------------------------------------------------------------

_tiny_mlp = partial(ConvNeXtV2Config, conv_mlp=True)  # the small sizes use the 1x1-conv MLP, as ConvNeXt's do

VARIANTS: dict[str, ConvNeXtV2Config] = {
    "convnextv2_atto": _tiny_mlp((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnextv2_femto": _tiny_mlp((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnextv2_pico": _tiny_mlp((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnextv2_nano": _tiny_mlp((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnextv2_tiny": ConvNeXtV2Config((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnextv2_base": ConvNeXtV2Config((3, 3, 27, 3), (128, 256, 512, 1024)),
}

# ConvNeXt's facts: the CAM is read at the last stage, LoRA adapts each block's pointwise MLP.
register_family(VARIANTS, family="convnextv2",
                paper="ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders", year=2023,
                builder=ConvNeXt, recipe_style="convnext", cam_layer=CONVNEXT_CAM_LAYER,
                lora_targets=CONVNEXT_LORA_TARGETS)
