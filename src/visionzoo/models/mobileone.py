"""MobileOne (Vasu et al., 2023, "MobileOne: An Improved One millisecond Mobile Backbone").

A plain stack of depthwise-separable pairs, measured for latency on a phone: each pair is a 3x3
depthwise block followed by a 1x1 pointwise block, ReLU after each, and nothing else at inference
time: no residual connection, no multi-branch block, which are what cost memory traffic on a phone.

Trained, each block is over-parameterised (the paper's Figure 3): k parallel conv-BN branches of
the block's kernel (k = 4 for S0, 1 for S1-S4), a 1x1 conv-BN "scale" branch where the kernel is
3x3, and a BN'd identity where the shape allows, summed. All are linear, so after training
`MobileOne.reparameterize()` folds them into the one convolution per block that deploys (RepVGG's
structural re-parameterisation). S4 adds squeeze-excitation to the last blocks of stages 3 and 4.

`MobileOneBranches` is that re-parameterisable sum; FastViT (`visionzoo.models.fastvit`), by the
same authors, builds its stem and token mixer from it. Module names follow timm's `byobnet.py`
(`stem`, `stages.i.j`, `conv_kxk.n`, `conv_scale`, `identity`, `attn`, `head.fc`), so its weights
load with strict=True; a fused block's convolution is `reparam_conv`, as in timm's fused models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.classifier import ClassifierHead
from visionzoo.layers.conv_bn_act import ConvBnAct
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.stage_table import make_divisible
from visionzoo.registry import CamLayer, register_family

__all__ = ["MobileOne", "MobileOneBlock", "MobileOneBranches", "MobileOneConfig", "SqueezeExcite", "VARIANTS",
           "fold_batch_norm", "fused_conv", "identity_kernel"]


# --- re-parameterisation --------------------------------------------------------------------


def fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel and bias of conv(weight) -> BN in eval mode: BN(y) = scale * y + shift per output channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


def fused_conv(weight: torch.Tensor, bias: torch.Tensor, *, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A biased convolution holding `weight` (out, in / groups, k, k), padded to keep an odd kernel centred."""
    out_chs, in_per_group, kernel_size, _ = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                     groups=groups, bias=True, device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    return conv


def identity_kernel(channels: int, groups: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """The identity as a grouped kxk convolution: each channel's own input at the kernel's centre."""
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, kernel_size, kernel_size, dtype=like.dtype, device=like.device)
    centre = kernel_size // 2
    index = torch.arange(channels, device=like.device)
    kernel[index, index % in_per_group, centre, centre] = 1.0
    return kernel


