"""Multi-head self-attention (Vaswani et al., 2017, "Attention Is All You Need"), as used by ViT and CLIP."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence (N, L, C), computed by
    `F.scaled_dot_product_attention` so PyTorch picks the fused (flash / memory-efficient) kernel.

    One `qkv` linear projects to queries, keys and values at once, and `proj` mixes the heads;
    the names are timm's, so its weights load unchanged. `qk_norm=True` normalises queries and
    keys per head (`q_norm`, `k_norm`) before the dot product, which keeps large models stable.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, head_dim: int | None = None):
        super().__init__()
        if head_dim is None:
            if dim % num_heads != 0:
                raise SettingError(f"dim {dim} is not divisible by num_heads {num_heads}; "
                                 "pick a head count that divides it or pass head_dim")
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.attn_drop = attn_drop  # a probability: SDPA applies it to the attention weights
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias)
        self.q_norm = norm_layer(head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """`attn_mask` (boolean: True attends; or additive float) broadcasts to (N, heads, L, L);
        `is_causal=True` lets each token attend to itself and earlier tokens only (text towers)."""
        batch, length, _ = x.shape
        # (N, L, 3 * heads * head_dim) -> (3, N, heads, L, head_dim)
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, length, self.attn_dim)  # (N, heads, L, d) -> (N, L, heads * d)
        return self.proj_drop(self.proj(x))
