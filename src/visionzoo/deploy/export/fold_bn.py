"""Batch-norm folding: merge an inference-mode BatchNorm into the convolution or linear before it.

In eval mode BN is the affine map y = gamma * (x - mean) / sqrt(var + eps) + beta, so after a
conv or linear layer it can be absorbed into that layer's weight and bias:
    scale = gamma / sqrt(var + eps);  W' = W * scale (per output channel);  b' = (b - mean) * scale + beta

Which BN follows which layer is found by running the model once with hooks and matching
tensors by identity: a BN is folded only when its input is exactly the output of a conv or
linear layer. Structure alone cannot tell (attribute order is not execution order, and a
conv output may feed a BN through a reshape). A conv whose output also feeds something else
than its BN would change that other consumer, so such convs are detected and left alone.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.factory import find_spec

__all__ = ["fold_batchnorm"]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _find_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(layer name, bn name) pairs where the BN consumes exactly the layer's output and nothing else does."""
    producers: dict[int, str] = {}  # id(output tensor) -> producing layer
    consumers: dict[str, list[str]] = {}  # layer -> modules that consumed its output
    keep_alive: list[torch.Tensor] = []  # ids are only unique while tensors live
    handles = []

    def after_layer(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                producers[id(output)] = name
                keep_alive.append(output)
        return hook

    def before_any(name):
        def hook(module, inputs):
            for tensor in inputs:
                if isinstance(tensor, torch.Tensor) and id(tensor) in producers:
                    consumers.setdefault(producers[id(tensor)], []).append(name)
        return hook

    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, _FOLDABLE):
            handles.append(module.register_forward_hook(after_layer(name)))
        # leaves see every tensor a module consumes; BNs may have children (a fused activation)
        if not list(module.children()) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(before_any(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()

    pairs = []
    for layer, users in consumers.items():
        bns = [u for u in users if isinstance(modules[u], nn.modules.batchnorm._BatchNorm)]
        if len(users) == 1 and len(bns) == 1 and modules[bns[0]].track_running_stats:
            pairs.append((layer, bns[0]))
    return pairs


def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        out_axis_shape = (-1, 1)
    elif getattr(layer, "transposed", False):
        raise SettingError("transposed convolutions are not folded")
    else:
        out_axis_shape = (-1,) + (1,) * (weight.ndim - 1)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(bn.running_mean)
    layer.weight = nn.Parameter(weight * scale.reshape(out_axis_shape))
    layer.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)


def _without_norm(bn: nn.Module) -> nn.Module:
    """What replaces a folded BN: Identity, or the activation a fused BN+activation module applies after it."""
    if type(bn).forward is nn.modules.batchnorm._BatchNorm.forward:
        return nn.Identity()
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    if isinstance(act, nn.Module):  # a BN+activation module (e.g. timm-style BatchNormAct2d)
        return nn.Sequential(drop, act) if isinstance(drop, nn.Module) else act
    raise SettingError(f"{type(bn).__name__} overrides forward in a way that cannot be folded")


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None, *, inplace: bool = False) -> nn.Module:
    """Return an eval-mode copy of `model` with every foldable BatchNorm merged into its conv/linear.

    `example` is one input used to trace which BN follows which layer (default: a random
    image at the model's default input size). Outputs are unchanged within fp32 rounding.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if example is None:
        made = find_spec(model)
        size = made.data_config["input_size"] if made else (3, 224, 224)
        example = torch.randn(1, *size)
    with torch.no_grad():
        expected = model(example)
    modules = dict(model.named_modules())
    for layer_name, bn_name in _find_pairs(model, example):
        bn = modules[bn_name]
        try:
            replacement = _without_norm(bn)
        except ValueError:
            continue
        _fold_into(modules[layer_name], bn)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    # A conv output that also fed a functional op (invisible to module hooks) would make folding
    # change that op's input; comparing outputs catches it rather than shipping a wrong model.
    with torch.no_grad():
        actual = model(example)
    difference = float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    if difference > 1e-4:
        raise RuntimeError(f"BN folding changed the outputs (max relative difference {difference:.2e}); "
                           "this model has a conv output used by more than its BatchNorm: export without --fold-bn")
    return model
