"""Weight initialisation shared by the transformer families."""

from __future__ import annotations

import torch.nn as nn


def init_linears_trunc_normal_(model: nn.Module, std: float = 0.02) -> None:
    """Every nn.Linear: truncated-normal weights (std 0.02, ViT's recipe), zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def init_text_tower_(token_embedding: nn.Embedding, positional_embedding: nn.Parameter, blocks, width: int,
                     layers: int) -> None:
    """CLIP's text-tower initialisation (open_clip's, kept by SigLIP): embeddings at std 0.02 and 0.01, and
    each block's residual projections (attention's `out_proj`, the MLP's `c_proj`) scaled down with depth."""
    nn.init.normal_(token_embedding.weight, std=0.02)
    nn.init.normal_(positional_embedding, std=0.01)
    for block in blocks:
        nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
        nn.init.normal_(block.attn.out_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
