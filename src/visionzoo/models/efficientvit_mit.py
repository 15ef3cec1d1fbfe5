"""EfficientViT (MIT): multi-scale ReLU linear attention for high-resolution dense prediction.

Cai et al., 2023, "EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense Prediction".

The first two stages are MobileNet-style inverted residuals (MBConv); the last two alternate a
lightweight multi-scale attention (LiteMLA) with an MBConv. LiteMLA replaces softmax with ReLU
linear attention, out_i = sum_j (relu(q_i) . relu(k_j)) v_j / sum_j relu(q_i) . relu(k_j), computed
as relu(q) (relu(k)^T v), which costs O(N) rather than O(N^2) in the number of positions N; it is
not a softmax, so it does not go through scaled_dot_product_attention. Small depthwise
convolutions aggregate q, k and v over neighbouring positions to add multi-scale tokens.

Module names follow timm's `efficientvit_mit.py` (EfficientViT-B), so its weights load with
strict=True.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.pool import GlobalPool
from visionzoo.registry import CamLayer, register_family


class ConvNormAct(nn.Module):
    """Conv2d ("same" padding) -> optional BatchNorm2d -> optional activation.

    The norm is named `norm`, and the conv has a bias where the norm is left out, as in timm.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: bool = True, act_layer: type[nn.Module] | None = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_chs) if norm else nn.Identity()
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DSConv(nn.Module):
    """Depthwise-separable conv: depthwise 3x3 with activation, then a linear pointwise 1x1 (the stem's block)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        self.depth_conv = ConvNormAct(in_chs, in_chs, 3, stride, groups=in_chs, act_layer=act_layer)
        self.point_conv = ConvNormAct(in_chs, out_chs, 1, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted residual (Sandler et al., 2018): 1x1 expand, depthwise 3x3, linear 1x1 project.

    `fewer_norm=True` (the attention stages) drops the norms of the first two convolutions and
    gives them biases instead.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 6.0,
                 fewer_norm: bool = False, act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        mid_chs = round(in_chs * expand_ratio)
        self.inverted_conv = ConvNormAct(in_chs, mid_chs, 1, bias=fewer_norm, norm=not fewer_norm,
                                         act_layer=act_layer)
        self.depth_conv = ConvNormAct(mid_chs, mid_chs, 3, stride, groups=mid_chs, bias=fewer_norm,
                                      norm=not fewer_norm, act_layer=act_layer)
        self.point_conv = ConvNormAct(mid_chs, out_chs, 1, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class ResidualBlock(nn.Module):
    """main(x) + shortcut(x) with stochastic depth on the main branch; `shortcut=None` means no residual."""

    def __init__(self, main: nn.Module, shortcut: nn.Module | None = None, drop_path: float = 0.0):
        super().__init__()
        self.main = main
        self.shortcut = shortcut
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.main(x)
        return self.drop_path(self.main(x)) + self.shortcut(x)


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention.

    q, k and v of all heads come from one 1x1 conv; each entry of `scales` adds a depthwise
    (scale x scale) conv and a grouped 1x1 conv over them, giving more heads that see a
    neighbourhood. Every head then runs ReLU linear attention over all positions.
    """

    def __init__(self, in_chs: int, out_chs: int, head_dim: int = 8, heads_ratio: float = 1.0,
                 scales: tuple[int, ...] = (5,), eps: float = 1e-5):
        super().__init__()
        heads = int(in_chs // head_dim * heads_ratio)
        total_dim = heads * head_dim
        self.dim = head_dim  # `dim` for parity with timm's attribute
        self.eps = eps
        self.qkv = ConvNormAct(in_chs, 3 * total_dim, 1, norm=False, act_layer=None)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total_dim, 3 * total_dim, scale, padding=scale // 2, groups=3 * total_dim, bias=False),
                nn.Conv2d(3 * total_dim, 3 * total_dim, 1, groups=3 * heads, bias=False),
            )
            for scale in scales
        )
        self.kernel_func = nn.ReLU(inplace=False)
        self.proj = ConvNormAct(total_dim * (1 + len(scales)), out_chs, 1, act_layer=None)

    def _linear_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (N, heads, L, head_dim) -> (N, heads, L, head_dim), in float32."""
        dtype = v.dtype
        q, k, v = self.kernel_func(q).float(), self.kernel_func(k).float(), v.float()
        v = F.pad(v, (0, 1), value=1.0)  # a ones column: its output is the normaliser sum_j q_i . k_j
        out = q @ (k.transpose(-1, -2) @ v)  # (N, heads, L, head_dim + 1); (k^T v) first is the O(L) order
        return (out[..., :-1] / (out[..., -1:] + self.eps)).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(op(qkv) for op in self.aggreg)], dim=1)  # (N, 3 * total_dim * (1 + scales), H, W)
        # (N, heads', 3 * head_dim, H, W) -> (N, heads', H*W, 3 * head_dim)
        qkv = qkv.reshape(batch, -1, 3 * self.dim, height * width).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        # The division by a sum of products is unstable in half precision: run it in float32.
        no_autocast = torch.autocast(x.device.type, enabled=False) if x.device.type != "meta" else nullcontext()
        with no_autocast:
            out = self._linear_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(batch, -1, height, width)  # back to (N, heads' * head_dim, H, W)
        return self.proj(out)


class EfficientVitBlock(nn.Module):
    """Global context (LiteMLA) then local detail (MBConv without the first two norms), each residual."""

    def __init__(self, in_chs: int, head_dim: int = 32, expand_ratio: float = 4.0,
                 act_layer: type[nn.Module] = nn.Hardswish, drop_path: float = 0.0):
        super().__init__()
        self.context_module = ResidualBlock(LiteMLA(in_chs, in_chs, head_dim=head_dim), nn.Identity(), drop_path)
        self.local_module = ResidualBlock(
            MBConv(in_chs, in_chs, expand_ratio=expand_ratio, fewer_norm=True, act_layer=act_layer),
            nn.Identity(), drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class Stem(nn.Sequential):
    """Strided 3x3 conv, then `depth` residual depthwise-separable convs; stride 2."""

    stride = 2

    def __init__(self, in_chs: int, out_chs: int, depth: int, act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        self.in_conv = ConvNormAct(in_chs, out_chs, 3, stride=2, act_layer=act_layer)
        for index in range(depth):
            self.add_module(f"res{index}", ResidualBlock(DSConv(out_chs, out_chs, act_layer=act_layer), nn.Identity()))


class EfficientVitStage(nn.Module):
    """A stride-2 MBConv, then MBConvs (stages 1-2) or attention blocks (stages 3-4)."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, expand_ratio: float, head_dim: int,
                 vit_stage: bool, drop_paths: list[float], act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        blocks: list[nn.Module] = [ResidualBlock(
            MBConv(in_chs, out_chs, stride=2, expand_ratio=expand_ratio, fewer_norm=vit_stage, act_layer=act_layer),
            None)]
        if vit_stage:
            blocks += [EfficientVitBlock(out_chs, head_dim, expand_ratio, act_layer, rate) for rate in drop_paths]
        else:
            blocks += [ResidualBlock(MBConv(out_chs, out_chs, expand_ratio=expand_ratio, act_layer=act_layer),
                                     nn.Identity(), rate) for rate in drop_paths]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """1x1 conv, global pool, linear + LayerNorm + activation (pre-logits), dropout, classifier."""

    def __init__(self, in_chs: int, widths: tuple[int, int], num_classes: int = 1000, drop_rate: float = 0.0,
                 act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        self.num_features = widths[1]
        self.in_conv = ConvNormAct(in_chs, widths[0], 1, act_layer=act_layer)
        self.global_pool = GlobalPool("avg")
        self.classifier = nn.Sequential(
            nn.Linear(widths[0], widths[1], bias=False),
            nn.LayerNorm(widths[1], eps=1e-5),
            act_layer(inplace=True),
            nn.Dropout(drop_rate),
            self._make_fc(num_classes),
        )

    def _make_fc(self, num_classes: int) -> nn.Module:
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.classifier[-1] = self._make_fc(num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.in_conv(x))
        x = self.classifier[:-1](x)  # (N, widths[1])
        return x if pre_logits else self.classifier[-1](x)


@dataclass(frozen=True)
class EfficientVitMitConfig:
    """EfficientViT (MIT): Cai, Li, Hu, Gan and Han, 2023, "EfficientViT: Multi-Scale Linear Attention for
    High-Resolution Dense Prediction"."""

    widths: tuple[int, int, int, int, int]  # stem, then the four stages
    depths: tuple[int, int, int, int, int]  # residual DSConvs in the stem, then blocks per stage
    head_dim: int  # channels per attention head
    head_widths: tuple[int, int]  # the head's 1x1 conv width, then its pre-logits width
    expand_ratio: float = 4.0  # MBConv expansion


class EfficientVitMit(nn.Module):
    """EfficientViT-B (Cai et al., 2023, "EfficientViT: Multi-Scale Linear Attention for
    High-Resolution Dense Prediction").

    `num_features` is the width of the pooled pre-logits features (`head_widths[1]`), which is
    what `num_classes=0` returns; timm calls it `head_hidden_size`.
    """

    def __init__(self, config: EfficientVitMitConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.stem = Stem(in_chans, config.widths[0], config.depths[0])
        stride = Stem.stride

        # the stage's first block changes width and stride, so has no residual to drop
        vit_stages = [index >= 2 for index in range(len(config.widths) - 1)]
        residual_counts = [depth if vit else depth - 1 for depth, vit in zip(config.depths[1:], vit_stages)]
        rates = stochastic_depth_rates(drop_path_rate, residual_counts)
        self.feature_info = []
        self.stages = nn.Sequential()
        in_chs = config.widths[0]
        for index, (width, vit) in enumerate(zip(config.widths[1:], vit_stages)):
            self.stages.append(EfficientVitStage(in_chs, width, config.depths[index + 1], config.expand_ratio,
                                                 config.head_dim, vit, rates[index]))
            stride *= 2
            in_chs = width
            self.feature_info.append(FeatureInfo(f"stages.{index}", width, stride))

        self.head = ClassifierHead(in_chs, config.head_widths, num_classes, drop_rate)
        self.num_features = self.head.num_features

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset(num_classes)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (N, widths[-1], H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, EfficientVitMitConfig] = {
    "efficientvit_b0": EfficientVitMitConfig((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16, (1024, 1280)),
    "efficientvit_b1": EfficientVitMitConfig((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16, (1536, 1600)),
    "efficientvit_b2": EfficientVitMitConfig((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32, (2304, 2560)),
    "efficientvit_b3": EfficientVitMitConfig((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32, (2304, 2560)),
}

# No LoRA targets: the attention is a few small grouped convolutions, where a low-rank update saves little.
register_family(VARIANTS, family="efficientvit_mit",
                paper="EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense Prediction", year=2023,
                builder=EfficientVitMit, recipe_style="vit", cam_layer=CamLayer("stages.-1"))
