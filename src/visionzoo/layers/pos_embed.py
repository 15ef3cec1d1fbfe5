"""Resampling of learned absolute position embeddings to another token grid.

A ViT trained at one resolution runs at another by interpolating its position embeddings
over the patch grid (Dosovitskiy et al., 2020, section 3.2); prefix tokens (class,
distillation, registers) have no grid position and are kept as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from visionzoo.errors import SettingError


def resample_abs_pos_embed(posemb: torch.Tensor, new_size: tuple[int, int] | list[int],
                           old_size: tuple[int, int] | list[int] | None = None, num_prefix_tokens: int = 1,
                           interpolation: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """Resample `posemb` (1, prefix + H*W, C) to the grid `new_size` (H', W').

    `old_size` is the current grid; when None the grid is taken to be square. Interpolation
    runs in float32 (bicubic has no half-precision kernel on every device) and the result is
    cast back. Returns `posemb` itself when the grid is unchanged.
    """
    new_size = (int(new_size[0]), int(new_size[1]))
    num_pos_tokens = posemb.shape[1]
    if old_size is None:
        side = math.isqrt(num_pos_tokens - num_prefix_tokens)
        if side * side != num_pos_tokens - num_prefix_tokens:
            raise SettingError(f"position embedding of {num_pos_tokens} tokens with {num_prefix_tokens} prefix "
                             "tokens is not a square grid; pass old_size=(height, width)")
        old_size = (side, side)
    old_size = (int(old_size[0]), int(old_size[1]))
    if old_size[0] * old_size[1] + num_prefix_tokens != num_pos_tokens:
        raise SettingError(f"old_size {old_size} with {num_prefix_tokens} prefix tokens does not match a position "
                         f"embedding of {num_pos_tokens} tokens")
    if new_size == old_size:
        return posemb

    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    # (1, H*W, C) -> (1, C, H, W) for F.interpolate
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_size, mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], dim).to(posemb.dtype)  # back to (1, L', C)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid
