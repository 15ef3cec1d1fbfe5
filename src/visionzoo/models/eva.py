"""EVA-02.

Fang et al., 2023, "EVA-02: A Visual Representation for Neon Genesis".

A plain ViT (class token, learned absolute position embeddings, average pooling with a
final LayerNorm) with three changes from the paper's "TrV" block:

- 2-D rotary position embedding (RoPE) on queries and keys in every block, on top of the
  absolute embedding;
- a SwiGLU MLP with hidden width 8/3 of the embedding, so it costs what a GELU MLP of width 4 does;
- in Base and Large, a sub-LayerNorm inside the MLP (before its output projection) and
  separate q / k / v projections.

Module names follow timm's `eva.py`, so published weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.feature_map import tokens_to_map
from visionzoo.layers.init import init_linears_trunc_normal_
from visionzoo.layers.mlp import GluMlp, SwiGLU
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pool import make_classifier
from visionzoo.registry import CamLayer, LoraTargets, VariantExtras, register_family

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


# --- rotary position embedding -------------------------------------------------------------


class RotaryEmbedding2d(nn.Module):
    """Axial 2-D rotary position embedding, as EVA-02 uses it (Su et al., 2021, "RoFormer").

    Half of each head's channels rotate with the row index, half with the column index, at the
    frequencies `temperature ** (-i / (head_dim / 4))`. Positions are rescaled so that the grid
    spans `ref_grid` (the pretraining grid, 16x16): a model fine-tuned at 448 px sees the same
    angular range it saw at 224 px.

    The table is computed in `forward` from the patch grid rather than stored: it is a few
    hundred kilobytes of sin / cos, cheap to make, and computing it keeps the model correct when
    built on the `meta` device and later materialised (a buffer would hold garbage then).
    """

    def __init__(self, head_dim: int, ref_grid: tuple[int, int] = (16, 16), temperature: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise SettingError(f"rotary embedding needs head_dim divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.ref_grid = ref_grid
        self.temperature = temperature

    def forward(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(sin, cos) for every patch of `grid`, concatenated: (H*W, 2 * head_dim)."""
        num_bands = self.head_dim // 4
        exponent = torch.arange(num_bands, device=device, dtype=torch.float32) / num_bands
        bands = 1.0 / (self.temperature ** exponent)
        axes = [torch.arange(size, device=device, dtype=torch.float32) / size * ref
                for size, ref in zip(grid, self.ref_grid)]
        coords = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1)  # (H, W, 2): row, column
        angles = (coords.unsqueeze(-1) * bands).flatten(-2).flatten(0, 1)  # (H*W, 2 * bands)
        # each angle drives one (even, odd) channel pair: (H*W, head_dim / 2) -> (H*W, head_dim)
        angles = angles.repeat_interleave(2, dim=-1)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) channel pair of `x` (..., L, head_dim) by its position's angle."""
    sin, cos = rope.chunk(2, dim=-1)
    # [x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...]
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)
    return (x * cos + rotated * sin).to(x.dtype)


# --- block ---------------------------------------------------------------------------------


class EvaAttention(nn.Module):
    """Self-attention with rotary embedding on the patch tokens (not the class token).

    Queries and values have biases, keys none (a key bias adds the same logit to every key and
    cancels in the softmax). Tiny and Small fuse the three projections into `qkv` with separate
    `q_bias` / `v_bias` (the released checkpoints' layout); Base and Large keep `q_proj`,
    `k_proj`, `v_proj` apart.
    """

    def __init__(self, dim: int, num_heads: int, qkv_fused: bool = True, num_prefix_tokens: int = 1,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise SettingError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.attn_drop = attn_drop
        if qkv_fused:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_proj = nn.Linear(dim, dim)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim)
        self.qkv_fused = qkv_fused
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (N, heads, L, d)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        if self.qkv_fused:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            # (N, L, 3 * C) -> (3, N, heads, L, d)
            qkv = F.linear(x, self.qkv.weight, bias).reshape(batch, length, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if rope is not None:
            prefix = self.num_prefix_tokens
            q = torch.cat([q[:, :, :prefix], apply_rotary(q[:, :, prefix:], rope)], dim=2)
            k = torch.cat([k[:, :, :prefix], apply_rotary(k[:, :, prefix:], rope)], dim=2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, length, dim)  # (N, heads, L, d) -> (N, L, C)
        return self.proj_drop(self.proj(x))


class EvaBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)) with RoPE, then x + SwiGLU(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_fused: bool, sub_ln: bool,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = EvaAttention(dim, num_heads, qkv_fused=qkv_fused, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        if sub_ln:
            self.mlp = SwiGLU(dim, hidden, norm_layer=LayerNorm, drop=proj_drop)
        else:
            # One packed fc1, gate in the first half: the layout of the Tiny / Small checkpoints.
            self.mlp = GluMlp(dim, 2 * hidden, act_layer=nn.SiLU, gate_last=False, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), rope=rope))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


