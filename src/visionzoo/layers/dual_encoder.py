"""An image tower and a text tower embedding into one space: what CLIP (`visionzoo.clip`) and SigLIP 2
(`visionzoo.siglip_text`) share. Each pair adds its own logit parameters and its forward (CLIP's softmax
over scaled cosines; SigLIP's scaled and biased cosines, each read through a sigmoid)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError


class DualEncoder(nn.Module):
    """`visual` and `text` with `encode_image`, `encode_text` and their cosine similarities. `width` is
    what the image tower outputs; it must equal the text tower's `embed_dim` (`hint` says how to fix it)."""

    def __init__(self, visual: nn.Module, text: nn.Module, width: int | None, hint: str):
        super().__init__()
        if width != text.embed_dim:
            raise SettingError(f"the image tower outputs {width} features but the text tower {text.embed_dim}; {hint}")
        self.visual = visual
        self.text = text
        self.embed_dim = text.embed_dim

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def cosine(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(N images, M texts) cosine similarities of the normalised embeddings."""
        return self.encode_image(images, True) @ self.encode_text(tokens, True).T
