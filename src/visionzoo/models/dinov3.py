"""DINOv3.

Siméoni et al., 2025, "DINOv3".

The self-supervised successor of DINOv2: a plain pre-norm ViT at patch 16 whose blocks differ
from DINOv2's in one place, where the position comes in:

- no learned absolute position embedding: every block rotates queries and keys by a 2-D rotary
  embedding (RoPE) of the patch's position. Positions are the patch centres normalised to
  [-1, 1] on each axis, so the model sees the same angular range at any input size and runs at
  any size divisible by 16 without resampling a table;
- a class token and four register tokens (Darcet et al., 2023), which carry no position and
  are not rotated;
- LayerScale on both residual branches (initialised at 1e-5), and LayerNorm eps 1e-5.

The published ViT-S/B/L backbones have no classifier. Like timm, the pooled feature is the
mean of the normalised patch tokens (`global_pool="avg"`); the paper reads the class token,
`global_pool="token"`.

Module names follow timm's `eva.py` (`gamma_1` / `gamma_2` for the layer scales, `reg_token`,
`attn.qkv`), so its DINOv3 weights load with strict=True.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from visionzoo.errors import SettingError
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.init import init_linears_trunc_normal_
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pool import make_classifier
from visionzoo.models.vit import VIT_CAM_LAYER, VIT_LORA_TARGETS
from visionzoo.registry import VariantExtras, register_family

GLOBAL_POOLS = ("avg", "token")


# --- rotary position embedding -------------------------------------------------------------


class RotaryEmbeddingDinov3(nn.Module):
    """DINOv3's axial 2-D rotary position embedding (Su et al., 2021, "RoFormer", on an image grid).

    Each patch's centre is normalised to [-1, 1] along rows and along columns; a quarter of each
    head's channel pairs turn with the row coordinate and a quarter with the column, at periods
    `temperature ** (2 i / (head_dim / 2))`, i < head_dim / 4. The table is laid out for the
    "rotate half" form (channel j pairs with j + head_dim / 2), not EVA-02's interleaved pairs.

    Computed in `forward` from the patch grid rather than stored, as in EVA-02: it costs little,
    follows any input size, and stays correct for a model built on the `meta` device.
    """

    def __init__(self, head_dim: int, temperature: float = 100.0):
        super().__init__()
        if head_dim % 4:
            raise SettingError(f"rotary embedding needs head_dim divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.temperature = temperature

    def forward(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(sin, cos) for every patch of `grid`, concatenated: (H*W, 2 * head_dim)."""
        num_bands = self.head_dim // 4
        exponents = torch.arange(num_bands, dtype=torch.float32) * (2.0 / (self.head_dim // 2))
        periods = self.temperature ** exponents
        # patch centres, (i + 0.5) / size, mapped from [0, 1] to [-1, 1]
        axes = [torch.arange(0.5, size, dtype=torch.float32) / size for size in grid]
        coords = 2.0 * torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1) - 1.0  # (H, W, 2): row, column
        coords = coords.flatten(0, 1)  # (H*W, 2)
        angles = (2 * math.pi * coords.unsqueeze(-1) / periods).flatten(1)  # (H*W, 2 * bands): row bands, column bands
        angles = torch.cat([angles, angles], dim=-1)  # (H*W, head_dim / 2) -> (H*W, head_dim): the two halves
        return torch.cat([angles.sin(), angles.cos()], dim=-1).to(device)


def apply_rotary_half(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate channel j of `x` (..., L, head_dim) with channel j + head_dim / 2, by its position's angle."""
    sin, cos = rope.chunk(2, dim=-1)
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)  # [x0 .. x(d/2-1), x(d/2) ..] -> [-x(d/2) .., x0 ..]
    return (x * cos + rotated * sin).to(x.dtype)


# --- block ---------------------------------------------------------------------------------


class RopeAttention(nn.Module):
    """Self-attention whose queries and keys of the patch tokens (not the class and register
    tokens) are rotated by the rotary embedding. One `qkv` projection without bias."""

    def __init__(self, dim: int, num_heads: int, num_prefix_tokens: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise SettingError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        # (N, L, 3 * C) -> (3, N, heads, L, d)
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        prefix = self.num_prefix_tokens
        q = torch.cat([q[:, :, :prefix], apply_rotary_half(q[:, :, prefix:], rope)], dim=2)
        k = torch.cat([k[:, :, :prefix], apply_rotary_half(k[:, :, prefix:], rope)], dim=2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, length, dim)  # (N, heads, L, d) -> (N, L, C)
        return self.proj_drop(self.proj(x))


class Dinov3Block(nn.Module):
    """Pre-norm block: x + gamma_1 * attn(norm1(x)) with RoPE, then x + gamma_2 * mlp(norm2(x)).

    The layer scales are bare parameters on the block (`gamma_1`, `gamma_2`) rather than
    `LayerScale` modules as in our ViT: that is the layout of timm's DINOv3 weights.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float, num_prefix_tokens: int,
                 norm_eps: float, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = RopeAttention(dim, num_heads, num_prefix_tokens, attn_drop=attn_drop, proj_drop=proj_drop)
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.gamma_2 = nn.Parameter(torch.full((dim,), init_values))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.gamma_1 * self.attn(self.norm1(x), rope))
        return x + self.drop_path2(self.gamma_2 * self.mlp(self.norm2(x)))


# --- network -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dinov3Config:
    """DINOv3: Siméoni, Vo, Seitzer, Baldassarre, Oquab et al., 2025, "DINOv3"."""

    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 256  # the pretraining resolution; any size divisible by patch_size runs
    patch_size: int = 16
    mlp_ratio: float = 4.0
    reg_tokens: int = 4  # register tokens after the class token
    init_values: float = 1e-5  # LayerScale initial value
    rope_temperature: float = 100.0  # longest rotary period, in units of the [-1, 1] image span
    norm_eps: float = 1e-5


class Dinov3(nn.Module):
    """DINOv3 (Siméoni et al., 2025): a ViT with rotary position embedding, register tokens and LayerScale.

    Accepts any input whose sides divide by the patch size (the rotary table follows the grid).
    `global_pool` is "avg" (mean of the normalised patch tokens, timm's default) or "token" (the
    normalised class token, as the paper reads it).
    """

    def __init__(self, config: Dinov3Config, *, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "avg"):
        super().__init__()
        self._check_global_pool(global_pool)
        self.config = config
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = dim = config.embed_dim
        self.num_prefix_tokens = 1 + config.reg_tokens
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, in_chans, dim, output_fmt="NHWC",
                                      strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, config.reg_tokens, dim))
        self.rope = RotaryEmbeddingDinov3(dim // config.num_heads, temperature=config.rope_temperature)

        rates = stochastic_depth_rates(drop_path_rate, [config.depth])[0]
        self.blocks = nn.ModuleList(
            Dinov3Block(dim, config.num_heads, config.mlp_ratio, config.init_values, self.num_prefix_tokens,
                        config.norm_eps, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = make_classifier(dim, num_classes)
        self._init_weights()

    @staticmethod
    def _check_global_pool(global_pool: str) -> None:
        if global_pool not in GLOBAL_POOLS:
            raise SettingError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")

    def _init_weights(self) -> None:
        init_linears_trunc_normal_(self)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.reg_token, std=0.02)
        # Residual branches scaled down with depth (BEiT's rescale, kept by timm's port).
        with torch.no_grad():
            for index, block in enumerate(self.blocks):
                block.attn.proj.weight.div_((2.0 * (index + 1)) ** 0.5)
                block.mlp.fc2.weight.div_((2.0 * (index + 1)) ** 0.5)
            if isinstance(self.head, nn.Linear):
                self.head.weight.mul_(0.001)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self._check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = make_classifier(self.num_features, num_classes).to(self.cls_token.device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> normalised tokens (N, 1 + registers + H/16 * W/16, C)."""
        x = self.patch_embed(x)  # (N, H', W', C)
        batch, height, width, channels = x.shape
        rope = self.rope((height, width), x.device)
        x = x.reshape(batch, height * width, channels)  # (N, H', W', C) -> (N, L, C)
        prefix = [self.cls_token.expand(batch, -1, -1), self.reg_token.expand(batch, -1, -1)]
        x = torch.cat(prefix + [x], dim=1)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Token sequence (N, prefix + L, C) -> (N, C)."""
        if self.global_pool == "token":
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, Dinov3Config] = {
    "vit_small_patch16_dinov3": Dinov3Config(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_dinov3": Dinov3Config(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_dinov3": Dinov3Config(embed_dim=1024, depth=24, num_heads=16),
}

# Published as backbones, without a classifier.
_BACKBONE = VariantExtras(num_classes=0)

# The module names of a ViT block (attn.qkv / attn.proj, mlp.fc1 / mlp.fc2, norm1), so the ViT's
# CAM layer and LoRA targets hold; the CAM layer's `tokens_to_map` drops the five prefix tokens.
register_family(
    VARIANTS, family="dinov3", paper="DINOv3", year=2025, builder=Dinov3, recipe_style="vit",
    cam_layer=VIT_CAM_LAYER, lora_targets=VIT_LORA_TARGETS, extras={name: _BACKBONE for name in VARIANTS})
