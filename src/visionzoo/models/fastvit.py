"""FastViT (Vasu et al., 2023, "FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization").

A four-stage MetaFormer whose token mixer is RepMixer: x + layer_scale * (dwconv(x) - BN(x)), where
the depthwise 3x3 convolution trains as MobileOne's branches (a 3x3 and a 1x1 conv-BN and a BN'd
identity). In eval mode the whole mixer, skip connection included, is linear in x, so it folds into
one depthwise convolution: at inference a RepMixer block has no residual add before its MLP, which
is the memory traffic FastViT saves. The channel mixer is a ConvFFN (7x7 depthwise conv-BN, then a
1x1 MLP); the SA variants replace the last stage's RepMixer by self-attention (after a batch norm)
and add a conditional positional encoding (RepCPE: a 7x7 depthwise convolution plus the identity).
The stem is three MobileOne blocks (stride 4 overall), stages are joined by a patch embedding (a
strided 7x7 grouped convolution with a parallel 3x3, RepLKNet-style, then a 1x1 MobileOne block),
and a MobileOne block with squeeze-excitation doubles the width before the classifier.

`FastVit.reparameterize()` folds every one of those branches, and every conv-BN pair, into single
convolutions for deployment. Module names follow timm's `fastvit.py`, so its weights load with
strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.attention import Attention
from visionzoo.layers.classifier import ClassifierHead
from visionzoo.layers.conv_bn_act import ConvBnAct
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.models.mobileone import (
    MobileOneBranches,
    SqueezeExcite,
    fold_batch_norm,
    fused_conv,
    identity_kernel,
)
from visionzoo.registry import CamLayer, LoraTargets, VariantExtras, register_family

# --- re-parameterisable blocks -----------------------------------------------------------------


class MobileOneBlock(MobileOneBranches):
    """MobileOne's block as FastViT uses it: branch sum, optional squeeze-excitation (`se`), GELU.

    Unlike `visionzoo.models.mobileone.MobileOneBlock` the SE is named `se` and keeps 1/16 of the
    channels unrounded, and the activation is GELU (or none, inside RepMixer): the published weights' forms.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 num_conv_branches: int = 1, use_scale_branch: bool = True, use_se: bool = False,
                 use_act: bool = True):
        super().__init__(in_chs, out_chs, kernel_size, stride, groups, num_conv_branches, use_scale_branch)
        self.se = SqueezeExcite(out_chs, divisor=1) if use_se else nn.Identity()
        self.act = nn.GELU() if use_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.branch_sum(x)))


