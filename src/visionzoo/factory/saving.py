"""Saving and loading trained models: a folder of `model.safetensors` (or a LoRA adapter) and
`config.json` holding the spec, which `load_model` rebuilds exactly."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors.torch import load_file, save

from visionzoo import clip as clip_models
from visionzoo.data.config import resolve_data_config
from visionzoo.errors import SettingError
from visionzoo.factory.build import class_names, create_model, data_config, layer_names, zero_shot_spec
from visionzoo.factory.spec import ModelSpec, find_spec, registered_name, set_spec, spec_of, with_spec
from visionzoo.files import atomic_write, atomic_write_json, jsonable
from visionzoo.weights import CONFIG_FILE, SAVED_MODEL_FORMAT, WEIGHTS_FILE, hub_model_folder, read_folder_config
from visionzoo.weights.lora import ADAPTER_FILE, is_lora, read_adapter, write_adapter

__all__ = ["save_model", "load_model"]


# --- saving and loading trained models ------------------------------------------------------------


def _in_chans(model: nn.Module, name: str) -> int:
    _, first_conv = layer_names(name)
    state = model.state_dict()
    if first_conv and f"{first_conv}.weight" in state:
        return int(state[f"{first_conv}.weight"].shape[1])
    return int(next(v.shape[1] for v in state.values() if v.ndim == 4))


def save_model(model: nn.Module, path: str | os.PathLike, *, classes: Sequence[str] | None = None,
               preprocessing: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `model` to the directory `path`: `model.safetensors` and `config.json` (architecture,
    overrides, num_classes, in_chans, class names, preprocessing, and the rest of its spec). Files are
    replaced atomically. `classes` (the class names) and `preprocessing` (a data config) are recorded in the model's
    spec first (what a trained model carries, as weights do).

    A model the registry cannot rebuild (a user's own nn.Module) is written as its weights and facts
    (`architecture: null`, with `extra`): evaluation code can read them, `load_model` cannot rebuild it."""
    if classes is not None or preprocessing is not None:
        spec = find_spec(model) or ModelSpec(type(model).__name__, {}, {}, None, None)
        with_spec(model, spec, **({"class_names": tuple(classes)} if classes is not None else {}),
                  **({"data_config": resolve_data_config(spec.data_config, jsonable(dict(preprocessing)))}
                     if preprocessing is not None else {}))
    spec = find_spec(model)
    if spec is None:
        raise SettingError("save_model needs a model made by visionzoo.create_model (it records the architecture)")
    if not registered_name(model):
        return _save_unregistered(model, Path(path), extra)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise SettingError(f"{folder} is a file; save_model writes a directory")
    folder.mkdir(parents=True, exist_ok=True)
    preprocessing = jsonable(data_config(model), strict=True)
    zero_shot = isinstance(model, clip_models.ZeroShotClassifier)  # a registered image tower plus class embeddings
    config = {
        "format": SAVED_MODEL_FORMAT,
        "format_version": 1,
        "architecture": spec.name,
        **({"kind": "zero_shot", "tower_outputs": int(model.visual.num_classes)} if zero_shot else {}),
        "overrides": jsonable(spec.overrides, strict=True),
        "num_classes": int(model.num_classes),
        "in_chans": _in_chans(model, spec.name),
        "class_names": class_names(model),
        "preprocessing": preprocessing,
        "pretrained_cfg": preprocessing,  # the key older visionzoo versions read
        "weights": spec.weights,
        "head": jsonable(spec.head, strict=True),
        "adapter": jsonable(spec.adapter, strict=True),
    }
    files = [(CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))]
    if spec.adapter is not None and is_lora(model):  # only the adapter and the head, and what rebuilds the base
        config["adapter"] = jsonable(write_adapter(model, folder, spec.adapter), strict=True)
        (folder / WEIGHTS_FILE).unlink(missing_ok=True)
    else:
        # clone: tied or shared tensors are stored separately, as safetensors requires
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        files.insert(0, (WEIGHTS_FILE, lambda p: p.write_bytes(save(tensors, metadata={"format": "pt"}))))  # umask mode
    for file_name, write in files:
        partial = folder / (file_name + ".partial")
        write(partial)
        os.replace(partial, folder / file_name)
    return folder


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild a model written by `save_model`, in eval mode, with its weights and its spec (classes,
    preprocessing, head, adapter). `path` is that folder, or `hf-hub:org/repo[@revision]` for one pushed
    to the Hugging Face Hub (`visionzoo push`), read through the Hub's cache (offline: the cache only)."""
    hub = os.fspath(path).startswith("hf-hub:")
    folder = hub_model_folder(os.fspath(path)) if hub else Path(path)
    config = read_folder_config(folder) if folder.is_dir() else None
    if config and "format" not in config and "architecture" in config:
        return _load_facts_layout(folder, config)
    if not config or config.get("format") != SAVED_MODEL_FORMAT:
        raise FileNotFoundError(f"{folder} is not a model saved by visionzoo.save_model (expected a directory with "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    kwargs = {**config.get("overrides", {}), **overrides}
    kwargs.setdefault("in_chans", config.get("in_chans", 3))
    if config.get("kind") == "zero_shot":
        model = _load_zero_shot(folder, config, kwargs)
    else:
        kwargs.setdefault("num_classes", config["num_classes"])
        facts = config.get("adapter")
        if facts and facts.get("file") == ADAPTER_FILE:  # the base from its weights (or its file), then the adapter
            base_weights = None if facts.get("base_file") else facts.get("base_weights")
            model = read_adapter(create_model(config["architecture"], pretrained=base_weights or False, **kwargs),
                                 folder, facts)
            names = config.get("class_names")
            with_spec(model, class_names=tuple(names) if names else None)
        else:
            model = create_model(config["architecture"], pretrained=str(folder), **kwargs)
    saved_data = config.get("preprocessing") or config.get("pretrained_cfg")
    with_spec(model, data_config=resolve_data_config(spec_of(model).data_config, saved_data),
              weights=os.fspath(path) if hub else config.get("weights") or str(folder), head=config.get("head"),
              adapter=config.get("adapter"))
    return model.eval()


def _save_unregistered(model: nn.Module, folder: Path, extra: Mapping[str, Any] | None) -> Path:
    """Weights and facts of a model the registry cannot rebuild (`architecture: null`)."""
    from visionzoo import __version__

    spec = spec_of(model)
    names = list(spec.class_names or [])
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, save(tensors))
    config = {
        "architecture": None,
        "num_classes": int(getattr(model, "num_classes", len(names))),
        "class_names": names,
        "model_args": {},
        "data_config": jsonable(spec.data_config),
        "visionzoo_version": __version__,
        **({"head": jsonable(spec.head)} if spec.head else {}),
        **(extra or {}),
    }
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder


