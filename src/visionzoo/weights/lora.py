"""LoRA adapters on visionzoo models, through the `peft` library (Hu et al., 2021, "LoRA: Low-Rank
Adaptation of Large Language Models").

An adapter is described by plain facts (the model spec's `adapter` field, JSON in config.json):

    {"method": "lora", "rank": 8, "alpha": 16, "dropout": 0.0,
     "targets": "<regex of module names>", "head": ["head"],   # trained in full (peft modules_to_save)
     "base": "vit_base_patch16_224", "base_weights": "vit_base_patch16_224.augreg_in21k_ft_in1k"}

`add_lora(model, facts)` injects the low-rank layers into the model in place (peft's
`get_peft_model`; the model object stays the same, so its spec and attributes stay too): the base
weights are frozen, the LoRA matrices and the head train. `adapter_state_dict` is what a run saves
(only the adapter and the head), `merge_lora` folds the low-rank products into the base weights and
removes peft's layers (for export), `is_lora` tells an adapted model. This module knows nothing of
training: the per-family target modules are chosen in `visionzoo.training.adapt`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

__all__ = ["add_lora", "adapter_state_dict", "merge_lora", "is_lora", "ADAPTER_FILE", "BASE_FILE"]

ADAPTER_FILE = "adapter.safetensors"  # the LoRA matrices and the head, next to config.json
BASE_FILE = "base.safetensors"  # the base weights, written only when they cannot be named (random init)
_ADAPTER_KEYS = ("lora_", "modules_to_save.")


def _peft():
    from visionzoo.errors import require_extra

    return require_extra("peft", "peft", "LoRA (--adapt lora)")


def add_lora(model: nn.Module, facts: Mapping[str, Any]) -> nn.Module:
    """Inject LoRA layers described by `facts` into `model` (in place) and return it: every module
    whose name fully matches `facts["targets"]` gets a rank-`rank` update scaled by `alpha / rank`,
    the modules named in `facts["head"]` are trained in full, everything else is frozen."""
    peft = _peft()
    config = peft.LoraConfig(r=int(facts["rank"]), lora_alpha=float(facts["alpha"]),
                             lora_dropout=float(facts.get("dropout", 0.0)), target_modules=facts["targets"],
                             modules_to_save=list(facts.get("head") or []), bias="none")
    # get_peft_model wraps the model; the wrapper's inner module is ours, adapted in place.
    peft_model = peft.get_peft_model(model, config)
    inner = peft_model.base_model.model
    assert inner is model
    if hasattr(inner, "peft_config"):  # peft's bookkeeping on the module; the facts live in the spec
        del inner.peft_config
    return model


def is_lora(model: nn.Module) -> bool:
    """Whether `model` carries peft layers (LoRA or a fully trained head); does not import peft."""
    return any(type(m).__module__.startswith("peft.") for m in model.modules())


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a LoRA run saves: the low-rank matrices and the head (peft's names)."""
    return {k: v for k, v in model.state_dict().items() if any(key in k for key in _ADAPTER_KEYS)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each LoRA update into its base layer (peft's `merge`) and put the plain layers back, the
    trained head in place of peft's wrapper; in place, returns `model`. Same loop as peft's
    `merge_and_unload`, which lives on the wrapper `add_lora` does not keep."""
    peft = _peft()
    tuner_layer = peft.tuners.tuners_utils.BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for name, module in list(model.named_modules()):
        if not isinstance(module, (tuner_layer, AuxiliaryTrainingWrapper)):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if getattr(parent, child, None) is not module:  # already replaced with an enclosing wrapper
            continue
        if hasattr(module, "unload_and_optionally_merge_module"):
            plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        else:
            module.merge(safe_merge=True)
            plain = module.get_base_layer()
        setattr(parent, child, plain)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _plain_base_name(name: str) -> str:
    """A peft-wrapped parameter's name in the plain model: 'blocks.0.attn.qkv.base_layer.weight' ->
    'blocks.0.attn.qkv.weight', 'head.original_module.weight' -> 'head.weight'."""
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def write_adapter(model: nn.Module, folder, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Write the adapter and the head (`ADAPTER_FILE`) into `folder`, and the base weights
    (`BASE_FILE`) only when `facts` name none; returns the facts to store in config.json, with
    the adapter's size."""
    from pathlib import Path

    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in adapter_state_dict(model).items()}
    (folder / ADAPTER_FILE).write_bytes(save(tensors, metadata={"format": "pt"}))  # umask mode, not 0600
    facts = {**facts, "file": ADAPTER_FILE}
    if facts.get("base_weights") is None:  # a random base cannot be rebuilt from a name: keep it
        base = {_plain_base_name(k): v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
                if k not in tensors and ".modules_to_save." not in k}
        (folder / BASE_FILE).write_bytes(save(base, metadata={"format": "pt"}))
        facts["base_file"] = BASE_FILE
    facts["adapter_bytes"] = (folder / ADAPTER_FILE).stat().st_size
    return facts


def read_adapter(model: nn.Module, folder, facts: Mapping[str, Any]) -> nn.Module:
    """`model` (the base, built with its weights, or random when `facts` name a base file) with the
    adapter in `folder` added and loaded; every adapter tensor must fit."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    if facts.get("base_file"):
        model.load_state_dict(load_file(str(folder / facts["base_file"])))
    add_lora(model, facts)
    adapter = load_file(str(folder / ADAPTER_FILE))
    missing, unexpected = model.load_state_dict(adapter, strict=False)
    missing_adapter = [k for k in missing if any(key in k for key in _ADAPTER_KEYS)]
    if unexpected or missing_adapter:
        raise ValueError(f"the adapter in {folder} does not fit its base '{facts.get('base')}': "
                         f"unexpected {unexpected[:5]}, missing {missing_adapter[:5]}")
    return model
