"""RepViT (Wang et al., 2024, "RepViT: Revisiting Mobile CNN From ViT Perspective").

A MobileNetV3-style network redesigned with the macro layout of the mobile ViTs: every block
separates a token mixer (a re-parameterisable 3x3 depthwise convolution, with squeeze-excitation
in every other block) from a channel mixer (a 1x1 convolution MLP of ratio 2, GELU), each its
own residual; stages are joined by a deeper downsampling layer (a block, a strided depthwise
convolution, a 1x1 convolution and an MLP); the stem is two stride-2 3x3 convolutions; the
classifier is batch norm and linear, twice for the distilled weights (averaged at inference).

The token mixer trains as three branches, a BN'd 3x3 depthwise convolution, a 1x1 depthwise
convolution and the identity, summed and normalised (RepVGG's structural re-parameterisation);
`RepVit.reparameterize()` folds all three and every batch norm into single convolutions for
deployment. Module names follow timm's `repvit.py`, so its weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.registry import CamLayer, register_family


def _bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = scale * x + shift, per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _conv_with(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased copy of `conv`'s geometry holding the given weight and bias."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      device=weight.device, dtype=weight.dtype)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused


class ConvNorm(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d; named `c` and `bn` for weight compatibility with timm.

    `bn_weight_init=0` starts a residual branch at zero, so the block starts as the identity.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0):
        super().__init__()
        self.c = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        scale, shift = _bn_scale_shift(self.bn)
        return _conv_with(self.c, self.c.weight * scale[:, None, None, None], shift)


class NormLinear(nn.Sequential):
    """BatchNorm1d -> Linear, the classifier; named `bn` and `l` for weight compatibility with timm."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.l = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.l.weight, std=0.02)
        nn.init.zeros_(self.l.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        scale, shift = _bn_scale_shift(self.bn)
        fused = nn.Linear(self.l.in_features, self.l.out_features, device=scale.device, dtype=scale.dtype)
        fused.weight.copy_(self.l.weight * scale[None, :])  # W (s x + t) + b = (W s) x + (W t + b)
        fused.bias.copy_(self.l.weight @ shift + self.l.bias)
        return fused


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018) with a quarter of the channels, rounded to 8.

    Not `visionzoo.layers.squeeze_excite`: this family's weights name the convolutions
    `fc1` / `fc2` (timm's SEModule), not `conv_reduce` / `conv_expand`.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, divisor: int = 8):
        super().__init__()
        rd_channels = max(divisor, int(channels * rd_ratio + divisor / 2) // divisor * divisor)  # nearest multiple
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))  # (N, C, 1, 1)
        return x * scale.sigmoid()


# --- blocks --------------------------------------------------------------------------------


class RepVggDw(nn.Module):
    """The token mixer: BN(dw kxk conv-BN (x) + dw 1x1 conv (x) + x), foldable into one dw kxk conv."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.conv = ConvNorm(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) + self.conv1(x) + x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """The three branches as one kernel: the 1x1 and the identity sit at the kxk kernel's centre."""
        conv = self.conv.fuse()
        pad = conv.kernel_size[0] // 2
        weight = conv.weight + F.pad(self.conv1.weight, [pad] * 4)  # (C, 1, k, k)
        weight[:, :, pad, pad] += 1.0  # identity: a depthwise kernel that is 1 at the centre
        bias = conv.bias + self.conv1.bias
        scale, shift = _bn_scale_shift(self.bn)
        return _conv_with(conv, weight * scale[:, None, None, None], bias * scale + shift)


class RepVitMlp(nn.Module):
    """The channel mixer: 1x1 conv-BN up, GELU, 1x1 conv-BN down (its BN starts at zero)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.conv1 = ConvNorm(dim, hidden_dim)
        self.act = nn.GELU()
        self.conv2 = ConvNorm(hidden_dim, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class RepViTBlock(nn.Module):
    """Token mixer (with its own identity branch inside), optional SE, then the channel mixer as a residual."""

    def __init__(self, dim: int, mlp_ratio: float, kernel_size: int, use_se: bool):
        super().__init__()
        self.token_mixer = RepVggDw(dim, kernel_size)
        self.se = SqueezeExcite(dim) if use_se else nn.Identity()
        self.channel_mixer = RepVitMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class RepVitStem(nn.Module):
    """Two stride-2 3x3 conv-BN with a GELU between: (N, 3, H, W) -> (N, dim, H/4, W/4)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs // 2, 3, 2, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvNorm(out_chs // 2, out_chs, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act1(self.conv1(x)))


