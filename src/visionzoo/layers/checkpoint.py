"""Gradient checkpointing of a stack of blocks, for the families that offer `set_grad_checkpointing`."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, *, checkpointed: bool) -> torch.Tensor:
    """Run `blocks` in order. With `checkpointed` (and gradients on), each block's activations are
    recomputed in the backward pass instead of stored: the same outputs and gradients, less memory.

    Non-reentrant checkpointing, the form PyTorch recommends: it works with inputs that do not
    require gradients and with torch.compile.
    """
    if checkpointed and torch.is_grad_enabled():
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x
    return blocks(x)
