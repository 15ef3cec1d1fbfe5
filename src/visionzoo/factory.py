"""Building models: the one place that joins the registry, the weights and the model code.

    model = create_model("resnet50", num_classes=10, pretrained=True)
    spec_of(model).weights            # 'resnet50.a1_in1k'
    save_model(model, "runs/best"); load_model("runs/best")    # safetensors + config.json

Every model made here carries one frozen `ModelSpec` (architecture, overrides, preprocessing,
classes, weights, head, adapter), set once and read through `spec_of`; `with_spec` derives a
changed spec (a trained model's classes, say). The layers below never see the spec: the
registry gives cards, `visionzoo.weights` gets the shapes and layer names it needs as
arguments, `visionzoo.data.config` and `visionzoo.data.transforms` take data-config dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save, save_file

from visionzoo import clip as clip_models
from visionzoo.data.config import resolve_data_config, transforms_for
from visionzoo.errors import SettingError
from visionzoo.features import FeatureExtractor
from visionzoo.files import atomic_write, atomic_write_json, jsonable
from visionzoo.measure import count_gmacs, count_params
from visionzoo.registry import ModelCard, get_card, list_models
from visionzoo.weights import (
    CONFIG_FILE,
    SAVED_MODEL_FORMAT,
    WEIGHTS_FILE,
    catalog,
    default_weight,
    imagenet_class_names,
    load_pretrained,
    read_folder_config,
)
from visionzoo.weights.lora import ADAPTER_FILE, is_lora, read_adapter, write_adapter

__all__ = ["size_overrides", "ModelSpec", "spec_of", "find_spec", "with_spec", "model_name", "registered_name", "create_model",
           "create_clip", "zero_shot_classifier", "model_info", "model_complexity", "data_config", "transforms",
           "class_names", "save_model", "load_model"]


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


def _set_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    model.__dict__[_SPEC] = spec  # plain attribute: not a parameter, buffer or submodule
    return model


def with_spec(model: nn.Module, spec: ModelSpec | None = None, /, **changes: Any) -> nn.Module:
    """Replace fields of the model's spec (`dataclasses.replace`), store it back; returns the model.

    A network of your own gets its first spec as `spec`, so that visionzoo's workflows read its
    preprocessing and classes: `with_spec(net, ModelSpec("mynet", {}, {"mean": ..., ...}, None, None))`.
    """
    return _set_spec(model, dataclasses.replace(spec if spec is not None else spec_of(model), **changes))


def model_name(model: nn.Module) -> str:
    """The architecture of a visionzoo model, else the module's class name (for messages and metadata)."""
    spec = find_spec(model)
    return spec.name if spec is not None else type(model).__name__


def registered_name(model: nn.Module) -> str | None:
    """The registered architecture the model can be rebuilt from, else None (a network of your own)."""
    spec = find_spec(model)
    return spec.name if spec is not None and spec.name in list_models() else None


# --- building ---------------------------------------------------------------------------------------


def _split_overrides(card: ModelCard, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Overrides naming a config field change the config; the rest go to the model's constructor."""
    config_fields = {f.name for f in dataclasses.fields(card.config)} if dataclasses.is_dataclass(card.config) else set()
    config_changes = {k: v for k, v in overrides.items() if k in config_fields}
    kwargs = {k: v for k, v in overrides.items() if k not in config_fields}
    parameters = inspect.signature(card.builder).parameters.values()
    accepted = {p.name for p in parameters
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)} - {"config"}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    unknown = sorted(set(kwargs) - accepted) if not takes_any else []
    if unknown:
        raise SettingError(
            f"model '{card.name}' does not accept {', '.join(repr(u) for u in unknown)}; "
            f"it accepts {', '.join(sorted(accepted | config_fields))}"
        )
    config = dataclasses.replace(card.config, **config_changes) if config_changes else card.config
    return config, kwargs


def _layer_names(name: str) -> tuple[tuple[str, ...], str | None]:
    """Classifier and first-conv names of an architecture, from its default catalog entry, or, for a
    variant without published weights (efficientnet_lite1: a local file only), from a variant of the
    same family that has them: one family's variants share their module names."""
    entry = default_weight(name)
    if entry is None:
        from visionzoo.weights.catalog import list_weights

        registered, family = set(list_models()), get_card(name).family
        entry = next((e for e in list_weights() if e.default and e.classifier and e.architecture in registered
                      and get_card(e.architecture).family == family), None)
    return (entry.classifier, entry.first_conv) if entry is not None else ((), None)