class ReparamLargeKernelConv(nn.Module):
    """A kxk conv-BN with a parallel 3x3 conv-BN (RepLKNet, Ding et al., 2022), folded into one kxk conv."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, groups: int, small_kernel: int = 3):
        super().__init__()
        self.stride, self.groups, self.kernel_size = stride, groups, kernel_size
        self.reparam_conv: nn.Conv2d | None = None  # the fused form, set by reparameterize()
        self.large_conv = ConvBnAct(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups, act_layer=None)
        self.small_conv = ConvBnAct(in_chs, out_chs, small_kernel, stride, small_kernel // 2, groups, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.large_conv(x) + self.small_conv(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        weight, bias = fold_batch_norm(self.large_conv.conv.weight, self.large_conv.bn)
        small_weight, small_bias = fold_batch_norm(self.small_conv.conv.weight, self.small_conv.bn)
        pad = (self.kernel_size - small_weight.shape[-1]) // 2  # the small kernel at the large one's centre
        self.reparam_conv = fused_conv(weight + F.pad(small_weight, [pad] * 4), bias + small_bias,
                                       stride=self.stride, groups=self.groups)
        self.large_conv = self.small_conv = None


class LayerScale2d(nn.Module):
    """A learned per-channel factor on a residual branch, for (N, C, H, W) maps: `gamma` is (C, 1, 1)."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RepMixer(nn.Module):
    """The token mixer: x + layer_scale * (mixer(x) - norm(x)), mixer a MobileOne depthwise kxk block and
    norm a BN (MobileOne's identity branch alone); linear in x, so it folds into one depthwise conv."""

    def __init__(self, dim: int, kernel_size: int = 3, layer_scale_init: float = 1e-5):
        super().__init__()
        self.reparam_conv: nn.Conv2d | None = None  # the fused form, set by reparameterize()
        self.norm = MobileOneBlock(dim, dim, kernel_size, groups=dim, num_conv_branches=0, use_scale_branch=False,
                                   use_act=False)
        self.mixer = MobileOneBlock(dim, dim, kernel_size, groups=dim, use_act=False)
        self.layer_scale = LayerScale2d(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        mixer_weight, mixer_bias = self.mixer.fused_weight_bias()
        norm_weight, norm_bias = self.norm.fused_weight_bias()
        gamma = self.layer_scale.gamma  # (C, 1, 1)
        dim, kernel_size = mixer_weight.shape[0], mixer_weight.shape[-1]
        weight = identity_kernel(dim, dim, kernel_size, gamma) + gamma[:, None] * (mixer_weight - norm_weight)
        self.reparam_conv = fused_conv(weight, gamma.flatten() * (mixer_bias - norm_bias), groups=dim)
        self.norm = self.mixer = self.layer_scale = None


class RepConditionalPosEnc(nn.Module):
    """Conditional positional encoding (Chu et al., 2021) as x + dwconv(x), foldable into one depthwise conv."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        self.reparam_conv: nn.Conv2d | None = None  # the fused form, set by reparameterize()
        self.pos_enc = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.pos_enc(x) + x

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        weight = self.pos_enc.weight
        identity = identity_kernel(weight.shape[0], self.pos_enc.groups, weight.shape[-1], weight)
        self.reparam_conv = fused_conv(weight + identity, self.pos_enc.bias, groups=self.pos_enc.groups)
        self.pos_enc = None


# --- MetaFormer blocks and stages --------------------------------------------------------------


class ConvMlp(nn.Module):
    """ConvFFN: a 7x7 depthwise conv-BN for local mixing, then 1x1 conv, GELU, 1x1 conv."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.conv = ConvBnAct(dim, dim, 7, 1, 3, groups=dim, act_layer=None)
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)
        for conv in (self.fc1, self.fc2):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.conv(x)))  # (N, hidden_dim, H, W)
        return self.drop(self.fc2(self.drop(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """The depthwise conv's BN folds into it (no branches here, but one layer less to run)."""
        if isinstance(self.conv, ConvBnAct):
            weight, bias = fold_batch_norm(self.conv.conv.weight, self.conv.bn)
            self.conv = fused_conv(weight, bias, groups=self.conv.conv.groups)


class RepMixerBlock(nn.Module):
    """A MetaFormer block with RepMixer as token mixer (its residual is inside the mixer), then the ConvFFN."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float, drop: float, drop_path: float,
                 layer_scale_init: float):
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale = LayerScale2d(dim, layer_scale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.drop_path(self.layer_scale(self.mlp(x)))


class AttentionBlock(nn.Module):
    """A MetaFormer block with multi-head self-attention (heads of 32 channels) after a batch norm."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float, drop_path: float, layer_scale_init: float,
                 head_dim: int = 32):
        super().__init__()
        if dim % head_dim:
            raise SettingError(f"attention width {dim} is not a multiple of the head width {head_dim}")
        self.norm = nn.BatchNorm2d(dim)
        self.token_mixer = Attention(dim, num_heads=dim // head_dim)
        self.layer_scale_1 = LayerScale2d(dim, layer_scale_init)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale_2 = LayerScale2d(dim, layer_scale_init)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)
        mixed = self.token_mixer(tokens).transpose(1, 2).reshape(batch, channels, height, width)
        x = x + self.drop_path1(self.layer_scale_1(mixed))
        return x + self.drop_path2(self.layer_scale_2(self.mlp(x)))


class PatchEmbed(nn.Module):
    """Downsampling between stages: a stride-2 7x7 grouped conv (one input channel per group, with a
    parallel 3x3) to the new width, then a 1x1 MobileOne block: (N, C, H, W) -> (N, C', H/2, W/2)."""

    def __init__(self, in_chs: int, out_chs: int, patch_size: int = 7, stride: int = 2):
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(in_chs, out_chs, patch_size, stride, groups=in_chs),
            MobileOneBlock(out_chs, out_chs, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class FastVitStage(nn.Module):
    """A patch embedding where the width or resolution changes, RepCPE before attention, then the blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, token_mixer: Literal["repmixer", "attention"],
                 downsample: bool, pos_embed: bool, mlp_ratio: float, kernel_size: int, drop: float,
                 drop_path: list[float], layer_scale_init: float):
        super().__init__()
        if not downsample and in_dim != dim:
            raise SettingError(f"a stage without downsampling keeps its width; got {in_dim} -> {dim}")
        self.downsample = PatchEmbed(in_dim, dim) if downsample else nn.Identity()
        self.pos_emb = RepConditionalPosEnc(dim) if pos_embed else nn.Identity()
        if token_mixer == "repmixer":
            blocks = [RepMixerBlock(dim, kernel_size, mlp_ratio, drop, rate, layer_scale_init) for rate in drop_path]
        elif token_mixer == "attention":
            blocks = [AttentionBlock(dim, mlp_ratio, drop, rate, layer_scale_init) for rate in drop_path]
        else:
            raise SettingError(f"unknown token mixer {token_mixer!r}; choose 'repmixer' or 'attention'")
        if len(blocks) != depth:
            raise SettingError(f"{len(drop_path)} drop-path rates for {depth} blocks")
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pos_emb(self.downsample(x)))


# --- the network -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastVitConfig:
    """FastViT: Vasu, Gabriel, Zhu, Tuzel and Ranjan, 2023, "FastViT: A Fast Hybrid Vision Transformer using
    Structural Reparameterization"."""

    depth: tuple[int, int, int, int]  # blocks per stage
    embed_dim: tuple[int, int, int, int]  # width per stage
    mlp_ratio: float  # ConvFFN hidden width / width (3 for T, 4 for S and SA)
    token_mixers: tuple[str, str, str, str] = ("repmixer",) * 4  # "attention" in the SA variants' last stage
    pos_embed: tuple[bool, bool, bool, bool] = (False,) * 4  # RepCPE before the stage's blocks (SA: last stage)
    repmixer_kernel_size: int = 3
    layer_scale_init: float = 1e-5
    cls_ratio: float = 2.0  # final_conv's width / the last stage's


class FastVit(nn.Module):
    """FastViT (Vasu et al., 2023): a hybrid of re-parameterisable convolutional stages and attention.

    `forward_features` returns final_conv's map (N, num_features, H/32, W/32), num_features twice the
    last stage's width. After `reparameterize()` every RepMixer, MobileOne block, patch embedding and
    RepCPE is one convolution and every conv-BN a biased conv (the batch norm before attention stays);
    the network computes the same function in eval mode and is meant for inference only.
    """

    def __init__(self, config: FastVitConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        width = config.embed_dim[0]

        self.stem = nn.Sequential(  # (N, 3, H, W) -> (N, width, H/4, W/4)
            MobileOneBlock(in_chans, width, 3, stride=2),
            MobileOneBlock(width, width, 3, stride=2, groups=width),
            MobileOneBlock(width, width, 1),
        )
        rates = stochastic_depth_rates(drop_path_rate, config.depth)
        stages, self.feature_info = [], []
        in_dim, reduction = width, 4
        for index, dim in enumerate(config.embed_dim):
            downsample = index > 0 or in_dim != dim
            stages.append(FastVitStage(in_dim, dim, config.depth[index], config.token_mixers[index], downsample,
                                       config.pos_embed[index], config.mlp_ratio, config.repmixer_kernel_size,
                                       proj_drop_rate, rates[index], config.layer_scale_init))
            reduction *= 2 if downsample else 1
            self.feature_info.append(FeatureInfo(f"stages.{index}", dim, reduction))
            in_dim = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = int(in_dim * config.cls_ratio)
        self.final_conv = MobileOneBlock(in_dim, self.num_features, 3, groups=in_dim, use_se=True)  # 2 outputs per input channel
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    @torch.no_grad()
    def reparameterize(self) -> FastVit:
        """Fold every training-time branch, and each conv's batch norm, into one convolution, in place.

        Outputs equal the unfused model's in eval mode (to float rounding); the state dict changes
        (`reparam_conv` in place of the branches), so load published weights before calling this.
        """
        foldable = (MobileOneBranches, ReparamLargeKernelConv, RepMixer, RepConditionalPosEnc, ConvMlp)
        for module in [m for m in self.modules() if isinstance(m, foldable)]:  # listed first: fusing edits the tree
            module.reparameterize()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (N, embed_dim[-1], H/32, W/32)
        return self.final_conv(x)  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ----------------------------------------------------------------------------------

_SA = dict(token_mixers=("repmixer", "repmixer", "repmixer", "attention"), pos_embed=(False, False, False, True))

VARIANTS: dict[str, FastVitConfig] = {
    "fastvit_t8": FastVitConfig((2, 2, 4, 2), (48, 96, 192, 384), mlp_ratio=3.0),
    "fastvit_t12": FastVitConfig((2, 2, 6, 2), (64, 128, 256, 512), mlp_ratio=3.0),
    "fastvit_s12": FastVitConfig((2, 2, 6, 2), (64, 128, 256, 512), mlp_ratio=4.0),
    "fastvit_sa12": FastVitConfig((2, 2, 6, 2), (64, 128, 256, 512), mlp_ratio=4.0, **_SA),
}

# Trained with DeiT's AdamW recipe (weight decay 0.05, 300 epochs), at 256 px (timm's default configs).
# The CAM reads final_conv: the last map, after SE, before pooling. LoRA: family facts hold for every
# variant, and only SA12's last stage has attention (two blocks), so the targets are the attention's
# projections where there are any and every block's ConvMlp (its 1x1 convolutions), as for ConvNeXt.
FASTVIT_LORA_TARGETS = LoraTargets(r"stages\.\d+\.blocks\.\d+\.(token_mixer\.(qkv|proj)|mlp\.(fc1|fc2))")

register_family(VARIANTS, family="fastvit",
                paper="FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization", year=2023,
                builder=FastVit, recipe_style="vit", cam_layer=CamLayer("final_conv"), edge=True,
                lora_targets=FASTVIT_LORA_TARGETS,
                extras={name: VariantExtras(input_size=(3, 256, 256)) for name in VARIANTS})
