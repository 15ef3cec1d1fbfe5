"""Relative position biases for windowed attention (Swin, MaxViT).

Inside a window of `win_h x win_w` tokens, the offset between two tokens takes one of
`(2 * win_h - 1) * (2 * win_w - 1)` values; a learned table holds one bias per offset and
head. Swin and MaxViT store that table in two layouts, each kept under its reference name
so published weights load unchanged:

- Swin: `relative_position_bias_table` of shape ((2h-1)(2w-1), heads) on the attention
  module itself, read through `relative_position_index` (timm's `WindowAttention`).
- MaxViT (TF weights): `RelPosBiasTf`, a table of shape (heads, 2h-1, 2w-1) (timm's `RelPosBiasTf`).

Both are looked up with the same index, built from plain tensor ops so that models build
on the `meta` device.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def relative_position_index(win_h: int, win_w: int) -> torch.Tensor:
    """(win_h * win_w, win_h * win_w) index of each token pair's offset in a flattened (2h-1, 2w-1) table.

    Entry [i, j] points at offset (y_i - y_j, x_i - x_j), shifted to start at zero.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(win_h), torch.arange(win_w), indexing="ij")).flatten(1)  # (2, h*w)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, h*w, h*w)
    return (relative[0] + win_h - 1) * (2 * win_w - 1) + (relative[1] + win_w - 1)


class RelPosBiasTf(nn.Module):
    """MaxViT's relative position bias in the layout of the TensorFlow weights (heads, 2h-1, 2w-1).

    Tu et al., 2022, "MaxViT: Multi-Axis Vision Transformer". The TF code reads the table with
    one-hot einsums; the same entries are gathered here with an index, which is exact.
    """

    def __init__(self, window_size: tuple[int, int], num_heads: int):
        super().__init__()
        self.window_size = window_size
        win_h, win_w = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_heads, 2 * win_h - 1, 2 * win_w - 1))
        nn.init.normal_(self.relative_position_bias_table, std=0.02)
        # The TF table is indexed by key minus query offset, Swin's by query minus key: transpose.
        self.register_buffer("relative_position_index", relative_position_index(win_h, win_w).T.contiguous(),
                             persistent=False)

    def get_bias(self) -> torch.Tensor:
        """(heads, h*w, h*w) bias to add to the attention logits of one window."""
        table = self.relative_position_bias_table.flatten(1)  # (heads, (2h-1)*(2w-1))
        return table[:, self.relative_position_index]
