"""Swin Transformer.

Liu et al., 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows".

Module names follow timm's `swin_transformer.py` so that published weights load with
strict=True. As there, tensors stay channels-last (N, H, W, C) from the patch embedding to
the final norm; `feature_info` marks the stage outputs as channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.checkpoint import run_blocks
from visionzoo.layers.classifier import ClassifierHead
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.init import init_linears_trunc_normal_
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pos_embed_rel import relative_position_index
from visionzoo.layers.window import window_partition, window_reverse
from visionzoo.registry import CamLayer, LoraTargets, register_family


def shifted_window_mask(height: int, width: int, window_size: tuple[int, int], shift_size: tuple[int, int],
                        dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
    """(num_windows, area, area) additive mask for attention in cyclically shifted windows.

    After the shift, a window at the bottom or right edge holds tokens from up to three
    regions per axis that were not neighbours in the image; tokens attend only within their
    own region. `height` and `width` are the padded map size (multiples of the window).
    Built by comparisons on `arange`, not by assigning slices in a loop, with the same
    -100 fill as the reference.
    """
    def region(length: int, window: int, shift: int) -> torch.Tensor:
        position = torch.arange(length, device=device)
        if shift == 0:  # no shift along this axis: one region
            return torch.zeros_like(position)
        return (position >= length - window).long() + (position >= length - shift).long()  # 0, 1 or 2

    ids = region(height, window_size[0], shift_size[0])[:, None] * 3 + region(width, window_size[1], shift_size[1])
    windows = window_partition(ids[None, :, :, None], window_size).flatten(1)  # (num_windows, area)
    different = windows[:, None, :] != windows[:, :, None]  # (num_windows, area, area)
    return torch.zeros(different.shape, dtype=dtype, device=device).masked_fill(different, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    The bias (and the shifted-window mask) go to `F.scaled_dot_product_attention` as its
    additive `attn_mask`.
    """

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise SettingError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        win_h, win_w = window_size
        self.window_area = win_h * win_w
        # Table of one bias per relative offset and head; the index picks one entry per token pair.
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_h - 1) * (2 * win_w - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(win_h, win_w), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def relative_position_bias(self) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index]  # (area, area, heads)
        return bias.permute(2, 0, 1)  # (heads, area, area)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N * num_windows, area, C); mask: (num_windows, area, area) or None."""
        batch_windows, area, channels = x.shape
        # (B', area, 3C) -> (3, B', heads, area, head_dim)
        qkv = self.qkv(x).reshape(batch_windows, area, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # 4-D from the start: SDPA's fused CPU kernel takes only 4-D masks (a 3-D one falls back to
        # the slower unfused path)
        attn_mask = self.relative_position_bias().unsqueeze(0)  # (1, heads, area, area)
        if mask is not None:
            num_windows = mask.shape[0]
            attn_mask = attn_mask + mask[:, None]  # (nW, heads, area, area)
            # repeated over the batch, (N * nW, heads, area, area): SDPA's fused kernels take 4-D inputs only
            attn_mask = attn_mask.expand(batch_windows // num_windows, -1, -1, -1, -1).flatten(0, 1)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch_windows, area, channels)  # (B', heads, area, d) -> (B', area, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention and an MLP, each pre-norm with a residual connection.

    Where the feature map is no larger than the window, the window shrinks to the map and
    is not shifted, as in the reference (the last stage at 224x224 is one 7x7 window).
    """

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int,
                 window_size: tuple[int, int], shift: bool, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 dynamic_mask: bool = False):
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = tuple(min(r, w) for r, w in zip(input_resolution, window_size))
        self.shift_size = tuple(0 if r <= w or not shift else w // 2 for r, w in zip(input_resolution, window_size))
        self.dynamic_mask = dynamic_mask

        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

        mask = None
        if any(self.shift_size) and not dynamic_mask:
            padded = [-(-r // w) * w for r, w in zip(input_resolution, self.window_size)]
            mask = shifted_window_mask(*padded, self.window_size, self.shift_size, dtype=self.norm1.weight.dtype)
        self.register_buffer("attn_mask", mask, persistent=False)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        if any(self.shift_size):
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        # pad the map to whole windows (bottom and right)
        pad_h = -h % self.window_size[0]
        pad_w = -w % self.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = h + pad_h, w + pad_w

        mask = self.attn_mask
        if any(self.shift_size) and self.dynamic_mask:
            mask = shifted_window_mask(padded_h, padded_w, self.window_size, self.shift_size,
                                       dtype=x.dtype, device=x.device)
        windows = window_partition(x, self.window_size).flatten(1, 2)  # (N * nW, area, C)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, *self.window_size, c), self.window_size, (padded_h, padded_w))
        x = x[:, :h, :w, :]
        if any(self.shift_size):
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenates each 2x2 neighbourhood (4C channels), normalises, and projects to `out_dim`."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # odd sizes: pad one row / column
        h, w = x.shape[1:3]
        # (N, H, W, C) -> (N, H/2, W/2, 2 (col), 2 (row), C) -> (N, H/2, W/2, 4C), the reference's channel order
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinTransformerStage(nn.Module):
    """Patch merging (all stages but the first), then blocks alternating plain and shifted windows."""

    def __init__(self, dim: int, out_dim: int, output_resolution: tuple[int, int], depth: int, downsample: bool,
                 num_heads: int, window_size: tuple[int, int], mlp_ratio: float, drop_path_rates: list[float],
                 proj_drop: float = 0.0, attn_drop: float = 0.0, dynamic_mask: bool = False):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(out_dim, output_resolution, num_heads, window_size, shift=i % 2 == 1,
                                 mlp_ratio=mlp_ratio, proj_drop=proj_drop, attn_drop=attn_drop,
                                 drop_path=drop_path_rates[i], dynamic_mask=dynamic_mask)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return run_blocks(self.blocks, x, checkpointed=self.grad_checkpointing)


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer: Liu, Lin, Cao, Hu, Wei, Zhang, Lin and Guo, 2021, "Swin Transformer: Hierarchical
    Vision Transformer using Shifted Windows"."""

    embed_dim: int  # channels of the first stage; each later stage doubles them
    depths: tuple[int, ...]  # blocks per stage
    num_heads: tuple[int, ...]  # attention heads per stage
    window_size: int = 7  # tokens per window side
    img_size: int = 224  # the input size the window masks are built for
    patch_size: int = 4
    mlp_ratio: float = 4.0


class SwinTransformer(nn.Module):
    """Swin Transformer (Liu et al., 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows").

    Inputs must be `config.img_size` square, unless `dynamic_img_size=True`, which rebuilds
    the shifted-window masks for each input size.
    """

    def __init__(self, config: SwinConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.1, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, dynamic_img_size: bool = False):
        # drop_path_rate defaults to 0.1 as in the reference (the paper's Swin-T setting).
        super().__init__()
        if len(config.depths) != len(config.num_heads):
            raise SettingError(f"depths {config.depths} and num_heads {config.num_heads} must have one entry per stage")
        if config.img_size < config.patch_size:
            raise SettingError(f"img_size {config.img_size} is smaller than patch_size {config.patch_size}")
        self.config = config
        self.num_classes = num_classes
        num_stages = len(config.depths)
        dims = [config.embed_dim * 2**i for i in range(num_stages)]

        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, in_chans, dims[0],
                                      norm_layer=nn.LayerNorm, output_fmt="NHWC",
                                      strict_img_size=not dynamic_img_size)
        grid = config.img_size // config.patch_size
        window = (config.window_size, config.window_size)
        rates = stochastic_depth_rates(drop_path_rate, config.depths)
        stages, self.feature_info = [], []
        in_dim = dims[0]
        for index in range(num_stages):
            side = -(-grid // 2**index)  # ceil: patch merging pads odd maps
            stages.append(SwinTransformerStage(
                in_dim, dims[index], (side, side), config.depths[index], downsample=index > 0,
                num_heads=config.num_heads[index], window_size=window, mlp_ratio=config.mlp_ratio,
                drop_path_rates=rates[index], proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                dynamic_mask=dynamic_img_size))
            self.feature_info.append(FeatureInfo(f"layers.{index}", dims[index], config.patch_size * 2**index,
                                                 channels_last=True))
            in_dim = dims[index]
        self.layers = nn.Sequential(*stages)

        self.num_features = in_dim
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate=drop_rate, input_fmt="NHWC")
        self._init_weights()

    def _init_weights(self) -> None:
        init_linears_trunc_normal_(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (N, H/4, W/4, C)
        x = self.layers(x)
        return self.norm(x)  # (N, H/32, W/32, num_features), channels-last

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def channels_last_to_map(x: torch.Tensor, model: nn.Module, image_size: tuple[int, int]) -> torch.Tensor:
    """The CAM reshape of a stage's output: (N, h, w, C) -> (N, C, h, w)."""
    return x.permute(0, 3, 1, 2)


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, SwinConfig] = {
    "swin_tiny_patch4_window7_224": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small_patch4_window7_224": SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base_patch4_window7_224": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_large_patch4_window7_224": SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48)),
    "swin_base_patch4_window12_384": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), window_size=12, img_size=384),
}

register_family(VARIANTS, family="swin",
                paper="Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", year=2021,
                builder=SwinTransformer, recipe_style="vit",
                cam_layer=CamLayer("layers.-1", channels_last_to_map),  # the last stage's output, channels-last
                lora_targets=LoraTargets(r"layers\.\d+\.blocks\.\d+\.attn\.(qkv|proj)",
                                         r"layers\.\d+\.blocks\.\d+\.mlp\.(fc1|fc2)"))