class MobileOneBranches(nn.Module):
    """The linear part of a MobileOne block: the sum of `num_conv_branches` kxk conv-BN, a 1x1 conv-BN
    (`conv_scale`, where k > 1 and `use_scale_branch`) and a BN of the input (`identity`, where the
    shape is kept), all with the same stride and groups; `reparameterize()` makes it one kxk conv.

    Subclasses say what follows the sum (squeeze-excitation, activation); the branches sit on the
    subclass itself, not in a child module, because the published weights name them that way.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 num_conv_branches: int = 1, use_scale_branch: bool = True, drop_path_rate: float = 0.0):
        super().__init__()
        if in_chs % groups or out_chs % groups:
            raise SettingError(f"channels {in_chs} -> {out_chs} do not divide into {groups} groups")
        self.in_chs, self.out_chs, self.kernel_size, self.stride, self.groups = (
            in_chs, out_chs, kernel_size, stride, groups)
        self.reparam_conv: nn.Conv2d | None = None  # the fused form, set by reparameterize()
        has_identity = in_chs == out_chs and stride == 1
        self.identity = nn.BatchNorm2d(in_chs) if has_identity else None
        self.conv_kxk = nn.ModuleList([
            ConvBnAct(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups, act_layer=None)
            for _ in range(num_conv_branches)]) if num_conv_branches > 0 else None
        # The 1x1 branch runs on every stride-th pixel with a stride-1 conv, the same sum as a strided 1x1
        # conv: oneDNN's strided 1x1 weight gradient in channels-last memory with fewer than 16 input
        # channels per group (the RGB stem) writes past its workspace and crashes the process or corrupts
        # memory (uxlfoundation/oneDNN#6035; torch 2.14.1, 224 px). The weights and their names are unchanged.
        self.conv_scale = (ConvBnAct(in_chs, out_chs, 1, 1, 0, groups, act_layer=None)
                           if kernel_size > 1 and use_scale_branch else None)
        if self.identity is None and self.conv_kxk is None and self.conv_scale is None:
            raise SettingError(f"a block {in_chs} -> {out_chs} (stride {stride}) without convolution branches "
                               "needs the identity, which only a block that keeps its shape has")
        # as in the reference: stochastic depth drops the convolutions and keeps the identity
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 and has_identity else None

    def branch_sum(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chs, H, W) -> (N, out_chs, H / stride, W / stride)."""
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        out = self.conv_scale(x[:, :, ::self.stride, ::self.stride]) if self.conv_scale is not None else None
        for branch in self.conv_kxk or ():
            out = branch(x) if out is None else out + branch(x)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.identity is not None:
            out = self.identity(x) if out is None else out + self.identity(x)
        return out

    @torch.no_grad()
    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All branches as one kxk kernel and bias: the 1x1 and the identity sit at the kernel's centre."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        like = next(self.parameters())
        factory = dict(dtype=like.dtype, device=like.device)
        size = self.kernel_size
        weight = torch.zeros(self.out_chs, self.in_chs // self.groups, size, size, **factory)
        bias = torch.zeros(self.out_chs, **factory)
        for conv_bn in self.conv_kxk or ():
            branch_weight, branch_bias = fold_batch_norm(conv_bn.conv.weight, conv_bn.bn)
            weight, bias = weight + branch_weight, bias + branch_bias
        if self.conv_scale is not None:
            branch_weight, branch_bias = fold_batch_norm(self.conv_scale.conv.weight, self.conv_scale.bn)
            weight, bias = weight + F.pad(branch_weight, [size // 2] * 4), bias + branch_bias
        if self.identity is not None:
            branch_weight, branch_bias = fold_batch_norm(identity_kernel(self.out_chs, self.groups, size, like),
                                                         self.identity)
            weight, bias = weight + branch_weight, bias + branch_bias
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by their one convolution, in place (eval-mode BN statistics)."""
        if self.reparam_conv is not None:
            return
        weight, bias = self.fused_weight_bias()
        self.reparam_conv = fused_conv(weight, bias, stride=self.stride, groups=self.groups)
        self.identity = self.conv_kxk = self.conv_scale = self.drop_path = None


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018) with 1/16 of the channels, rounded to `divisor`.

    Not `visionzoo.layers.squeeze_excite`: these weights name the convolutions `fc1` / `fc2`
    (timm's SEModule), not `conv_reduce` / `conv_expand`.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, divisor: int = 8):
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))  # (N, C, 1, 1)
        return x * scale.sigmoid()


# --- blocks ---------------------------------------------------------------------------------


class MobileOneBlock(MobileOneBranches):
    """One MobileOne block: the branch sum, squeeze-excitation where asked (`attn`), ReLU."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 num_conv_branches: int = 1, use_se: bool = False, drop_path_rate: float = 0.0):
        super().__init__(in_chs, out_chs, kernel_size, stride, groups, num_conv_branches,
                         drop_path_rate=drop_path_rate)
        self.attn = SqueezeExcite(out_chs) if use_se else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.attn(self.branch_sum(x)))


# --- the network ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MobileOneConfig:
    """MobileOne: Vasu, Gabriel, Zhu, Tuzel and Ranjan, 2023, "MobileOne: An Improved One millisecond Mobile Backbone"."""

    width_multipliers: tuple[float, float, float, float]  # the paper's alpha per stage, on widths 64-128-256-512
    stem_chs: int = 64  # min(64, 64 * alpha_1)
    depth: tuple[int, int, int, int] = (2, 8, 10, 1)  # depthwise-pointwise pairs per stage
    num_conv_branches: int = 1  # k: parallel kxk branches per block in training (4 for S0)
    se_pairs: tuple[int, int, int, int] = (0, 0, 0, 0)  # the last n pairs of each stage get squeeze-excitation
    base_widths: tuple[int, int, int, int] = (64, 128, 256, 512)


class MobileOne(nn.Module):
    """MobileOne (Vasu et al., 2023): a stem block and four stages of depthwise-pointwise block pairs.

    `forward_features` returns the last stage's map (N, num_features, H/32, W/32). After
    `reparameterize()` every block is one convolution (and SE, ReLU); the network computes the same
    function in eval mode and is meant for inference only.
    """

    def __init__(self, config: MobileOneConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate

        # one kxk branch in the stem whatever `num_conv_branches` (as the published weights have)
        self.stem = MobileOneBlock(in_chans, config.stem_chs, 3, stride=2)  # (N, stem_chs, H/2, W/2)
        self.feature_info = [FeatureInfo("stem", config.stem_chs, 2)]
        rates = stochastic_depth_rates(drop_path_rate, [2 * depth for depth in config.depth])
        stages, in_chs, reduction = [], config.stem_chs, 2
        for index, (depth, base, multiplier, se_pairs) in enumerate(
                zip(config.depth, config.base_widths, config.width_multipliers, config.se_pairs)):
            out_chs = int(base * multiplier)
            blocks = []
            for pair in range(depth):
                use_se = pair >= depth - se_pairs
                blocks += [
                    MobileOneBlock(in_chs, in_chs, 3, stride=2 if pair == 0 else 1, groups=in_chs,  # depthwise
                                   num_conv_branches=config.num_conv_branches, use_se=use_se,
                                   drop_path_rate=rates[index][2 * pair]),
                    MobileOneBlock(in_chs, out_chs, 1, num_conv_branches=config.num_conv_branches,  # pointwise
                                   use_se=use_se, drop_path_rate=rates[index][2 * pair + 1]),
                ]
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            reduction *= 2
            self.feature_info.append(FeatureInfo(f"stages.{index}", out_chs, reduction))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.apply(_init_weights)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    @torch.no_grad()
    def reparameterize(self) -> MobileOne:
        """Fold every block's branches and batch norms into one convolution, in place.

        Outputs equal the unfused model's in eval mode (to float rounding); the state dict changes
        (`reparam_conv` per block), so load published weights before calling this, not after.
        """
        for module in [m for m in self.modules() if isinstance(m, MobileOneBranches)]:  # listed first: fusing edits the tree
            module.reparameterize()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """The reference's: He-normal convolutions over fan-out, small normal classifier."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.zeros_(module.bias)


# --- variants -------------------------------------------------------------------------------

VARIANTS: dict[str, MobileOneConfig] = {
    "mobileone_s0": MobileOneConfig((0.75, 1.0, 1.0, 2.0), stem_chs=48, num_conv_branches=4),
    "mobileone_s1": MobileOneConfig((1.5, 1.5, 2.0, 2.5)),
    "mobileone_s2": MobileOneConfig((1.5, 2.0, 2.5, 4.0)),
    "mobileone_s3": MobileOneConfig((2.0, 2.5, 3.0, 4.0)),
    "mobileone_s4": MobileOneConfig((3.0, 3.5, 3.5, 4.0), se_pairs=(0, 0, 5, 1)),
}

# Trained with SGD (momentum 0.9, weight decay 1e-4, cosine schedule), as the classic CNNs.
# No LoRA targets: there is no attention, and the convolutions are depthwise or 1x1.
register_family(VARIANTS, family="mobileone", paper="MobileOne: An Improved One millisecond Mobile Backbone",
                year=2023, builder=MobileOne, recipe_style="convnet", cam_layer=CamLayer("stages.-1"), edge=True)
