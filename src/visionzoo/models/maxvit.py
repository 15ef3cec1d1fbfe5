"""MaxViT, in the configuration of the TensorFlow release ("tf" variants).

Tu et al., 2022, "MaxViT: Multi-Axis Vision Transformer".

Each block is an MBConv followed by two attention layers over the same map: block attention
within non-overlapping windows (local), then grid attention across a dilated grid (global),
both with `window = img_size / 32` tokens per side. Module names follow timm's `maxxvit.py`
so that published weights load with strict=True. The TF variants pad convolutions and
pooling as TensorFlow's "SAME" does, use BatchNorm eps 1e-3, LayerNorm eps 1e-5 and
tanh-approximated GELU, as timm configures them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.checkpoint import run_blocks
from visionzoo.layers.classifier import NormMlpClassifierHead
from visionzoo.layers.conv_bn_act import BN_EPS_TF
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.norm import LayerNorm2d
from visionzoo.layers.norm_act import BatchNormAct2d
from visionzoo.layers.padding import create_conv2d, same_padding_amount
from visionzoo.layers.pos_embed_rel import RelPosBiasTf
from visionzoo.layers.window import window_partition, window_reverse
from visionzoo.registry import CamLayer, LoraTargets, register_family

LN_EPS = 1e-5  # TF layer norm epsilon
PARTITION_RATIO = 32  # window (and grid) side = img_size / 32: 7 at 224


def gelu_tanh(inplace: bool = False) -> nn.Module:
    """GELU with TF's tanh approximation; `inplace` is accepted (and ignored) for BatchNormAct2d."""
    return nn.GELU(approximate="tanh")