# --- network -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Eva02Config:
    """EVA-02: Fang, Sun, Wang, Huang, Wang and Cao, 2023, "EVA-02: A Visual Representation for Neon Genesis"."""

    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 224
    patch_size: int = 14
    mlp_ratio: float = 4 * 2 / 3  # SwiGLU at 8/3 width matches a GELU MLP at 4x in parameters
    qkv_fused: bool = True  # one qkv projection (Tiny, Small) or separate q / k / v (Base, Large)
    sub_ln: bool = False  # LayerNorm inside the MLP before fc2 (Base, Large)
    rope_ref_grid: tuple[int, int] = (16, 16)  # pretraining patch grid (224 / 14) the rope positions span


class Eva02(nn.Module):
    """EVA-02 (Fang et al., 2023): a ViT with rotary position embedding and SwiGLU MLPs."""

    def __init__(self, config: Eva02Config, *, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.num_features = self.embed_dim = dim = config.embed_dim
        self.num_prefix_tokens = 1

        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.rope = RotaryEmbedding2d(dim // config.num_heads, ref_grid=config.rope_ref_grid)

        rates = stochastic_depth_rates(drop_path_rate, [config.depth])[0]
        self.blocks = nn.ModuleList(
            EvaBlock(dim, config.num_heads, config.mlp_ratio, config.qkv_fused, config.sub_ln,
                     proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=rate)
            for rate in rates
        )
        # timm's `norm` after the blocks is an Identity when pooling by average: the norm is
        # `fc_norm`, applied to the pooled vector.
        self.fc_norm = LayerNorm(dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = make_classifier(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        init_linears_trunc_normal_(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # Residual branches scaled down with depth (BEiT's rescale), so deep stacks start stable.
        with torch.no_grad():
            for index, block in enumerate(self.blocks):
                block.attn.proj.weight.div_((2.0 * (index + 1)) ** 0.5)
                block.mlp.fc2.weight.div_((2.0 * (index + 1)) ** 0.5)
            if isinstance(self.head, nn.Linear):
                self.head.weight.mul_(0.001)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = make_classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_embed.patch_size[0], x.shape[-1] // self.patch_embed.patch_size[1])
        x = self.patch_embed(x)  # (N, H'*W', C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        rope = self.rope(grid, x.device)
        for block in self.blocks:
            x = block(x, rope=rope)
        return x  # (N, 1 + H'*W', C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1)  # average of the patch tokens
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12, qkv_fused=False, sub_ln=True)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, qkv_fused=False, sub_ln=True)

VARIANTS: dict[str, Eva02Config] = {
    "eva02_tiny_patch14_224": Eva02Config(**_TINY, img_size=224),
    "eva02_small_patch14_224": Eva02Config(**_SMALL, img_size=224),
    "eva02_base_patch14_224": Eva02Config(**_BASE, img_size=224),
    "eva02_large_patch14_224": Eva02Config(**_LARGE, img_size=224),
    "eva02_tiny_patch14_336": Eva02Config(**_TINY, img_size=336),
    "eva02_small_patch14_336": Eva02Config(**_SMALL, img_size=336),
    "eva02_base_patch14_448": Eva02Config(**_BASE, img_size=448),
    "eva02_large_patch14_448": Eva02Config(**_LARGE, img_size=448),
}

# The 224 px models are the masked-image-modelling pretrained backbones, published without a
# classifier; the others are ImageNet-1k fine-tunes.
_BACKBONE = VariantExtras(num_classes=0)

register_family(
    VARIANTS, family="eva02", paper="EVA-02: A Visual Representation for Neon Genesis", year=2023, builder=Eva02,
    recipe_style="vit", cam_layer=CamLayer("blocks.-1.norm1", tokens_to_map),  # see vit.VIT_CAM_LAYER
    lora_targets=LoraTargets(r"blocks\.\d+\.attn\.(q_proj|k_proj|v_proj|proj)", r"blocks\.\d+\.mlp\.(fc1_g|fc1_x|fc2)"),
    extras={"eva02_tiny_patch14_224": _BACKBONE, "eva02_small_patch14_224": _BACKBONE,
            "eva02_base_patch14_224": _BACKBONE, "eva02_large_patch14_224": _BACKBONE})
