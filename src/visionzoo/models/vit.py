"""Vision Transformer (Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale"), and the ViT configurations of DINOv2 and of CLIP's image towers.

The image is cut into patches, each patch is projected to a token, a learned class token (and,
for DINOv2 with registers, a few register tokens) is prepended, learned position embeddings are
added, and a stack of pre-norm transformer blocks follows. The class token (or the mean of the
patch tokens) is classified.

Variations carried as config fields rather than subclasses:
  * DINOv2 (Oquab et al., 2023): LayerScale on both residual branches, patch 14, a packed SwiGLU
    MLP in the giant model, and register tokens (Darcet et al., 2023) whose position is not embedded.
  * CLIP (Radford et al., 2021): a LayerNorm (`norm_pre`) between the embeddings and the blocks, no
    bias in the patch projection, LayerNorm eps 1e-5, and QuickGELU in OpenAI-trained towers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.layers.attention import Attention
from visionzoo.layers.checkpoint import run_blocks
from visionzoo.layers.drop import DropPath, stochastic_depth_rates
from visionzoo.layers.feature_map import tokens_to_map
from visionzoo.layers.init import init_linears_trunc_normal_
from visionzoo.layers.layer_scale import LayerScale
from visionzoo.layers.mlp import GluMlp, Mlp, QuickGELU
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pos_embed import resample_abs_pos_embed
from visionzoo.registry import CamLayer, LoraTargets, VariantExtras, register_family

__all__ = ["Block", "VIT_CAM_LAYER", "VIT_LORA_TARGETS", "VisionTransformer", "VisionTransformerConfig"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU, "silu": nn.SiLU}
GLOBAL_POOLS = ("token", "avg")


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each branch
    optionally scaled by LayerScale (`ls1`, `ls2`) and dropped by stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, init_values: float | None = None, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, mlp_layer: type[nn.Module] = Mlp):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                              proj_drop=proj_drop, norm_layer=norm_layer)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


@dataclass(frozen=True)
class VisionTransformerConfig:
    """Vision Transformer: Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words: Transformers for Image
    Recognition at Scale". Also DeiT (Touvron et al., 2021, "Training data-efficient image transformers &
    distillation through attention"), DINOv2 (Oquab et al., 2023, "DINOv2: Learning Robust Visual Features
    without Supervision") and CLIP's image towers (Radford et al., 2021, "Learning Transferable Visual
    Models From Natural Language Supervision")."""

    img_size: int = 224  # the (square) input size the position embeddings are learned for
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0  # MLP hidden width / embed_dim (both halves, for a gated MLP)
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None  # LayerScale initial value; None disables LayerScale
    class_token: bool = True
    reg_tokens: int = 0  # register tokens (DINOv2 "with registers")
    no_embed_class: bool = False  # position embeddings cover the patch tokens only, not the prefix tokens
    pre_norm: bool = False  # LayerNorm before the blocks, and no patch-projection bias (CLIP)
    norm_eps: float = 1e-6
    act: Literal["gelu", "quick_gelu", "silu"] = "gelu"
    mlp: Literal["mlp", "swiglu_packed"] = "mlp"  # "swiglu_packed": one fc1 holding gate and value (DINOv2-g)


