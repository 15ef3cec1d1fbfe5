"""EfficientViT (Microsoft): a memory-efficient vision transformer with cascaded group attention.

Liu et al., 2023, "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention".

Each block is a "sandwich": depthwise conv and FFN, one window attention, depthwise conv and FFN.
The attention splits the channels among heads and cascades them: head i attends over its own
channel slice plus the output of head i-1, so each head sees a different, richer input at no
extra cost. Every head adds a learned bias indexed by the relative offset of two window
positions; the window size depends on the resolution the model is built for (`img_size`).

Module names follow timm's `efficientvit_msra.py`, so its weights load with strict=True.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.conv_bn_act import ConvBnAct
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.pool import GlobalPool
from visionzoo.registry import CamLayer, register_family


def conv_norm(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
              groups: int = 1, bn_weight_init: float = 1.0) -> ConvBnAct:
    """Conv2d (no bias) -> BatchNorm2d, with the norm's scale started at `bn_weight_init`.

    A residual branch that ends in a norm started at zero begins as the identity map.
    """
    module = ConvBnAct(in_chs, out_chs, kernel_size, stride=stride, padding=padding, groups=groups, act_layer=None)
    nn.init.constant_(module.bn.weight, bn_weight_init)
    return module


class NormLinear(nn.Sequential):
    """BatchNorm1d -> dropout -> linear: the classifier, foldable into one linear at inference."""

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (Hu et al., 2018, "Squeeze-and-Excitation Networks").

    Kept here rather than using `visionzoo.layers.squeeze_excite`: this family's weights name
    the convolutions `fc1` / `fc2` (timm's SEModule), not `conv_reduce` / `conv_expand`.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, divisor: int = 8):
        super().__init__()
        # reduced width rounded to the nearest multiple of `divisor`, as timm's SqueezeExcite does
        rd_channels = max(divisor, int(channels * rd_ratio + divisor / 2) // divisor * divisor)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))  # (N, C, 1, 1)
        return x * scale.sigmoid()


class Residual(nn.Module):
    """x + m(x), with stochastic depth on the branch.

    The branch is named `m` for weight compatibility with timm's `ResidualDrop`.
    """

    def __init__(self, m: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None  # None: no empty module call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_path is None:
            return x + self.m(x)
        return x + self.drop_path(self.m(x))


class ConvMlp(nn.Module):
    """The feed-forward network on (N, C, H, W) maps: 1x1 conv up, ReLU, 1x1 conv down."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.pw1 = conv_norm(dim, hidden_dim)
        self.act = nn.ReLU()
        self.pw2 = conv_norm(hidden_dim, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class PatchMerging(nn.Module):
    """Halves the resolution: an inverted residual (expand 4x, strided depthwise 3x3, SE, project)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        hidden_dim = dim * 4
        self.conv1 = conv_norm(dim, hidden_dim)
        self.act = nn.ReLU()
        self.conv2 = conv_norm(hidden_dim, hidden_dim, 3, stride=2, padding=1, groups=hidden_dim)
        self.se = SqueezeExcite(hidden_dim, 0.25)
        self.conv3 = conv_norm(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.conv3(self.se(x))


def relative_offset_index(resolution: int) -> torch.Tensor:
    """(N, N) index of the offset (|dy|, |dx|) between every pair of the N = resolution**2
    positions of a window, as dy * resolution + dx.

    This numbering equals the first-seen order of offsets that timm (and the official code)
    builds in Python, so published bias tables line up. Pure tensor ops, so it builds on meta.
    """
    coords = torch.arange(resolution)
    rows = coords.repeat_interleave(resolution)  # (N,) row of each position, row-major
    cols = coords.repeat(resolution)  # (N,) column of each position
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * resolution + dx


class CascadedGroupAttention(nn.Module):
    """Attention within one (resolution x resolution) window, heads cascaded over channel groups.

    Head i projects (its channel slice + head i-1's output) to q, k, v; a depthwise conv adds
    local context to q; a learned bias per relative offset is added to the logits.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0,
                 resolution: int = 14, kernels: tuple[int, ...] = (5, 5, 5, 5)):
        super().__init__()
        if len(kernels) < num_heads:
            raise SettingError(f"kernels {kernels} gives {len(kernels)} query kernel sizes for {num_heads} heads; "
                             "give one kernel size per head")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim ** -0.5
        self.resolution = resolution
        self.qkvs = nn.ModuleList(
            conv_norm(dim // num_heads, key_dim * 2 + self.val_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(
            conv_norm(key_dim, key_dim, kernels[i], padding=kernels[i] // 2, groups=key_dim)
            for i in range(num_heads))
        self.proj = nn.Sequential(nn.ReLU(), conv_norm(self.val_dim * num_heads, dim, bn_weight_init=0.0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        # derived from `resolution`, so not saved: timm registers it non-persistent too
        self.register_buffer("attention_bias_idxs", relative_offset_index(resolution), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape  # one window: height == width == resolution
        biases = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        groups = x.chunk(self.num_heads, dim=1)
        outputs = []
        feat = groups[0]
        for head, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if head > 0:
                feat = feat + groups[head]  # the cascade: previous head's output feeds this one
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q, k, v = dw(q).flatten(2), k.flatten(2), v.flatten(2)  # (N, C', H, W) -> (N, C', H*W)
            # Written out rather than through scaled_dot_product_attention: after the first stage,
            # values are wider than keys, which rules out SDPA's fused CPU kernel, and its fallback
            # costs more operators than these three on windows of 49 tokens.
            # logits = scale * q^T k + bias, in one baddbmm.
            attn = torch.baddbmm(biases[head].to(q.dtype), q.transpose(1, 2), k, alpha=self.scale).softmax(-1)
            feat = (v @ attn.transpose(1, 2)).view(batch, self.val_dim, height, width)  # (N, C', H*W) -> map
            outputs.append(feat)
        return self.proj(torch.cat(outputs, dim=1))


class LocalWindowAttention(nn.Module):
    """Cascaded group attention over non-overlapping windows; the map is zero-padded to whole windows.

    The window is `window_resolution`, or the feature resolution when that is smaller.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0,
                 resolution: int = 14, window_resolution: int = 7, kernels: tuple[int, ...] = (5, 5, 5, 5)):
        super().__init__()
        if window_resolution < 1:
            raise SettingError(f"window_resolution must be positive, got {window_resolution}")
        self.resolution = resolution
        self.window_resolution = window_resolution
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, attn_ratio,
                                           resolution=min(window_resolution, resolution), kernels=kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        ws = self.attn.resolution
        if height == ws and width == ws:
            return self.attn(x)
        pad_b, pad_r = (ws - height % ws) % ws, (ws - width % ws) % ws
        x = F.pad(x, (0, pad_r, 0, pad_b))
        rows, cols = (height + pad_b) // ws, (width + pad_r) // ws
        # (N, C, rows*ws, cols*ws) -> (N*rows*cols, C, ws, ws)
        x = x.view(batch, channels, rows, ws, cols, ws).permute(0, 2, 4, 1, 3, 5)
        x = self.attn(x.reshape(batch * rows * cols, channels, ws, ws))
        # (N*rows*cols, C, ws, ws) -> (N, C, rows*ws, cols*ws)
        x = x.view(batch, rows, cols, channels, ws, ws).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(batch, channels, rows * ws, cols * ws)
        return x[:, :, :height, :width].contiguous()


class EfficientVitBlock(nn.Module):
    """The sandwich: (depthwise conv, FFN), window attention, (depthwise conv, FFN), each residual."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 window_resolution: int, kernels: tuple[int, ...], drop_path: float = 0.0):
        super().__init__()
        self.dw0 = Residual(conv_norm(dim, dim, 3, padding=1, groups=dim, bn_weight_init=0.0), drop_path)
        self.ffn0 = Residual(ConvMlp(dim, dim * 2), drop_path)
        self.mixer = Residual(LocalWindowAttention(dim, key_dim, num_heads, attn_ratio, resolution,
                                                   window_resolution, kernels), drop_path)
        self.dw1 = Residual(conv_norm(dim, dim, 3, padding=1, groups=dim, bn_weight_init=0.0), drop_path)
        self.ffn1 = Residual(ConvMlp(dim, dim * 2), drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


def _local_mixing(dim: int) -> nn.Sequential:
    """Depthwise conv and FFN, each residual: placed on both sides of a patch merging."""
    return nn.Sequential(Residual(conv_norm(dim, dim, 3, padding=1, groups=dim)), Residual(ConvMlp(dim, dim * 2)))


class EfficientVitStage(nn.Module):
    """An optional downsampling (mixing, patch merging, mixing), then `depth` sandwich blocks."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, subsample: bool, num_heads: int,
                 attn_ratio: float, resolution: int, window_resolution: int, kernels: tuple[int, ...],
                 drop_paths: list[float]):
        super().__init__()
        if subsample:
            self.resolution = (resolution - 1) // 2 + 1
            self.downsample = nn.Sequential(OrderedDict([
                ("res1", _local_mixing(in_dim)),
                ("patchmerge", PatchMerging(in_dim, out_dim)),
                ("res2", _local_mixing(out_dim)),
            ]))
        else:
            if in_dim != out_dim:
                raise SettingError(f"a stage without subsampling keeps its width, got {in_dim} -> {out_dim}")
            self.resolution = resolution
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(
            EfficientVitBlock(out_dim, key_dim, num_heads, attn_ratio, self.resolution, window_resolution,
                              kernels, drop_path)
            for drop_path in drop_paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class PatchEmbedding(nn.Sequential):
    """Four strided 3x3 conv-norms with ReLU between: the stem, stride 16."""

    patch_size = 16

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = conv_norm(in_chans, dim // 8, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = conv_norm(dim // 8, dim // 4, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = conv_norm(dim // 4, dim // 2, 3, stride=2, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = conv_norm(dim // 2, dim, 3, stride=2, padding=1)


@dataclass(frozen=True)
class EfficientVitMsraConfig:
    """EfficientViT (Microsoft): Liu, Peng, Zheng, Yang, Hu and Yuan, 2023, "EfficientViT: Memory Efficient
    Vision Transformer with Cascaded Group Attention"."""

    embed_dim: tuple[int, int, int]  # width of each stage
    depth: tuple[int, int, int]  # sandwich blocks per stage
    num_heads: tuple[int, int, int]
    kernels: tuple[int, ...]  # depthwise kernel on the queries, one per head
    key_dim: tuple[int, int, int] = (16, 16, 16)  # query / key width per head
    window_size: tuple[int, int, int] = (7, 7, 7)  # attention window per stage
    subsample: tuple[bool, bool, bool] = (False, True, True)  # stage starts with a stride-2 patch merging
    img_size: int = 224  # input resolution the attention windows and their biases are built for


class EfficientVitMsra(nn.Module):
    """EfficientViT-M (Liu et al., 2023, "EfficientViT: Memory Efficient Vision Transformer with
    Cascaded Group Attention")."""

    def __init__(self, config: EfficientVitMsraConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        if config.img_size < PatchEmbedding.patch_size:
            raise SettingError(f"img_size must be at least {PatchEmbedding.patch_size} (the stem's stride), "
                             f"got {config.img_size}")
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = drop_rate

        self.patch_embed = PatchEmbedding(in_chans, config.embed_dim[0])
        stride = PatchEmbedding.patch_size
        resolution = config.img_size // stride
        rates = stochastic_depth_rates(drop_path_rate, config.depth)
        stages, self.feature_info = [], []
        in_dim = config.embed_dim[0]
        for index, (dim, key_dim, heads, window, subsample) in enumerate(zip(
                config.embed_dim, config.key_dim, config.num_heads, config.window_size, config.subsample)):
            attn_ratio = dim / (key_dim * heads)  # value width per head is dim / heads
            stage = EfficientVitStage(in_dim, dim, key_dim, subsample, heads, attn_ratio, resolution, window,
                                      config.kernels, rates[index])
            stages.append(stage)
            stride *= 2 if subsample else 1
            resolution = stage.resolution
            in_dim = dim
            self.feature_info.append(FeatureInfo(f"stages.{index}", dim, stride))
        self.stages = nn.Sequential(*stages)

        self.num_features = in_dim
        self.global_pool = GlobalPool("avg")
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return NormLinear(self.num_features, num_classes, self.drop_rate) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x))  # (N, embed_dim[-1], H/64, W/64)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, EfficientVitMsraConfig] = {
    "efficientvit_m0": EfficientVitMsraConfig((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
    "efficientvit_m1": EfficientVitMsraConfig((128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
    "efficientvit_m2": EfficientVitMsraConfig((128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
    "efficientvit_m3": EfficientVitMsraConfig((128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
    "efficientvit_m4": EfficientVitMsraConfig((128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
    "efficientvit_m5": EfficientVitMsraConfig((192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
}

# No LoRA targets: the attention is a few small grouped convolutions, where a low-rank update saves little.
register_family(VARIANTS, family="efficientvit_msra",
                paper="EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention", year=2023,
                builder=EfficientVitMsra, recipe_style="vit", cam_layer=CamLayer("stages.-1"))
