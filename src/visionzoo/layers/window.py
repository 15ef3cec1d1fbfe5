"""Non-overlapping windows of a channels-last map: Swin's (shifted) window attention and MaxViT's
block attention both attend within them."""

from __future__ import annotations

import torch

__all__ = ["window_partition", "window_reverse"]


def window_partition(x: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, C) -> (N * H/wh * W/ww, wh, ww, C): contiguous windows; H and W are multiples of the window."""
    n, h, w, c = x.shape
    win_h, win_w = window_size
    x = x.view(n, h // win_h, win_h, w // win_w, win_w, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, win_h, win_w, c)


def window_reverse(windows: torch.Tensor, window_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(N * num_windows, wh, ww, C) -> (N, H, W, C) for a map of `size` (H, W): the inverse of `window_partition`."""
    win_h, win_w = window_size
    h, w = size
    c = windows.shape[-1]
    x = windows.view(-1, h // win_h, w // win_w, win_h, win_w, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)
