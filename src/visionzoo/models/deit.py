"""DeiT (Touvron et al., 2021, "Training data-efficient image transformers & distillation through
attention").

DeiT's plain models are Vision Transformers trained differently, so they reuse `VisionTransformer`.
The distilled models add a distillation token next to the class token, read by a second head
(`head_dist`) that is trained against a teacher's predictions.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.layers.pos_embed import resample_abs_pos_embed
from visionzoo.models.vit import VIT_CAM_LAYER, VIT_LORA_TARGETS, VisionTransformer, VisionTransformerConfig
from visionzoo.registry import VariantExtras, register_family

__all__ = ["VisionTransformerDistilled"]


class VisionTransformerDistilled(VisionTransformer):
    """DeiT with a distillation token (Touvron et al., 2021, "Training data-efficient image transformers").

    The sequence is [class, distillation, patches...]; `head` reads the class token and `head_dist`
    the distillation token. In training mode `forward` returns both logits as a tuple
    (class-token logits, distillation logits) so a loss can supervise each; in eval mode it returns
    their mean, as the paper does at inference. With num_classes=0 both modes return the mean of
    the two pooled tokens (the same as `forward_head(x, pre_logits=True)`).
    """

    def __init__(self, config: VisionTransformerConfig, *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, pos_drop_rate: float = 0.0, global_pool: str = "token",
                 dynamic_img_size: bool = False):
        if global_pool != "token":
            raise SettingError(f"distilled DeiT pools the class and distillation tokens; global_pool must be "
                             f"'token', got {global_pool!r}")
        if config.no_embed_class or config.reg_tokens or not config.class_token:
            raise SettingError("distilled DeiT needs a class token, no register tokens and embedded prefix tokens")
        super().__init__(config, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                         drop_path_rate=drop_path_rate, attn_drop_rate=attn_drop_rate,
                         proj_drop_rate=proj_drop_rate, pos_drop_rate=pos_drop_rate, global_pool=global_pool,
                         dynamic_img_size=dynamic_img_size)
        self.num_prefix_tokens = 2
        self.dist_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        # one more position for the distillation token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 2, config.embed_dim))
        self.head_dist = nn.Linear(config.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if num_classes > 0:
            nn.init.trunc_normal_(self.head_dist.weight, std=0.02)
            nn.init.zeros_(self.head_dist.bias)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise SettingError(f"distilled DeiT supports global_pool='token' only, got {global_pool!r}")
        super().reset_classifier(num_classes)
        device = self.pos_embed.device
        self.head_dist = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        return [self.cls_token.expand(batch, -1, -1), self.dist_token.expand(batch, -1, -1)]

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (N, L, C) or (N, H', W', C) -> (N, 2 + L, C)."""
        pos_embed = self.pos_embed
        if self.dynamic_img_size:
            batch, height, width, channels = x.shape
            pos_embed = resample_abs_pos_embed(pos_embed, (height, width), old_size=self.patch_embed.grid_size,
                                               num_prefix_tokens=2)
            x = x.reshape(batch, height * width, channels)  # (N, H', W', C) -> (N, L, C)
        x = torch.cat(self._prefix_tokens(x.shape[0]) + [x], dim=1) + pos_embed
        return self.pos_drop(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits or self.num_classes == 0:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.training:
            return cls, dist
        return (cls + dist) / 2


# --- variants ------------------------------------------------------------------------------

_TINY = VisionTransformerConfig(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_SMALL = VisionTransformerConfig(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_BASE = VisionTransformerConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12)

VARIANTS: dict[str, VisionTransformerConfig] = {
    "deit_tiny_patch16_224": _TINY,
    "deit_small_patch16_224": _SMALL,
    "deit_base_patch16_224": _BASE,
    "deit_tiny_distilled_patch16_224": _TINY,
    "deit_small_distilled_patch16_224": _SMALL,
    "deit_base_distilled_patch16_224": _BASE,
}

_DISTILLED = VariantExtras(builder=VisionTransformerDistilled)

register_family(
    VARIANTS, family="deit", paper="Training data-efficient image transformers & distillation through attention",
    year=2021, builder=VisionTransformer, recipe_style="vit", cam_layer=VIT_CAM_LAYER, lora_targets=VIT_LORA_TARGETS,
    extras={"deit_tiny_distilled_patch16_224": _DISTILLED, "deit_small_distilled_patch16_224": _DISTILLED,
            "deit_base_distilled_patch16_224": _DISTILLED})