class RepVitDownsample(nn.Module):
    """Between stages: a block, a stride-2 depthwise conv, a 1x1 conv to the new width, and an MLP residual."""

    def __init__(self, in_dim: int, out_dim: int, mlp_ratio: float, kernel_size: int):
        super().__init__()
        self.pre_block = RepViTBlock(in_dim, mlp_ratio, kernel_size, use_se=False)
        self.spatial_downsample = ConvNorm(in_dim, in_dim, kernel_size, 2, kernel_size // 2, groups=in_dim)
        self.channel_downsample = ConvNorm(in_dim, out_dim, 1)
        self.ffn = RepVitMlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_downsample(self.spatial_downsample(self.pre_block(x)))  # (N, out_dim, H/2, W/2)
        return x + self.ffn(x)


class RepVitStage(nn.Module):
    """An optional downsampling layer, then `depth` blocks; SE in the first block and every other one after."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, mlp_ratio: float, kernel_size: int, downsample: bool):
        super().__init__()
        if not downsample and in_dim != out_dim:
            raise SettingError(f"a stage without downsampling keeps its width; got {in_dim} -> {out_dim}")
        self.downsample = RepVitDownsample(in_dim, out_dim, mlp_ratio, kernel_size) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[RepViTBlock(out_dim, mlp_ratio, kernel_size, use_se=index % 2 == 0)
                                      for index in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class RepVitClassifier(nn.Module):
    """BN-linear head; with distillation a second (`head_dist`), trained against a teacher, and the two averaged."""

    def __init__(self, dim: int, num_classes: int, distillation: bool):
        super().__init__()
        self.num_classes = num_classes
        self.distillation = distillation
        self.head = NormLinear(dim, num_classes) if num_classes > 0 else nn.Identity()
        if distillation:
            self.head_dist = NormLinear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.distillation:
            return (self.head(x) + self.head_dist(x)) / 2
        return self.head(x)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        if self.num_classes == 0:
            return nn.Identity()
        head = self.head.fuse()
        if self.distillation:  # the mean of two linear maps is one linear map
            head_dist = self.head_dist.fuse()
            head.weight.copy_((head.weight + head_dist.weight) / 2)
            head.bias.copy_((head.bias + head_dist.bias) / 2)
        return head


# --- the network ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RepVitConfig:
    """RepViT: Wang, Chen, Lin, Han and Ding, 2024, "RepViT: Revisiting Mobile CNN From ViT Perspective"."""

    embed_dim: tuple[int, int, int, int]  # width of each stage
    depth: tuple[int, int, int, int]  # blocks per stage, after its downsampling layer
    mlp_ratio: float = 2.0  # channel mixer's hidden width / width
    kernel_size: int = 3  # of the depthwise convolutions
    distillation: bool = True  # two classifier heads, as the published (DeiT-distilled) weights have


class RepVit(nn.Module):
    """RepViT (Wang et al., 2024): a mobile CNN with the block and stage design of mobile ViTs.

    `forward_features` returns the last stage's map (N, embed_dim[-1], H/32, W/32). After
    `reparameterize()` the network has no batch norm and no parallel branch left; it computes the
    same function in eval mode and is meant for inference only.
    """

    def __init__(self, config: RepVitConfig, *, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate

        self.stem = RepVitStem(in_chans, config.embed_dim[0])
        stages, self.feature_info = [], []
        in_dim, reduction = config.embed_dim[0], 4
        for index, (dim, depth) in enumerate(zip(config.embed_dim, config.depth)):
            downsample = index > 0
            stages.append(RepVitStage(in_dim, dim, depth, config.mlp_ratio, config.kernel_size, downsample))
            reduction *= 2 if downsample else 1
            self.feature_info.append(FeatureInfo(f"stages.{index}", dim, reduction))
            in_dim = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = in_dim
        self.head = RepVitClassifier(self.num_features, num_classes, config.distillation)

    def reset_classifier(self, num_classes: int) -> None:
        """A new single BN-linear head: the distillation head is of use only against a teacher."""
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = RepVitClassifier(self.num_features, num_classes, distillation=False)

    @torch.no_grad()
    def reparameterize(self) -> RepVit:
        """Fold every training-time branch and batch norm into the convolution (or linear) it follows, in place.

        Each `RepVggDw` becomes one depthwise conv, each `ConvNorm` one biased conv and the classifier
        one linear. Outputs equal the unfused model's in eval mode (to float rounding); the state
        dict changes, so load published weights before calling this, not after.
        """
        def fuse_children(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, (RepVggDw, ConvNorm, RepVitClassifier)):
                    setattr(module, name, child.fuse())
                else:
                    fuse_children(child)

        fuse_children(self)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (N, embed_dim[-1], H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (N, C, H, W) -> (N, C)
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, RepVitConfig] = {
    "repvit_m0_9": RepVitConfig((48, 96, 192, 384), (2, 2, 14, 2)),
    "repvit_m1_0": RepVitConfig((56, 112, 224, 448), (2, 2, 14, 2)),
    "repvit_m1_1": RepVitConfig((64, 128, 256, 512), (2, 2, 12, 2)),
    "repvit_m1_5": RepVitConfig((64, 128, 256, 512), (4, 4, 24, 4)),
    "repvit_m2_3": RepVitConfig((80, 160, 320, 640), (6, 6, 34, 2)),
}

# No LoRA targets: there is no attention, only depthwise and 1x1 convolutions.
register_family(VARIANTS, family="repvit", paper="RepViT: Revisiting Mobile CNN From ViT Perspective", year=2024,
                builder=RepVit, recipe_style="vit", cam_layer=CamLayer("stages.-1"), edge=True)
