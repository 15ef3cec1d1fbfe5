"""SigLIP 2 image towers.

Tschannen et al., 2025, "SigLIP 2: Multilingual Vision-Language Encoders with Improved Semantic
Understanding, Localization, and Dense Features"; the tower is SigLIP's (Zhai et al., 2023,
"Sigmoid Loss for Language Image Pre-Training").

A plain ViT (learned absolute position embeddings, pre-norm blocks, a final LayerNorm) with no
class token: the image embedding is read by multi-head attention pooling (MAP, Lee et al., 2019,
"Set Transformer"; Zhai et al., 2022, "Scaling Vision Transformers"): one learned query attends
to every patch token, and a residual MLP follows. SO400M is the shape-optimised ViT of
Alabdulmohsin et al., 2023 ("Getting ViT in Shape"): width 1152, depth 27, MLP 4304.

The towers are published as backbones: the pooled 768 / 1024 / 1152-wide vector is the image
embedding that the sigmoid loss compares with the text tower's.

Module names follow timm's `vision_transformer.py` (`attn_pool.latent`, `attn_pool.q`,
`attn_pool.kv`, ...), so its SigLIP weights load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.layers.checkpoint import run_blocks
from visionzoo.layers.drop import stochastic_depth_rates
from visionzoo.layers.init import init_linears_trunc_normal_
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pool import make_classifier
from visionzoo.models.vit import VIT_CAM_LAYER, VIT_LORA_TARGETS, Block
from visionzoo.registry import VariantExtras, register_family


class AttentionPoolLatent(nn.Module):
    """Multi-head attention pooling (MAP): a learned `latent` query attends to the tokens, then
    x + mlp(norm(x)) as in a transformer block. (N, L, C) -> (N, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float):
        super().__init__()
        if dim % num_heads:
            raise SettingError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q = self.q(self.latent).reshape(1, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (1, heads, 1, d)
        # (N, L, 2 * C) -> (2, N, heads, L, d)
        k, v = self.kv(x).reshape(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q.expand(batch, -1, -1, -1), k, v)  # (N, heads, 1, d)
        x = self.proj(x.transpose(1, 2).reshape(batch, 1, dim))  # (N, heads, 1, d) -> (N, 1, C)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


@dataclass(frozen=True)
class SigLipConfig:
    """SigLIP 2: Tschannen et al., 2025, "SigLIP 2: Multilingual Vision-Language Encoders with Improved Semantic
    Understanding, Localization, and Dense Features". Image tower as in SigLIP (Zhai et al., 2023, "Sigmoid
    Loss for Language Image Pre-Training")."""

    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 224  # the (square) input size the position embeddings are learned for
    patch_size: int = 16
    mlp_ratio: float = 4.0  # also the MAP head's MLP
    norm_eps: float = 1e-6


class SigLipVisionTransformer(nn.Module):
    """SigLIP 2 image tower (Tschannen et al., 2025): a ViT without class token, pooled by attention (MAP)."""

    def __init__(self, config: SigLipConfig, *, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.num_features = self.embed_dim = dim = config.embed_dim
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)

        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = stochastic_depth_rates(drop_path_rate, [config.depth])[0]
        self.blocks = nn.Sequential(*[
            Block(dim, config.num_heads, config.mlp_ratio, qkv_bias=True, proj_drop=proj_drop_rate,
                  attn_drop=attn_drop_rate, drop_path=rate, norm_layer=norm_layer)
            for rate in rates
        ])
        self.norm = norm_layer(dim)
        self.attn_pool = AttentionPoolLatent(dim, config.num_heads, config.mlp_ratio, config.norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = make_classifier(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        init_linears_trunc_normal_(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.attn_pool.latent, std=self.embed_dim**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = make_classifier(self.num_features, num_classes).to(self.pos_embed.device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> normalised patch tokens (N, H/p * W/p, C)."""
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        x = run_blocks(self.blocks, x, checkpointed=self.grad_checkpointing)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.attn_pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

_BASE = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16)
# SO400M: the MLP is 4304 wide, int(1152 * 3.7362)
_SO400M = dict(embed_dim=1152, depth=27, num_heads=16, patch_size=14, mlp_ratio=3.7362)

VARIANTS: dict[str, SigLipConfig] = {
    "vit_base_patch16_siglip_224": SigLipConfig(**_BASE, img_size=224),
    "vit_base_patch16_siglip_256": SigLipConfig(**_BASE, img_size=256),
    "vit_large_patch16_siglip_256": SigLipConfig(**_LARGE, img_size=256),
    "vit_so400m_patch14_siglip_224": SigLipConfig(**_SO400M, img_size=224),
}

# Image towers: the pooled embedding is the output, no classifier.
_TOWER = VariantExtras(num_classes=0)

# ViT blocks under the same names (blocks.N.attn.qkv / proj, mlp.fc1 / fc2, norm1): the ViT's CAM layer
# and LoRA targets hold; there are no prefix tokens to drop. The MAP head is left out of LoRA, as
# the patterns name the blocks only.
register_family(
    VARIANTS, family="siglip2",
    paper=("SigLIP 2: Multilingual Vision-Language Encoders with Improved Semantic Understanding, "
           "Localization, and Dense Features"),
    year=2025, builder=SigLipVisionTransformer, recipe_style="vit", cam_layer=VIT_CAM_LAYER,
    lora_targets=VIT_LORA_TARGETS, extras={name: _TOWER for name in VARIANTS})