def _load_facts_layout(folder: Path, config: dict[str, Any]) -> nn.Module:
    """A folder of weights and facts (`_save_unregistered`'s layout, which visionzoo before 0.1 also
    wrote for registered models): rebuilt when it names a registered architecture."""
    if not config.get("architecture"):
        raise SettingError(f"{folder / CONFIG_FILE} names no registered architecture; the model cannot be rebuilt")
    model = create_model(config["architecture"], num_classes=config["num_classes"], **config.get("model_args", {}))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    with_spec(model, class_names=config.get("class_names"),
              data_config=resolve_data_config(spec_of(model).data_config, config.get("data_config")),
              head=config.get("head"))
    return model.eval()


def _load_zero_shot(folder: Path, config: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    """A saved `ZeroShotClassifier`: its image tower rebuilt from the registry, then every tensor loaded."""
    tensors = load_file(str(folder / WEIGHTS_FILE))
    visual = create_model(config["architecture"], **{**kwargs, "num_classes": config["tower_outputs"]})
    head = tensors["head.weight"]
    bias = tensors.get("head.bias")  # a SigLIP head: its logit bias, and sigmoid probabilities per label
    model = clip_models.ZeroShotClassifier(visual, head, float(head.norm(dim=1).mean()),
                                           None if bias is None else float(bias.mean()))
    model.load_state_dict(tensors)
    return set_spec(model, zero_shot_spec(model, config.get("class_names"), None))
