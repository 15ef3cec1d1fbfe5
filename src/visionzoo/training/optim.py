"""Optimiser parameter groups (weight decay, head vs backbone, layer-wise lr decay) and the schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from visionzoo.errors import SettingError

__all__ = ["head_parameter_names", "layer_ids", "norm_parameter_names", "build_optimizer", "build_schedule",
           "Lookahead"]


def head_parameter_names(model: nn.Module, num_classes: int) -> set[str]:
    """Names of the classifier's parameters: the last Linear (or 1x1 conv) with `num_classes` outputs."""
    head_module = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            head_module = name
        elif isinstance(module, nn.Conv2d) and module.out_channels == num_classes and module.kernel_size == (1, 1):
            head_module = name
    if head_module is None:
        return set()
    prefix = head_module + "."
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


def layer_ids(model: nn.Module, head_names: set[str]) -> tuple[dict[str, int], int]:
    """A depth index per parameter for layer-wise lr decay, and the number of depths.

    Parameters before the first numbered block (patch embedding, class token, stem) get 0;
    each numbered block (`blocks.3`, `stages.1.blocks.2`, `layer2.0`) gets the next index in
    order of appearance; parameters after the last block (final norm) share the last block's
    index + 1, and the head gets the deepest index.
    """
    ids: dict[str, int] = {}
    blocks: dict[str, int] = {}
    pending_tail: list[str] = []
    for name, _ in model.named_parameters():
        if name in head_names:
            continue
        key = _block_key(name)
        if key is None:
            if blocks:
                pending_tail.append(name)
            else:
                ids[name] = 0
            continue
        if key not in blocks:
            blocks[key] = len(blocks) + 1
        ids[name] = blocks[key]
    tail = len(blocks) + 1
    for name in pending_tail:
        ids[name] = tail
    for name in head_names:
        ids[name] = tail + 1
    return ids, tail + 2


def _block_key(name: str) -> str | None:
    """'blocks.3.attn.qkv.weight' -> 'blocks.3'; 'stages.1.blocks.2.conv.weight' -> 'stages.1.blocks.2';
    'layer2.0.conv1.weight' -> 'layer2.0'; None when no path element is a number."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            end = i + 2 if i + 2 < len(parts) - 1 and parts[i + 2].isdigit() else i
            return ".".join(parts[: end + 1])
    return None


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters of normalisation layers (BatchNorm, LayerNorm, GroupNorm, RMSNorm and
    their subclasses): their scales and shifts."""
    return {f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules() if isinstance(module, _NORMS)
            for name, _ in module.named_parameters(recurse=False)}


def build_optimizer(model: nn.Module, settings, head_names: set[str]) -> torch.optim.Optimizer:
    """Groups by (lr scale, weight decay); norms, biases and tokens get no weight decay. Normalisation
    layers' parameters also get `settings.norm_lr_scale` times their group's lr.

    With `settings.norm_weight_decay`, norms and biases are decayed too, as in airbench94: by the
    same fraction per step as the weights, so their weight decay is divided by their lr scale
    (SGD's decay per step is lr x weight decay)."""
    layer_decay = settings.layer_decay or 1.0
    ids, depth = layer_ids(model, head_names) if layer_decay != 1.0 else ({}, 0)
    norm_scale = settings.norm_lr_scale
    norm_names = norm_parameter_names(model) if norm_scale != 1.0 else set()
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        token = name.endswith(("cls_token", "pos_embed", "dist_token", "reg_token"))
        no_decay = token or (parameter.ndim <= 1 and not settings.norm_weight_decay)
        decay = 0.0 if no_decay else settings.weight_decay
        if layer_decay != 1.0:
            scale = layer_decay ** (depth - 1 - ids[name])
        else:
            scale = 1.0 if (name in head_names or not head_names) else 1.0 / settings.head_lr_scale
        if name in norm_names:
            scale *= norm_scale
            decay /= norm_scale
        groups.setdefault((scale, decay), []).append(parameter)
    if not groups:
        raise SettingError("the model has no trainable parameters (is everything frozen?)")
    # The head's group (scale 1, with weight decay) last: its lr is what the progress bar shows.
    param_groups = [{"params": params, "lr": settings.lr * scale, "lr_scale": scale, "weight_decay": decay}
                    for (scale, decay), params in sorted(groups.items(), key=lambda item: (item[0][0] == 1.0, item[0]))]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=settings.lr, betas=(0.9, 0.999))


def build_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   min_lr_ratio: float = 0.0, shape: str = "cosine", *,
                   warmup_start_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from `warmup_start_ratio` (default 0) over `warmup_steps`, then cosine (or, with
    `shape="linear"`, straight-line) decay to `min_lr_ratio` at `total_steps`. The factor applies per
    step (call `.step()` after each optimizer step). Warm-up from 0.2, then linear decay, is
    airbench's triangular schedule."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    if shape not in ("cosine", "linear"):
        raise SettingError(f"unknown schedule {shape!r}; choose cosine or linear")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_start_ratio + (1 - warmup_start_ratio) * (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        remaining = 1 - progress if shape == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return min_lr_ratio + (1 - min_lr_ratio) * remaining

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Lookahead:
    """Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back") with the
    growing pull of airbench94.

    Every `every` optimizer steps the slow weights move towards the live ("fast") ones,
    `slow += (1 - d) * (fast - slow)`, and the live weights are reset to the slow ones. The decay
    `d = max_decay * (step / total_steps) ** 3` is near 0 early in training (no averaging while the
    weights move far) and reaches `max_decay` at the end, where averaging the last steps' noise
    helps most. At `total_steps` the live model takes the slow weights (no further pull), so the run
    ends on them. Parameters and floating-point buffers (BatchNorm statistics) take part.
    """

    def __init__(self, model: nn.Module, every: int, max_decay: float, total_steps: int):
        self.every, self.max_decay, self.total_steps = every, max_decay, max(total_steps, 1)
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]  # share the model's storage
        self.slow = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer step number `step` (counted from 1)."""
        if step % self.every == 0:
            decay = self.max_decay * min(step / self.total_steps, 1.0) ** 3
            torch._foreach_lerp_(self.slow, self.live, 1.0 - decay)
            torch._foreach_copy_(self.live, self.slow)
        elif step == self.total_steps:
            torch._foreach_copy_(self.live, self.slow)

    def state_dict(self) -> list[torch.Tensor]:
        """The slow weights (references, as `nn.Module.state_dict` gives)."""
        return list(self.slow)

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        if len(state) != len(self.slow):
            raise SettingError(f"the checkpoint's Lookahead state has {len(state)} tensors, the model {len(self.slow)}")
        torch._foreach_copy_(self.slow, [t.to(s.device) for t, s in zip(state, self.slow)])
