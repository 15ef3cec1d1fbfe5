"""What every converter is made of: a plan mapping each of our keys to a source key and the
reshapes on the way in (`to_ours`) and back (`to_source`), and the small plan builders the
converters share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from visionzoo.errors import SettingError

__all__ = ["ConversionError", "Mapping", "Converter", "Shapes", "reshape_to_ours", "flatten_linear", "reshaped",
           "same", "renamed", "block_indices", "prefixed"]

Shapes = dict[str, torch.Size]


class ConversionError(SettingError):
    """A checkpoint that a converter recognised but whose keys or shapes do not map completely."""


@dataclass(frozen=True)
class Mapping:
    """Where one of our tensors comes from. `source=None`: no source tensor, `fill(shape)` makes it."""

    source: str | None
    to_ours: Callable[[torch.Tensor, torch.Size], torch.Tensor] | None = None
    to_source: Callable[[torch.Tensor], torch.Tensor] | None = None
    fill: Callable[[torch.Size], torch.Tensor] | None = None


def reshape_to_ours(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return tensor.reshape(shape)


def flatten_linear(tensor: torch.Tensor) -> torch.Tensor:
    """Back to a Linear layer's (out, in) weight from a 1x1 / kxk conv weight or a (C, 1, 1) scale."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 2 else tensor


def reshaped(source: str, to_source: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Mapping:
    """A tensor with the same values in another shape (a Linear as a 1x1 conv, a (C,1,1) scale as (C,))."""
    return Mapping(source, reshape_to_ours, to_source or flatten_linear)


class Converter:
    """One source layout. Subclasses set `name` and implement `detect` and `plan`."""

    name = ""
    ignored: tuple[str, ...] = ()  # regexes of source keys that carry nothing we keep

    def detect(self, source_keys: set[str], target: Shapes) -> bool:
        raise NotImplementedError

    def plan(self, source_keys: set[str], target: Shapes) -> dict[str, Mapping]:
        raise NotImplementedError

    def is_ignored(self, key: str) -> bool:
        return any(re.search(pattern, key) for pattern in self.ignored)


def same(keys) -> dict[str, Mapping]:
    return {k: Mapping(k) for k in keys}


def renamed(target: Shapes, prefix_map: list[tuple[str, str]]) -> dict[str, Mapping]:
    """Keys renamed by the first matching (our prefix, source prefix) pair; unmatched keys keep their name."""
    plan = {}
    for key in target:
        for ours, theirs in prefix_map:
            if key.startswith(ours):
                plan[key] = Mapping(theirs + key[len(ours):])
                break
        else:
            plan[key] = Mapping(key)
    return plan


def block_indices(target: Shapes, pattern: str) -> list[tuple[int, ...]]:
    """Sorted distinct index tuples of keys matching `pattern` (with integer groups)."""
    found = {tuple(int(g) for g in m.groups()) for k in target if (m := re.match(pattern, k))}
    return sorted(found)


def prefixed(ours: str, theirs: str, target: Shapes) -> dict[str, Mapping]:
    """Every key of ours under the module `ours`, taken from the same key under `theirs`."""
    return {k: Mapping(theirs + k[len(ours):]) for k in target if k.startswith(ours + ".")}