def _default_entry_config(name: str) -> dict[str, Any]:
    entry = default_weight(name)
    return entry.data_config() if entry is not None else {}


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int = 3,
    pretrained: bool | str = False,
    features_only: bool = False,
    out_indices: list[int] | tuple[int, ...] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered variant (`list_models()`).
        num_classes: classifier outputs; None keeps the variant's default (1000 for ImageNet),
            0 removes the classifier so the model returns pooled features.
        in_chans: input channels.
        pretrained: False; True for the variant's default weights; an `arch.tag` weight name;
            a local file or directory; or `hf-hub:org/repo`.
        features_only: return a `FeatureExtractor` giving a list of multi-scale maps.
        out_indices: which feature levels `features_only` returns (default: all).
        **overrides: config fields (e.g. `img_size`, `window_size`) or constructor arguments
            (e.g. `drop_rate`, `drop_path_rate`).
    """
    card = get_card(name)
    config, kwargs = _split_overrides(card, {**card.defaults, **overrides})
    if num_classes is None:
        num_classes = card.num_classes
    if not isinstance(in_chans, int) or in_chans < 1:
        raise SettingError(f"in_chans must be a positive integer, got {in_chans!r}")
    if out_indices is not None and not features_only:
        raise SettingError("out_indices is only meaningful with features_only=True")
    model = card.builder(config, num_classes=num_classes, in_chans=in_chans, **kwargs)
    loaded = None
    if pretrained:
        # A checkpoint in another layout is planned against the architecture as registered (its
        # default head and 3 input channels, with the user's config overrides), so that its full
        # layout maps; the head and input adaptation to the user's model happens afterwards.
        with torch.device("meta"):
            reference = card.builder(config, num_classes=card.num_classes, in_chans=3, **kwargs)
        classifier, first_conv = _layer_names(name)
        loaded = load_pretrained(model, pretrained, architecture=name,
                                 target_shapes={k: v.shape for k, v in reference.state_dict().items()},
                                 classifier=classifier, first_conv=first_conv, num_classes=num_classes)
    data = resolve_data_config(_default_entry_config(name), loaded.config if loaded else None,
                               input_size=tuple(card.input_size), img_size=overrides.get("img_size"))
    spec = ModelSpec(name=name, overrides=overrides, data_config=data,
                     class_names=loaded.class_names if loaded else None, weights=loaded.name if loaded else None)
    _set_spec(model, spec)
    if features_only:
        return _set_spec(FeatureExtractor(model, out_indices, name=name), spec)
    return model


def create_clip(name: str = "ViT-B-32", *, pretrained: bool | str = False,
                text_config: clip_models.ClipTextConfig | None = None, **image_overrides: Any) -> clip_models.CLIP:
    """Build a CLIP model by open_clip's name (`visionzoo.clip.CLIP_MODELS`).

    `pretrained` names weights for the whole model (image and text towers and logit scale).
    `text_config` replaces the text tower's configuration (small towers for tests);
    `image_overrides` go to the image tower's `create_model`.
    """
    if name not in clip_models.CLIP_MODELS:
        raise SettingError(f"unknown CLIP model {name!r}; choose one of {', '.join(clip_models.CLIP_MODELS)}")
    image_name, default_text, embed_dim = clip_models.CLIP_MODELS[name]
    if pretrained is True and default_weight(name) is None:  # say so before building a model of a few hundred MB
        raise SettingError(f"CLIP model '{name}' has no default weights in the catalog; pass a weight file "
                         "(pretrained='path/to/open_clip_model.safetensors') or build with random weights")
    visual = create_model(image_name, num_classes=embed_dim, **image_overrides)
    model = clip_models.CLIP(visual, clip_models.TextTransformer(text_config or default_text, embed_dim))
    loaded = None
    if pretrained:  # a composite model: a checkpoint's layout is planned against the model itself
        classifier, first_conv = _layer_names(name)
        loaded = load_pretrained(model, pretrained, architecture=name,
                                 target_shapes={k: v.shape for k, v in model.state_dict().items()},
                                 classifier=classifier, first_conv=first_conv, num_classes=embed_dim)
    data = resolve_data_config(clip_models.clip_data_config(visual), loaded.config if loaded else None)
    return _set_spec(model, ModelSpec(name=name, overrides=image_overrides, data_config=data, class_names=None,
                                      weights=loaded.name if loaded else None))


def zero_shot_classifier(model: clip_models.CLIP, class_names: Sequence[str], templates: Sequence[str] | None = None,
                         batch_size: int = 256) -> clip_models.ZeroShotClassifier:
    """A classifier over `class_names` from a CLIP model, with no training.

    Each class weight is the normalised mean of the normalised text embeddings of its prompts,
    one per template (default: the 80 ImageNet templates of OpenAI's CLIP); a template has a `{}`
    where the class name goes. The result shares the image tower with `model`.
    """
    classifier = clip_models.make_zero_shot_classifier(model, class_names, templates, batch_size=batch_size)
    return _set_spec(classifier, _zero_shot_spec(classifier, class_names, find_spec(model)))


def _zero_shot_spec(classifier: clip_models.ZeroShotClassifier, class_names: Sequence[str] | None,
                    clip_spec: ModelSpec | None) -> ModelSpec:
    # the card follows the image tower; preprocessing is CLIP's (short side resized, centre crop, CLIP mean / std)
    tower = spec_of(classifier.visual)
    return ModelSpec(name=tower.name, overrides=tower.overrides,
                     data_config=resolve_data_config(clip_models.clip_data_config(classifier.visual)),
                     class_names=class_names, weights=clip_spec.weights if clip_spec else tower.weights)


# --- facts about models ---------------------------------------------------------------------------------


def data_config(model: nn.Module | str) -> dict[str, Any]:
    """Preprocessing for `model` (a model made by visionzoo, or a registered name): from the weights
    the model was built with, else its architecture's default weight, else ImageNet defaults at the
    card's input size. A module visionzoo did not make gets the ImageNet defaults."""
    if isinstance(model, str):
        size = tuple(get_card(model).input_size) if model in list_models() else (3, 224, 224)
        return resolve_data_config(_default_entry_config(model), input_size=size)
    spec = find_spec(model)
    return resolve_data_config(spec.data_config if spec is not None else None)


def transforms(model: nn.Module | str, train: bool = False, **kwargs: Any):
    """The eval pipeline of `data_config(model)` (resize to size / crop_pct, centre crop, normalise), or
    with `train=True` the training augmentation presets (`preset="light"` etc. in kwargs)."""
    return transforms_for(data_config(model), train=train, **kwargs)


def class_names(model: nn.Module) -> list[str] | None:
    """Human-readable names of the model's outputs, when known (and still one per output: a
    classifier replaced since, `reset_classifier`, has outputs the names no longer describe)."""
    spec = find_spec(model)
    names = spec.class_names if spec is not None else None
    if names is None and spec is not None and spec.weights and getattr(model, "num_classes", None) == 1000:
        entry = catalog().get(spec.weights)  # weights named from the catalog, trained on ImageNet-1k
        if entry is not None and entry.label_set == "imagenet-1k":
            names = imagenet_class_names()
    outputs = getattr(model, "num_classes", None)
    if names is None or (isinstance(outputs, int) and outputs != len(names)):
        return None
    return list(names)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the source that decides a model's shape: any edit invalidates the caches."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*package.glob("models/*.py"), *package.glob("layers/*.py"), package / "registry.py",
                        package / "factory.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where measured figures are cached (`$VISIONZOO_CACHE`, else the user's cache folder)."""
    root = os.environ.get("VISIONZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "visionzoo")
    return Path(root)


def model_complexity(name: str) -> dict[str, float | int]:
    """`{"params": int, "gmacs": float}` for a registered variant at its default input size, measured on
    the `meta` device and cached on disk (keyed by a fingerprint of the model code and the variant's config),
    so that `visionzoo list` is instant after its first run."""
    card = get_card(name)
    key = hashlib.sha256(f"{code_fingerprint()}|{torch.__version__}|{card.name}|{card.config!r}|"
                         f"{card.input_size}|{card.num_classes}".encode()).hexdigest()[:24]
    cache_file = cache_dir() / "complexity" / f"{card.name}-{key}.json"
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        pass
    with torch.device("meta"):
        model = create_model(name)
    result = {"params": count_params(model), "gmacs": round(count_gmacs(model, card.input_size), 4)}
    try:
        atomic_write_json(cache_file, result, indent=None)
    except OSError:
        pass  # a read-only home still gets correct, merely uncached, answers
    return result


def model_info(name: str) -> dict[str, Any]:
    """The model card of a variant, with its parameter count and GMACs measured."""
    return {**get_card(name).as_dict(), **model_complexity(name)}


# --- saving and loading trained models ------------------------------------------------------------


def _in_chans(model: nn.Module, name: str) -> int:
    _, first_conv = _layer_names(name)
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
        files.insert(0, (WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})))
    for file_name, write in files:
        partial = folder / (file_name + ".partial")
        write(partial)
        os.replace(partial, folder / file_name)
    return folder


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild a model written by `save_model`, in eval mode, with its weights and its spec (classes,
    preprocessing, head, adapter)."""
    folder = Path(path)
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
              weights=config.get("weights") or str(folder), head=config.get("head"), adapter=config.get("adapter"))
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
    model = clip_models.ZeroShotClassifier(visual, head, float(head.norm(dim=1).mean()))
    model.load_state_dict(tensors)
    return _set_spec(model, _zero_shot_spec(model, config.get("class_names"), None))


def size_overrides(card, img_size: int) -> dict[str, Any]:
    """Models whose structure depends on the input size (ViT, Swin, ...) are built for it."""
    if img_size == card.input_size[1]:
        return {}
    fields = {f.name for f in dataclasses.fields(card.config)} if dataclasses.is_dataclass(card.config) else set()
    return {"img_size": img_size} if "img_size" in fields else {}
