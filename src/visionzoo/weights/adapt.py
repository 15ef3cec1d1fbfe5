"""Fitting a checkpoint to the model the user asked for.

- another number of classes: the classifier's weights are dropped (the model keeps its
  fresh initialisation), with one log line naming them; `num_classes=0` drops them too;
- `in_chans` other than 3: the first convolution / patch embedding is summed over its input
  channels for one channel, or repeated and scaled by 3 / in_chans for more, so that the
  response to a grey image stays what it was;
- another input size: absolute position embeddings (ViT family) and relative-position bias
  tables (Swin, MaxViT) are resampled; EfficientViT-M's per-offset attention biases are cut
  to a window that shrank with the feature map (resampled when it grew);
- anything else that does not fit raises `WeightsMismatchError`, listing the first few
  missing, unexpected and shape-mismatched keys with their counts.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.layers.pos_embed import resample_abs_pos_embed

__all__ = ["WeightsMismatchError", "adapt_input_conv", "fit_state_dict"]

logger = logging.getLogger("visionzoo.weights")


class WeightsMismatchError(SettingError):
    """A checkpoint whose keys or shapes do not fit the model, beyond what can be adapted."""


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-layer weight (O, 3, kh, kw) made to take `in_chans` channels."""
    if weight.shape[1] == in_chans:
        return weight
    dtype = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)  # a grey image through summed filters = RGB of equal channels
    else:
        repeats = math.ceil(in_chans / weight.shape[1])
        weight = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)
    return weight.to(dtype)


def _resample_bias_table(table: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A relative-position bias table resampled over its (2W-1, 2W-1) grid of offsets: Swin's
    ((2W-1)^2, heads) or MaxViT's (heads, 2W-1, 2W-1)."""
    if table.ndim == 3:  # (heads, 2H-1, 2W-1)
        grid = F.interpolate(table.float()[None], size=tuple(shape[1:]), mode="bicubic", align_corners=False)
        return grid[0].to(table.dtype)
    old_side, new_side = math.isqrt(table.shape[0]), math.isqrt(shape[0])
    if old_side * old_side != table.shape[0] or new_side * new_side != shape[0]:
        return table  # not a square grid: left as it is, for the shape-mismatch report that names the file
    # ((2W-1)^2, heads) -> (1, heads, 2W-1, 2W-1) for F.interpolate
    grid = table.float().T.reshape(1, -1, old_side, old_side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(-1, shape[0]).T.to(table.dtype)  # back to ((2W'-1)^2, heads)


def _fit_offset_biases(biases: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """EfficientViT-M's attention biases (heads, W*W), one per offset (|dy|, |dx|) in a W x W window, for
    a window of another side. A window that shrank with its feature map (a smaller input) keeps the
    offsets it still has, which mean the same distances in tokens as before: exact, unlike resampling."""
    old_side, new_side = math.isqrt(biases.shape[1]), math.isqrt(shape[1])
    if old_side * old_side != biases.shape[1] or new_side * new_side != shape[1] or biases.shape[0] != shape[0]:
        return biases  # not a square window: left for the shape-mismatch report
    grid = biases.reshape(-1, old_side, old_side)  # (heads, W*W) -> (heads, |dy|, |dx|)
    if new_side <= old_side:
        return grid[:, :new_side, :new_side].reshape(shape)
    grid = F.interpolate(grid.float()[None], size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid[0].reshape(shape).to(biases.dtype)


def _owner(model: nn.Module, key: str) -> nn.Module:
    """The module holding parameter `key` (e.g. `visual` for `visual.pos_embed` in a CLIP pair)."""
    owner = model
    for part in key.split(".")[:-1]:
        owner = getattr(owner, part)
    return owner


def _resample_pos_embed(model: nn.Module, key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    owner = _owner(model, key)
    prefix = 0 if getattr(getattr(owner, "config", None), "no_embed_class", False) else \
        int(getattr(owner, "num_prefix_tokens", 1))
    grid = getattr(getattr(owner, "patch_embed", None), "grid_size", None)
    new_grid = tuple(grid) if grid is not None else (math.isqrt(shape[1] - prefix),) * 2
    return resample_abs_pos_embed(value, new_grid, num_prefix_tokens=prefix)


def _shown(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def fit_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str,
                   classifier: tuple[str, ...] | list[str] = (), first_conv: str | None = None,
                   name: str | None = None) -> list[str]:
    """Adapt `state_dict` to `model` in place and load it; returns the keys left at their initial values.

    `classifier` and `first_conv` name the layers (from the weight's catalog entry) that may
    be dropped or adapted; other keys must match exactly. `name` (the architecture) is for messages.
    """
    target = model.state_dict()
    name = name or type(model).__name__

    # Classifier: dropped when the class count differs, or when the model has none (num_classes=0).
    dropped = []
    for prefix in classifier:
        keys = [k for k in state_dict if k == prefix or k.startswith(prefix + ".")]
        if any(k not in target or target[k].shape != state_dict[k].shape for k in keys):
            dropped += keys
    if dropped:
        for key in dropped:
            del state_dict[key]
        # The loader cannot know how the new head starts: the model's own initialisation, or the
        # transfer recipes' zeros (`--head-init-std`) set after loading; say neither as a fact here.
        logger.warning("%s: dropped the checkpoint's classifier (%s) for a new %d-class one, not initialised from "
                       "the checkpoint (transfer training starts it at zero; --head-init-std)", name,
                       ", ".join(dropped), getattr(model, "num_classes", -1))

    # First convolution for another number of input channels.
    # The named one, and every other convolution that takes the image: reparameterizable stems
    # (MobileOne, FastViT) read it through parallel branches, each a first convolution of its own.
    conv_keys = ([f"{first_conv}.weight"] if first_conv else []) + [
        k for k, v in state_dict.items() if v.ndim == 4 and v.shape[1] == 3 and k in target
        and target[k].ndim == 4 and target[k].shape[1] != 3 and target[k].shape[0] == v.shape[0]]
    for key in conv_keys:
        if key in state_dict and key in target and state_dict[key].shape != target[key].shape \
                and state_dict[key].shape[1] != target[key].shape[1]:
            state_dict[key] = adapt_input_conv(state_dict[key], target[key].shape[1])

    # Position embeddings and relative-position tables for another input or window size.
    for key, value in list(state_dict.items()):
        if key not in target or target[key].shape == value.shape:
            continue
        if key.endswith("pos_embed") and value.ndim == 3 and target[key].ndim == 3:
            state_dict[key] = _resample_pos_embed(model, key, value, target[key].shape)
        elif key.endswith("relative_position_bias_table") and value.ndim == target[key].ndim:
            state_dict[key] = _resample_bias_table(value, target[key].shape)
        elif key.endswith("attention_biases") and value.ndim == 2 and target[key].ndim == 2:
            state_dict[key] = _fit_offset_biases(value, target[key].shape)

    missing = [k for k in target if k not in state_dict and not k.endswith("num_batches_tracked")]
    kept_initial = [k for k in missing if any(k == p or k.startswith(p + ".") for p in classifier)]
    missing = [k for k in missing if k not in kept_initial]
    unexpected = [k for k in state_dict if k not in target]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in state_dict if k in target and state_dict[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_shown(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_shown(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape-mismatched ({_shown(mismatched, 3)})")
        raise WeightsMismatchError(f"weights from {source} do not fit model '{name}': {'; '.join(parts)}. "
                                   "Check that the weights are for this architecture and its overrides")
    model.load_state_dict(state_dict, strict=False)
    return kept_initial
