"""Pretrained weights: the catalog, loading from the hub or local files, and converters."""

from __future__ import annotations

import torch.nn as nn


def load_pretrained(model: nn.Module, pretrained: bool | str, *, num_classes: int, in_chans: int) -> None:
    raise NotImplementedError(
        f"pretrained weights are not available yet (asked for {pretrained!r}); build with pretrained=False"
    )
