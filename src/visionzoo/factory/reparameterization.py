"""Structural re-parameterisation: the deployed form of a network that trains with parallel branches.

RepViT, MobileOne and FastViT (RepVGG's idea) train each block as several branches (a kxk conv-BN,
a 1x1 conv-BN, the identity) summed, and fold them into one convolution for inference. Their
network class has `reparameterize()`, which fuses in place (eval-mode batch-norm statistics)
and returns the network; that method is the family's interface, as `forward_features` is every
family's. Everything else asks through this module: `is_reparameterizable` and `reparameterized`,
which leaves the model it is given untouched, so that the exports can be verified against it.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from visionzoo.registry import get_card

__all__ = ["Reparameterizable", "is_reparameterizable", "reparameterized"]


@runtime_checkable
class Reparameterizable(Protocol):
    """A network whose training branches fold into single convolutions for inference."""

    def reparameterize(self) -> nn.Module:
        """Fuse the branches and batch norms in place (eval-mode statistics); return the network."""


def is_reparameterizable(model: nn.Module | str) -> bool:
    """Whether a model (or a registered name: its family's network) has branches to fuse for inference."""
    if isinstance(model, str):
        return isinstance(get_card(model).builder, type) and issubclass(get_card(model).builder, Reparameterizable)
    return isinstance(model, Reparameterizable)


def reparameterized(model: nn.Module) -> nn.Module:
    """The inference form of `model`: a fused deep copy in eval mode (its spec kept), or `model`
    itself when it has nothing to fuse. The copy computes the same function as `model` in eval mode
    and is for inference only: its state dict has the fused layers' keys, not the published ones."""
    if not is_reparameterizable(model):
        return model
    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        result = fused.reparameterize()
    return result if isinstance(result, nn.Module) else fused
