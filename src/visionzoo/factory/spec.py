"""The `ModelSpec` every model made by visionzoo carries: what it is (architecture, overrides), what it
expects (preprocessing), what it answers (classes, head) and where its weights came from. Set once,
read through `spec_of`; `with_spec` derives a changed spec (a trained model's classes, say)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from visionzoo.files import jsonable
from visionzoo.registry import list_models

__all__ = ["ModelSpec", "spec_of", "find_spec", "with_spec", "model_name", "registered_name", "set_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """What visionzoo knows of a model it made; set once by this module, read through `spec_of`."""

    name: str  # registered architecture name (a CLIP pair: open_clip's name, e.g. 'ViT-B-32')
    overrides: Mapping[str, Any]  # builder overrides given to create_model
    data_config: Mapping[str, Any]  # input_size, interpolation, crop_pct, crop_mode, mean, std
    class_names: tuple[str, ...] | None  # names of the outputs, when known
    weights: str | None  # name or description of the weights loaded (None: random init)
    head: Mapping[str, Any] | None = None  # what the trained head means (task, thresholds, temperature, ood)
    adapter: Mapping[str, Any] | None = None  # PEFT adapter facts (method, rank, targets)

    def __post_init__(self) -> None:
        # frozen, so normalised through object.__setattr__: callers may pass lists and dicts
        object.__setattr__(self, "overrides", dict(self.overrides))
        object.__setattr__(self, "data_config", dict(self.data_config))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        for field in ("head", "adapter"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, dict(getattr(self, field)))

    def as_json(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self), strict=True)


_SPEC = "visionzoo_spec"  # the one attribute visionzoo sets on a model


def find_spec(model: nn.Module) -> ModelSpec | None:
    """As `spec_of`, but None for a module visionzoo did not make (a user's own network)."""
    # torch.compile (`_orig_mod`) and DistributedDataParallel (`module`) wrap the model they were given
    while isinstance(model, nn.Module):
        spec = model.__dict__.get(_SPEC)
        if spec is not None:
            return spec
        model = model._modules.get("_orig_mod") or model._modules.get("module")
    return None


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec of a model made by visionzoo; a clear ValueError for any other module."""
    spec = find_spec(model)
    if spec is None:
        raise ValueError(f"this {type(model).__name__} was not made by visionzoo (create_model, load_model, "
                         "create_clip or zero_shot_classifier), so it has no model spec")
    return spec


def set_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    model.__dict__[_SPEC] = spec  # plain attribute: not a parameter, buffer or submodule
    return model


def with_spec(model: nn.Module, spec: ModelSpec | None = None, /, **changes: Any) -> nn.Module:
    """Replace fields of the model's spec (`dataclasses.replace`), store it back; returns the model.

    A network of your own gets its first spec as `spec`, so that visionzoo's workflows read its
    preprocessing and classes: `with_spec(net, ModelSpec("mynet", {}, {"mean": ..., ...}, None, None))`.
    """
    return set_spec(model, dataclasses.replace(spec if spec is not None else spec_of(model), **changes))


def model_name(model: nn.Module) -> str:
    """The architecture of a visionzoo model, else the module's class name (for messages and metadata)."""
    spec = find_spec(model)
    return spec.name if spec is not None else type(model).__name__


def registered_name(model: nn.Module) -> str | None:
    """The registered architecture the model can be rebuilt from, else None (a network of your own)."""
    spec = find_spec(model)
    return spec.name if spec is not None and spec.name in list_models() else None
