"""Transformer tokens laid out as a feature map, for the families that explain through their tokens
(ViT, DeiT, DINOv2, CLIP, EVA-02 register `tokens_to_map` as their `CamLayer.to_map`)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["tokens_to_map"]


def tokens_to_map(tokens: torch.Tensor, model: nn.Module, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, prefix + h*w, C) -> (N, C, h, w): the model's `num_prefix_tokens` (class, distillation,
    register tokens) dropped, the patch tokens laid out row by row on the grid of an input of
    `image_size` (H, W)."""
    height, width = image_size
    patches = tokens[:, model.num_prefix_tokens:]  # (N, prefix + h*w, C) -> (N, h*w, C)
    rows = max(1, round(math.sqrt(patches.shape[1] * height / width)))
    columns = patches.shape[1] // rows
    return patches.reshape(tokens.shape[0], rows, columns, tokens.shape[-1]).permute(0, 3, 1, 2)  # -> (N, C, h, w)
