"""Building models: the one place that joins the registry, the weights and the model code, and the
facts about a model (its preprocessing, classes, size, cost)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from visionzoo import clip as clip_models
from visionzoo import siglip_text
from visionzoo.data.config import resolve_data_config, transforms_for
from visionzoo.errors import SettingError
from visionzoo.factory.complexity import shipped_complexity
from visionzoo.factory.spec import ModelSpec, find_spec, set_spec, spec_of
from visionzoo.features import FeatureExtractor
from visionzoo.files import atomic_write_json
from visionzoo.measure import count_gmacs, count_params
from visionzoo.registry import ModelCard, get_card, list_models
from visionzoo.weights import catalog, default_weight, imagenet_class_names, load_pretrained

__all__ = ["create_model", "create_clip", "zero_shot_classifier", "zero_shot_spec", "model_info", "model_complexity",
           "measure_complexity",
           "data_config", "transforms", "class_names", "layer_names", "size_overrides", "cache_dir",
           "code_fingerprint"]


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


def layer_names(name: str) -> tuple[tuple[str, ...], str | None]:
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
        classifier, first_conv = layer_names(name)
        loaded = load_pretrained(model, pretrained, architecture=name,
                                 target_shapes={k: v.shape for k, v in reference.state_dict().items()},
                                 classifier=classifier, first_conv=first_conv, num_classes=num_classes)
    data = resolve_data_config(card.data_config, _default_entry_config(name), loaded.config if loaded else None,
                               input_size=tuple(card.input_size), img_size=overrides.get("img_size"))
    spec = ModelSpec(name=name, overrides=overrides, data_config=data,
                     class_names=loaded.class_names if loaded else None, weights=loaded.name if loaded else None)
    set_spec(model, spec)
    if features_only:
        return set_spec(FeatureExtractor(model, out_indices, name=name), spec)
    return model


def create_clip(name: str = "ViT-B-32", *, pretrained: bool | str = False,
                text_config: clip_models.ClipTextConfig | siglip_text.SigLipTextConfig | None = None,
                **image_overrides: Any) -> clip_models.CLIP | siglip_text.SigLIP:
    """Build a CLIP model by open_clip's name (`visionzoo.clip.CLIP_MODELS`), or a SigLIP 2 pair
    (`visionzoo.siglip_text.SIGLIP_MODELS`, e.g. 'ViT-B-16-SigLIP2').

    `pretrained` names weights for the whole model (image and text towers and logit scale).
    `text_config` replaces the text tower's configuration (small towers for tests);
    `image_overrides` go to the image tower's `create_model`.
    """
    if name in siglip_text.SIGLIP_MODELS:
        return _create_siglip(name, pretrained, text_config, image_overrides)
    if name not in clip_models.CLIP_MODELS:
        raise SettingError(f"unknown CLIP model {name!r}; choose one of "
                           f"{', '.join([*clip_models.CLIP_MODELS, *siglip_text.SIGLIP_MODELS])}")
    image_name, default_text, embed_dim = clip_models.CLIP_MODELS[name]
    if pretrained is True and default_weight(name) is None:  # say so before building a model of a few hundred MB
        raise SettingError(f"CLIP model '{name}' has no default weights in the catalog; pass a weight file "
                         "(pretrained='path/to/open_clip_model.safetensors') or build with random weights")
    visual = create_model(image_name, num_classes=embed_dim, **image_overrides)
    model = clip_models.CLIP(visual, clip_models.TextTransformer(text_config or default_text, embed_dim))
    loaded = None
    if pretrained:  # a composite model: a checkpoint's layout is planned against the model itself
        classifier, first_conv = layer_names(name)
        loaded = load_pretrained(model, pretrained, architecture=name,
                                 target_shapes={k: v.shape for k, v in model.state_dict().items()},
                                 classifier=classifier, first_conv=first_conv, num_classes=embed_dim)
    data = resolve_data_config(clip_models.clip_data_config(visual), loaded.config if loaded else None)
    return set_spec(model, ModelSpec(name=name, overrides=image_overrides, data_config=data, class_names=None,
                                      weights=loaded.name if loaded else None))


def _create_siglip(name: str, pretrained: bool | str, text_config: siglip_text.SigLipTextConfig | None,
                   image_overrides: dict[str, Any]) -> siglip_text.SigLIP:
    """A SigLIP 2 pair: the registered image tower (pooled output, no classifier) and the text tower."""
    image_name, default_text, _ = siglip_text.SIGLIP_MODELS[name]
    if pretrained is True and default_weight(name) is None:
        raise SettingError(f"SigLIP model '{name}' has no default weights in the catalog; pass a weight file "
                           "(pretrained='path/to/open_clip_model.safetensors') or build with random weights")
    visual = create_model(image_name, **image_overrides)  # its pooled output is the image embedding
    text = siglip_text.SigLipTextTransformer(text_config or default_text, embed_dim=visual.num_features)
    model = siglip_text.SigLIP(visual, text)
    loaded = None
    if pretrained:
        loaded = load_pretrained(model, pretrained, architecture=name,
                                 target_shapes={k: v.shape for k, v in model.state_dict().items()}, num_classes=0)
    data = resolve_data_config(clip_models.clip_data_config(visual, sigmoid=True), loaded.config if loaded else None)
    return set_spec(model, ModelSpec(name=name, overrides=image_overrides, data_config=data, class_names=None,
                                      weights=loaded.name if loaded else None))


def zero_shot_classifier(model: clip_models.CLIP | siglip_text.SigLIP, class_names: Sequence[str],
                         templates: Sequence[str] | None = None, batch_size: int = 256,
                         tokenizer: Any = None) -> clip_models.ZeroShotClassifier:
    """A classifier over `class_names` from a CLIP model, with no training.

    Each class weight is the normalised mean of the normalised text embeddings of its prompts,
    one per template (default: the 80 ImageNet templates of OpenAI's CLIP); a template has a `{}`
    where the class name goes. The result shares the image tower with `model`. A SigLIP pair needs
    `tokenizer` (`SigLipTokenizer`); its classifier gives independent sigmoid probabilities per label.
    """
    classifier = clip_models.make_zero_shot_classifier(model, class_names, templates, batch_size=batch_size,
                                                       tokenizer=tokenizer)
    return set_spec(classifier, zero_shot_spec(classifier, class_names, find_spec(model)))


def zero_shot_spec(classifier: clip_models.ZeroShotClassifier, class_names: Sequence[str] | None,
                    clip_spec: ModelSpec | None) -> ModelSpec:
    # the card follows the image tower; preprocessing is CLIP's (short side resized, centre crop, CLIP mean / std)
    # or SigLIP's; a SigLIP head's logits are independent per label, read through a sigmoid (task: multilabel)
    tower = spec_of(classifier.visual)
    sigmoid = classifier.sigmoid
    return ModelSpec(name=tower.name, overrides=tower.overrides,
                     data_config=resolve_data_config(clip_models.clip_data_config(classifier.visual, sigmoid)),
                     class_names=class_names, weights=clip_spec.weights if clip_spec else tower.weights,
                     head={"task": "multilabel"} if sigmoid else None)


# --- facts about models ---------------------------------------------------------------------------------


def data_config(model: nn.Module | str) -> dict[str, Any]:
    """Preprocessing for `model` (a model made by visionzoo, or a registered name): from the weights
    the model was built with, else its architecture's default weight, else ImageNet defaults at the
    card's input size, under the card's own preprocessing (`ModelCard.data_config`). A module visionzoo did not
    make gets the ImageNet defaults."""
    if isinstance(model, str):
        card = get_card(model) if model in list_models() else None
        size = tuple(card.input_size) if card is not None else (3, 224, 224)
        return resolve_data_config(card.data_config if card is not None else None, _default_entry_config(model),
                                   input_size=size)
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
    package = Path(__file__).parents[1]
    digest = hashlib.sha256()
    for path in sorted([*package.glob("models/*.py"), *package.glob("layers/*.py"), package / "registry.py",
                        *package.glob("factory/*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where measured figures are cached (`$VISIONZOO_CACHE`, else the user's cache folder)."""
    root = os.environ.get("VISIONZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "visionzoo")
    return Path(root)


def measure_complexity(name: str) -> dict[str, float | int]:
    """`{"params": int, "gmacs": float}` of a registered variant at its default input size, measured now on
    the `meta` device (no memory, no arithmetic; the FLOP counter's trace costs up to a few CPU-seconds)."""
    card = get_card(name)
    with torch.device("meta"):
        model = create_model(name)
    return {"params": count_params(model), "gmacs": round(count_gmacs(model, card.input_size), 4)}


def model_complexity(name: str) -> dict[str, float | int]:
    """`{"params": int, "gmacs": float}` for a registered variant at its default input size: from the table
    shipped with the package (`factory/complexity.py`) where its row is current, else measured
    (`measure_complexity`) and cached on disk (keyed by a fingerprint of the model code and the variant's
    config), so that `visionzoo list` is instant on a fresh install and after its first run."""
    card = get_card(name)
    shipped = shipped_complexity(card)
    if shipped is not None:
        return shipped
    key = hashlib.sha256(f"{code_fingerprint()}|{torch.__version__}|{card.name}|{card.config!r}|"
                         f"{card.input_size}|{card.num_classes}".encode()).hexdigest()[:24]
    cache_file = cache_dir() / "complexity" / f"{card.name}-{key}.json"
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        pass
    result = measure_complexity(name)
    try:
        atomic_write_json(cache_file, result, indent=None)
    except OSError:
        pass  # a read-only home still gets correct, merely uncached, answers
    return result


def model_info(name: str) -> dict[str, Any]:
    """The model card of a variant, with its parameter count and GMACs measured."""
    return {**get_card(name).as_dict(), **model_complexity(name)}


def size_overrides(card: ModelCard, img_size: int | tuple[int, int]) -> dict[str, Any]:
    """The overrides that build `card`'s model for square `img_size`-pixel inputs, or (H, W) ones: `img_size` for the
    families whose structure depends on it (position embeddings, attention windows and their
    relative-position tables: ViT, DeiT, DINOv2, EVA, Swin, MaxViT, EfficientViT-M), none for the rest.
    Weights published at another size are resampled to it when loaded (`weights.adapt`).

    A model that cannot run at that size raises a one-line `SettingError` here, before any work: it is
    built and run once on the `meta` device (shapes only: no memory, no arithmetic, well under a second).
    Rectangular sizes suit the convolutional families and the ViTs whose position embeddings are
    resampled to an (H, W) patch grid; a family that cannot build or run one is told here in one line.
    """
    if not isinstance(img_size, int):
        height, width = (int(side) for side in img_size)
        if height == width:
            img_size = height
        else:
            return _rectangular_overrides(card, (height, width))
    if img_size == card.input_size[1]:
        return {}
    error = _failure_at(card, img_size)
    if isinstance(error, SettingError):  # the family's own check, which says what would work
        raise SettingError(f"model '{card.name}' cannot run on {img_size} px images: {error}")
    if error is not None:  # a pooling window or kernel larger than the map it meets
        smallest = _smallest_size(card, img_size)
        raise SettingError(f"model '{card.name}' cannot run on {img_size} px images: its feature maps shrink "
                           "below its kernels" + (f"; use {smallest} px or more" if smallest is not None else ""))
    return _img_size_override(card, img_size)


def _rectangular_overrides(card: ModelCard, size: tuple[int, int]) -> dict[str, Any]:
    """`size_overrides` for an (H, W) input with H != W."""
    error = _failure_at(card, size)
    if error is not None:
        # a TypeError: the family's config takes one side (windows, relative-position tables per square grid)
        why = (f"the {card.family} family is built for square inputs only" if isinstance(error, TypeError)
               else str(error).splitlines()[0][:300])
        raise SettingError(f"model '{card.name}' cannot run on {size[0]}x{size[1]} images: {why}; use a square "
                           "--image-size, or a convolutional model or a ViT (its position embeddings are resampled "
                           "to the patch grid)")
    return _img_size_override(card, size)


def _img_size_override(card: ModelCard, img_size: int | tuple[int, int]) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(card.config)} if dataclasses.is_dataclass(card.config) else set()
    return {"img_size": img_size} if "img_size" in fields and img_size != card.input_size[1] else {}


def _failure_at(card: ModelCard, img_size: int | tuple[int, int]) -> Exception | None:
    """What building and running `card`'s model at `img_size` (a side or (H, W)) raises on the meta device, or None."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    try:
        with torch.device("meta"), torch.no_grad():
            create_model(card.name, **_img_size_override(card, img_size)).eval()(
                torch.empty(2, 3, height, width))
    except NotImplementedError:  # an operator without a meta kernel: the real run will tell
        return None
    except (SettingError, RuntimeError, ValueError, TypeError, AssertionError) as error:
        return error
    return None


def _smallest_size(card: ModelCard, failing: int) -> int | None:
    """The smallest size above `failing` the model runs at, by bisection up to its default size (a CNN's
    maps are big enough over one range of sizes); None when `failing` is above the default size."""
    low, high = failing, card.input_size[1]
    if high <= low:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _failure_at(card, middle) is None else (middle, high)
    return high