class VisionTransformer(nn.Module):
    """Vision Transformer (Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words").

    Also DeiT's plain models (same network), DINOv2 and CLIP image towers, by config.

    `dynamic_img_size=True` accepts any input whose sides divide by the patch size, resampling the
    position embeddings (bicubic) to the input's patch grid on every forward; otherwise the input
    must be `config.img_size` (build with another `img_size` to change it once).
    `global_pool` is "token" (the class token) or "avg" (mean of the patch tokens, normalised after
    pooling by `fc_norm` instead of `norm`, as in timm).
    """

    def __init__(self, config: VisionTransformerConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, pos_drop_rate: float = 0.0, global_pool: str = "token",
                 dynamic_img_size: bool = False):
        super().__init__()
        self._check_global_pool(global_pool, config.class_token)
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = config.embed_dim
        self.num_prefix_tokens = int(config.class_token) + config.reg_tokens
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)
        act_layer = _ACTIVATIONS[config.act]
        mlp_layer = {"mlp": Mlp, "swiglu_packed": partial(GluMlp, gate_last=False)}[config.mlp]

        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, in_chans, config.embed_dim,
                                      bias=not config.pre_norm, output_fmt="NHWC" if dynamic_img_size else "NLC",
                                      strict_img_size=not dynamic_img_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if config.class_token else None
        self.reg_token = (nn.Parameter(torch.zeros(1, config.reg_tokens, config.embed_dim))
                          if config.reg_tokens else None)
        embed_len = num_patches + (0 if config.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, config.embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_pre = norm_layer(config.embed_dim) if config.pre_norm else nn.Identity()

        rates = stochastic_depth_rates(drop_path_rate, [config.depth])[0]
        self.blocks = nn.Sequential(*[
            Block(config.embed_dim, config.num_heads, config.mlp_ratio, qkv_bias=config.qkv_bias,
                  qk_norm=config.qk_norm, init_values=config.init_values, proj_drop=proj_drop_rate,
                  attn_drop=attn_drop_rate, drop_path=rates[i], act_layer=act_layer, norm_layer=norm_layer,
                  mlp_layer=mlp_layer)
            for i in range(config.depth)
        ])
        use_fc_norm = global_pool == "avg"
        self.norm = norm_layer(config.embed_dim) if not use_fc_norm else nn.Identity()
        self.fc_norm = norm_layer(config.embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(config.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = []  # a single-scale token sequence: no multi-scale stages to extract
        self._init_weights()

    @staticmethod
    def _check_global_pool(global_pool: str, class_token: bool) -> None:
        if global_pool not in GLOBAL_POOLS:
            raise SettingError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise SettingError("global_pool='token' needs a class token; this config has none, use global_pool='avg'")

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        init_linears_trunc_normal_(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool is not None:
            self._check_global_pool(global_pool, self.cls_token is not None)
            self.global_pool = global_pool  # the norm stays where it was built (`norm` or `fc_norm`)
        self.num_classes = num_classes
        device = self.pos_embed.device
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        tokens = [self.cls_token] if self.cls_token is not None else []
        if self.reg_token is not None:
            tokens.append(self.reg_token)
        return [t.expand(batch, -1, -1) for t in tokens]

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (N, L, C), or (N, H', W', C) with dynamic_img_size, to the embedded sequence
        (N, prefix + L, C)."""
        pos_embed = self.pos_embed
        if self.dynamic_img_size:
            batch, height, width, channels = x.shape
            pos_embed = resample_abs_pos_embed(
                pos_embed, (height, width), old_size=self.patch_embed.grid_size,
                num_prefix_tokens=0 if self.config.no_embed_class else self.num_prefix_tokens)
            x = x.reshape(batch, height * width, channels)  # (N, H', W', C) -> (N, L, C)
        prefix = self._prefix_tokens(x.shape[0])
        if self.config.no_embed_class:
            # the prefix tokens carry no position: add to the patches, then prepend (DINOv2 with registers)
            x = torch.cat(prefix + [x + pos_embed], dim=1)
        else:
            # the original ViT: the class token has its own position embedding
            x = torch.cat(prefix + [x], dim=1) + pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> normalised token sequence (N, prefix + L, embed_dim)."""
        x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        x = run_blocks(self.blocks, x, checkpointed=self.grad_checkpointing)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Token sequence (N, prefix + L, C) -> (N, C)."""
        if self.global_pool == "token":
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

_C = VisionTransformerConfig
_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16)
# DINOv2-g: a packed SwiGLU whose fc1 holds gate and value, 2 x 4096 wide (mlp_ratio 2 x 2.66667)
_GIANT_DINOV2 = dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=2.66667 * 2, mlp="swiglu_packed", act="silu")
_DINOV2_ARGS = dict(img_size=518, patch_size=14, init_values=1e-5)
_REG4 = dict(reg_tokens=4, no_embed_class=True)
_CLIP_ARGS = dict(pre_norm=True, norm_eps=1e-5)
_QUICK = dict(act="quick_gelu")

VARIANTS: dict[str, VisionTransformerConfig] = {
    "vit_tiny_patch16_224": _C(patch_size=16, **_TINY),
    "vit_small_patch16_224": _C(patch_size=16, **_SMALL),
    "vit_base_patch16_224": _C(patch_size=16, **_BASE),
    "vit_base_patch32_224": _C(patch_size=32, **_BASE),
    "vit_large_patch16_224": _C(patch_size=16, **_LARGE),
    "vit_base_patch16_384": _C(img_size=384, patch_size=16, **_BASE),
    "vit_small_patch14_dinov2": _C(**_DINOV2_ARGS, **_SMALL),
    "vit_base_patch14_dinov2": _C(**_DINOV2_ARGS, **_BASE),
    "vit_large_patch14_dinov2": _C(**_DINOV2_ARGS, **_LARGE),
    "vit_giant_patch14_dinov2": _C(**_DINOV2_ARGS, **_GIANT_DINOV2),
    "vit_small_patch14_reg4_dinov2": _C(**_DINOV2_ARGS, **_REG4, **_SMALL),
    "vit_base_patch14_reg4_dinov2": _C(**_DINOV2_ARGS, **_REG4, **_BASE),
    "vit_large_patch14_reg4_dinov2": _C(**_DINOV2_ARGS, **_REG4, **_LARGE),
    "vit_giant_patch14_reg4_dinov2": _C(**_DINOV2_ARGS, **_REG4, **_GIANT_DINOV2),
    "vit_base_patch32_clip_224": _C(patch_size=32, **_CLIP_ARGS, **_BASE),
    "vit_base_patch16_clip_224": _C(patch_size=16, **_CLIP_ARGS, **_BASE),
    "vit_large_patch14_clip_224": _C(patch_size=14, **_CLIP_ARGS, **_LARGE),
    "vit_base_patch32_clip_quickgelu_224": _C(patch_size=32, **_CLIP_ARGS, **_QUICK, **_BASE),
    "vit_base_patch16_clip_quickgelu_224": _C(patch_size=16, **_CLIP_ARGS, **_QUICK, **_BASE),
    "vit_large_patch14_clip_quickgelu_224": _C(patch_size=14, **_CLIP_ARGS, **_QUICK, **_LARGE),
}

# DINOv2 checkpoints are backbones: no classifier by default.
_DINOV2 = VariantExtras(family="dinov2", paper="DINOv2: Learning Robust Visual Features without Supervision",
                        year=2023, num_classes=0)
# CLIP image towers fine-tuned on ImageNet-1k keep a 1000-class head; the OpenAI-style (QuickGELU)
# ones keep the `head` as CLIP's image projection into the joint embedding (512 or 768 wide).
_CLIP = VariantExtras(family="clip", paper="Learning Transferable Visual Models From Natural Language Supervision",
                      year=2021)
_CLIP_512 = replace(_CLIP, num_classes=512)
_CLIP_768 = replace(_CLIP, num_classes=768)

# The CAM reads the last block's first norm, (N, prefix + h*w, C): its output feeds the class token's
# attention, so gradients reach every patch token even when the head reads the class token only (the
# layer pytorch-grad-cam's own ViT tutorial uses). DeiT, DINOv2 and CLIP, ViTs too, share it and the
# LoRA targets: the attention's qkv and output projections, and the MLP's two linears.
VIT_CAM_LAYER = CamLayer("blocks.-1.norm1", tokens_to_map)
VIT_LORA_TARGETS = LoraTargets(r"blocks\.\d+\.attn\.(qkv|proj)", r"blocks\.\d+\.mlp\.(fc1|fc2)")

register_family(
    VARIANTS, family="vit", paper="An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
    year=2020, builder=VisionTransformer, recipe_style="vit", cam_layer=VIT_CAM_LAYER, lora_targets=VIT_LORA_TARGETS,
    extras={
        "vit_small_patch14_dinov2": _DINOV2,
        "vit_base_patch14_dinov2": _DINOV2,
        "vit_large_patch14_dinov2": _DINOV2,
        "vit_giant_patch14_dinov2": _DINOV2,
        "vit_small_patch14_reg4_dinov2": _DINOV2,
        "vit_base_patch14_reg4_dinov2": _DINOV2,
        "vit_large_patch14_reg4_dinov2": _DINOV2,
        "vit_giant_patch14_reg4_dinov2": _DINOV2,
        "vit_base_patch32_clip_224": _CLIP,
        "vit_base_patch16_clip_224": _CLIP,
        "vit_large_patch14_clip_224": _CLIP,
        "vit_base_patch32_clip_quickgelu_224": _CLIP_512,
        "vit_base_patch16_clip_quickgelu_224": _CLIP_512,
        "vit_large_patch14_clip_quickgelu_224": _CLIP_768,
    })