class AvgPool2dSame(nn.Module):
    """2x2 stride-2 average pooling padded as TensorFlow's "SAME" (zeros counted, bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = same_padding_amount(x.shape[-2], 2, 2)
        pad_w = same_padding_amount(x.shape[-1], 2, 2)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.avg_pool2d(x, 2, 2)


class Downsample2d(nn.Module):
    """Shortcut of a strided block: 2x2 average pool, then a 1x1 conv where the width changes."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.pool = AvgPool2dSame()
        self.expand = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class SEModule(nn.Module):
    """Squeeze-and-excitation with SiLU; submodules named `fc1`/`fc2` as in timm (weight compatibility)."""

    def __init__(self, channels: int, rd_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.bn = nn.Identity()
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (N, C, H, W) -> (N, C, 1, 1)
        return x * self.gate(self.fc2(self.act(self.bn(self.fc1(scale)))))


class MbConvBlock(nn.Module):
    """Pre-norm inverted bottleneck: BN -> 1x1 expand by 4 -> BN-GELU -> 3x3 depthwise (strided) -> BN-GELU
    -> SE -> 1x1 project, plus a (pooled) shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 4.0,
                 drop_path: float = 0.0):
        super().__init__()
        mid_chs = int(out_chs * expand_ratio)
        self.shortcut = Downsample2d(in_chs, out_chs) if stride == 2 else nn.Identity()
        self.pre_norm = BatchNormAct2d(in_chs, eps=BN_EPS_TF, act_layer=None)
        self.down = nn.Identity()
        self.conv1_1x1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.norm1 = BatchNormAct2d(mid_chs, eps=BN_EPS_TF, act_layer=gelu_tanh)
        self.conv2_kxk = create_conv2d(mid_chs, mid_chs, 3, stride=stride, groups=mid_chs, padding="same")
        self.se_early = None
        self.norm2 = BatchNormAct2d(mid_chs, eps=BN_EPS_TF, act_layer=gelu_tanh)
        self.se = SEModule(mid_chs, int(0.25 * out_chs))
        self.conv3_1x1 = nn.Conv2d(mid_chs, out_chs, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.down(self.pre_norm(x))))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        return self.drop_path(self.conv3_1x1(x)) + shortcut


def grid_partition(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, C) -> (N * H/gh * W/gw, gh, gw, C): each group takes every (H/gh)-th token (grid attention)."""
    n, h, w, c = x.shape
    x = x.view(n, grid[0], h // grid[0], grid[1], w // grid[1], c)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, grid[0], grid[1], c)


def grid_reverse(windows: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    x = windows.view(-1, h // grid[0], w // grid[1], grid[0], grid[1], windows.shape[-1])
    return x.permute(0, 3, 1, 4, 2, 5).reshape(-1, h, w, windows.shape[-1])


class AttentionCl(nn.Module):
    """Multi-head self-attention over channels-last windows (B', wh, ww, C), with RelPosBiasTf.

    The qkv channels are ordered (3, heads, head_dim), the TF weights' interleaving.
    """

    def __init__(self, dim: int, window: tuple[int, int], dim_head: int = 32, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % dim_head:
            raise SettingError(f"dim {dim} is not divisible by the head width {dim_head}")
        self.num_heads = dim // dim_head
        self.dim_head = dim_head
        self.qkv = nn.Linear(dim, dim * 3)
        self.rel_pos = RelPosBiasTf(window, self.num_heads)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        restore_shape = x.shape[:-1]
        # (B', wh, ww, 3C) -> (B', area, 3, heads, d) -> 3 x (B', heads, area, d)
        qkv = self.qkv(x).reshape(x.shape[0], -1, 3, self.num_heads, self.dim_head)
        q, k, v = qkv.transpose(1, 3).unbind(2)
        # a 4-D mask keeps SDPA on its fused CPU kernel (3-D masks take the unfused path)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel_pos.get_bias().unsqueeze(0),
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(*restore_shape, -1)  # (B', heads, area, d) -> (B', wh, ww, C)
        return self.proj_drop(self.proj(x))


class PartitionAttentionCl(nn.Module):
    """Block or grid partition -> attention -> MLP, pre-norm with residuals, on (N, H, W, C)."""

    def __init__(self, dim: int, partition_type: str, partition_size: tuple[int, int], drop_path: float = 0.0,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if partition_type not in ("block", "grid"):
            raise SettingError(f"partition_type must be 'block' or 'grid', got {partition_type!r}")
        self.partition_block = partition_type == "block"
        self.partition_size = partition_size
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = AttentionCl(dim, partition_size, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = nn.Identity()  # no layer scale in the TF configuration
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * 4, act_layer=gelu_tanh, drop=proj_drop)
        self.ls2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[1], x.shape[2])
        if self.partition_block:
            return window_reverse(self.attn(window_partition(x, self.partition_size)), self.partition_size, size)
        return grid_reverse(self.attn(grid_partition(x, self.partition_size)), self.partition_size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self._partition_attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class MaxxVitBlock(nn.Module):
    """MBConv, then block attention, then grid attention (the MaxViT block)."""

    def __init__(self, dim: int, dim_out: int, partition_size: tuple[int, int], stride: int = 1,
                 drop_path: float = 0.0, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.conv = MbConvBlock(dim, dim_out, stride=stride, drop_path=drop_path)
        attn_args = dict(partition_size=partition_size, drop_path=drop_path, attn_drop=attn_drop, proj_drop=proj_drop)
        self.attn_block = PartitionAttentionCl(dim_out, "block", **attn_args)
        self.attn_grid = PartitionAttentionCl(dim_out, "grid", **attn_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C) for the attention layers
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)  # back to (N, C, H, W)


class MaxxVitStage(nn.Module):
    """MaxViT blocks, the first of which halves the resolution."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, partition_size: tuple[int, int],
                 drop_path_rates: list[float], attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            MaxxVitBlock(in_chs if i == 0 else out_chs, out_chs, partition_size, stride=2 if i == 0 else 1,
                         drop_path=drop_path_rates[i], attn_drop=attn_drop, proj_drop=proj_drop)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, x, checkpointed=self.grad_checkpointing)


class Stem(nn.Module):
    """3x3 stride-2 conv -> BN-GELU -> 3x3 conv."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv1 = create_conv2d(in_chs, out_chs, 3, stride=2, bias=True, padding="same")
        self.norm1 = BatchNormAct2d(out_chs, eps=BN_EPS_TF, act_layer=gelu_tanh)
        self.conv2 = create_conv2d(out_chs, out_chs, 3, stride=1, bias=True, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


@dataclass(frozen=True)
class MaxVitConfig:
    """MaxViT: Tu, Talebi, Zhang, Yang, Milanfar, Bovik and Li, 2022, "MaxViT: Multi-Axis Vision Transformer"."""

    embed_dim: tuple[int, int, int, int]  # channels per stage
    depths: tuple[int, int, int, int]  # blocks per stage
    stem_width: int = 64
    head_hidden_size: int | None = None  # a tanh hidden layer before the classifier
    img_size: int = 224  # sets the window and grid size (img_size / 32); a multiple of 32


class MaxVit(nn.Module):
    """MaxViT (Tu et al., 2022, "MaxViT: Multi-Axis Vision Transformer"), TF configuration."""

    def __init__(self, config: MaxVitConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0):
        super().__init__()
        if config.img_size % PARTITION_RATIO or config.img_size <= 0:
            raise SettingError(f"MaxViT needs img_size to be a positive multiple of {PARTITION_RATIO} (the window "
                             f"is img_size / {PARTITION_RATIO}), got {config.img_size}; try "
                             f"{max(PARTITION_RATIO, round(config.img_size / PARTITION_RATIO) * PARTITION_RATIO)}")
        self.config = config
        self.num_classes = num_classes
        partition = config.img_size // PARTITION_RATIO
        partition_size = (partition, partition)

        self.stem = Stem(in_chans, config.stem_width)
        self.feature_info = [FeatureInfo("stem", config.stem_width, 2)]
        rates = stochastic_depth_rates(drop_path_rate, config.depths)
        stages, in_chs = [], config.stem_width
        for index, (depth, out_chs) in enumerate(zip(config.depths, config.embed_dim)):
            stages.append(MaxxVitStage(in_chs, out_chs, depth, partition_size, rates[index],
                                       attn_drop=attn_drop_rate, proj_drop=proj_drop_rate))
            self.feature_info.append(FeatureInfo(f"stages.{index}", out_chs, 2 ** (index + 2)))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)

        self.num_features = in_chs
        self.head = NormMlpClassifierHead(self.num_features, num_classes, hidden_size=config.head_hidden_size,
                                          drop_rate=drop_rate, norm_layer=partial(LayerNorm2d, eps=LN_EPS))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.config.img_size, self.config.img_size):
            raise SettingError(f"input size {x.shape[-2]}x{x.shape[-1]} does not match img_size {self.config.img_size}; "
                             f"build the model with img_size={x.shape[-1]} (a multiple of {PARTITION_RATIO})")
        x = self.stem(x)
        return self.stages(x)  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, MaxVitConfig] = {
    "maxvit_tiny_tf_224": MaxVitConfig((64, 128, 256, 512), (2, 2, 5, 2), head_hidden_size=512),
    "maxvit_small_tf_224": MaxVitConfig((96, 192, 384, 768), (2, 2, 5, 2), head_hidden_size=768),
    "maxvit_base_tf_224": MaxVitConfig((96, 192, 384, 768), (2, 6, 14, 2), head_hidden_size=768),
    "maxvit_large_tf_224": MaxVitConfig((128, 256, 512, 1024), (2, 6, 14, 2), stem_width=128,
                                        head_hidden_size=1024),
}

# The CAM reads the last stage: stages keep (N, C, H, W) between the block and grid attention.
register_family(VARIANTS, family="maxvit", paper="MaxViT: Multi-Axis Vision Transformer", year=2022, builder=MaxVit,
                recipe_style="vit", cam_layer=CamLayer("stages.-1"),
                lora_targets=LoraTargets(r"stages\.\d+\.blocks\.\d+\.attn_(block|grid)\.attn\.(qkv|proj)",
                                         r"stages\.\d+\.blocks\.\d+\.attn_(block|grid)\.mlp\.(fc1|fc2)"))
