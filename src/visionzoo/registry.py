"""The model registry: every architecture variant is registered here once, by name.

A variant is a `ModelCard`: the builder that makes it, its config, and the facts a user
wants before building it (family, paper, year, input size, the reference it matches, the
training recipes that suit it). Parameter counts and GMACs are never typed in:
`visionzoo.factory.model_info` measures them on the `meta` device. This module holds cards and
their lookup only; building a model from a card is `visionzoo.factory.create_model`.

Every family file in `visionzoo.models` ends the same way: a `VARIANTS: dict[str, Config]`
table, then one `register_family` call that states the family's facts once and, through
`VariantExtras`, only what a variant says differently. Among those facts are the ones the
workflows ask of a family, read through `family_facts(family)`: where a class activation map is
read (`CamLayer`), which modules LoRA adapts (`LoraTargets`), and whether it is built for edge
devices. So adding a family touches its own file only.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import importlib.util
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from visionzoo.errors import SettingError, UnknownModelError

__all__ = [
    "CamLayer",
    "FamilyFacts",
    "LoraTargets",
    "ModelCard",
    "RECIPE_STYLES",
    "UnknownModelError",
    "VariantExtras",
    "register_family",
    "register_model",
    "get_card",
    "family_facts",
    "list_models",
    "list_families",
]


# Which published training recipes suit a model (see `visionzoo.training.settings`):
# AdamW with layer-wise lr decay for transformers and their hybrids, the ConvNeXt variant of it,
# or SGD for the classic convolutional networks.
RECIPE_STYLES = ("vit", "convnext", "convnet")


@dataclass(frozen=True)
class ModelCard:
    """What the registry knows of one variant, kept as data."""

    name: str
    family: str
    paper: str  # title of the paper that introduced the family
    year: int
    builder: Callable[..., nn.Module]  # builder(config, **kwargs) -> nn.Module
    config: Any  # the family's frozen config dataclass instance for this variant
    recipe_style: str  # one of RECIPE_STYLES
    input_size: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000
    reference: str = ""  # e.g. "timm:resnet50" or "torchvision:alexnet"
    defaults: dict[str, Any] = field(default_factory=dict)  # builder kwargs this variant sets
    # preprocessing of the architecture itself, under what weights say (e.g. CIFAR's mean and std)
    data_config: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_library(self) -> str:
        return self.reference.split(":", 1)[0]

    @property
    def reference_name(self) -> str:
        return self.reference.split(":", 1)[1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "year": self.year,
            "input_size": list(self.input_size),
            "num_classes": self.num_classes,
            "reference": self.reference,
            "recipe_style": self.recipe_style,
        }


_MODELS_PACKAGE = "visionzoo.models"

# (output of the CAM module, the model, the input's (H, W)) -> the same activations as (N, C, h, w)
ToMap = Callable[[torch.Tensor, nn.Module, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class CamLayer:
    """Where a family's class activation maps are read (`visionzoo.diagnose.explanation`).

    `module` is a dotted path from the model, where `-1` indexes a sequence: `"layer4"`,
    `"blocks.-1.norm1"`. `to_map` lays the module's output out as (N, C, h, w); None when it
    already is, e.g. `visionzoo.layers.feature_map.tokens_to_map` for a ViT's (N, prefix + h*w, C).
    """

    module: str
    to_map: ToMap | None = None


@dataclass(frozen=True)
class LoraTargets:
    """The modules LoRA adapts in a family (`visionzoo.training.adapt`), as module-name patterns
    (peft's full-match regexes): the attention's projections, and optionally the MLP's."""

    attention: str
    mlp: str | None = None


@dataclass(frozen=True)
class FamilyFacts:
    """What the workflows ask of a family, as its model file registered it; see `family_facts`."""

    family: str
    cam_layer: CamLayer | None = None  # None: explain has no layer to read
    lora_targets: LoraTargets | None = None  # None: --adapt lora is refused (no attention worth adapting)
    edge: bool = False  # built for edge devices (small, quantises well): `visionzoo advise --target edge` says so


@dataclass(frozen=True)
class VariantExtras:
    """What one variant says apart from its family, for `register_family`; None keeps the family's.

    For example a DINOv2 backbone among the ViTs: `VariantExtras(family="dinov2", paper=...,
    year=2023, num_classes=0)`, or a distilled DeiT: `VariantExtras(builder=VisionTransformerDistilled)`.
    """

    family: str | None = None
    paper: str | None = None
    year: int | None = None
    builder: Callable[..., nn.Module] | None = None
    recipe_style: str | None = None
    input_size: tuple[int, int, int] | None = None
    num_classes: int | None = None  # 0: published as a backbone, without a classifier
    reference: str | None = None  # 'library:name' where the reference model has another name
    defaults: dict[str, Any] | None = None  # builder kwargs this variant sets
    data_config: dict[str, Any] | None = None  # its preprocessing where no weights give one (mean, std, crop_pct)
    edge: bool | None = None  # for a variant of its own family: whether that family is built for the edge


_REGISTRY: dict[str, ModelCard] = {}
_FAMILIES: dict[str, FamilyFacts] = {}
_families_loaded = False


def register_model(card: ModelCard) -> ModelCard:
    """Add one variant. A name can be registered once only."""
    if card.name in _REGISTRY:
        raise SettingError(
            f"model '{card.name}' is already registered (family '{_REGISTRY[card.name].family}'); "
            "pick another name"
        )
    if ":" not in card.reference:
        raise SettingError(f"model '{card.name}': reference must read 'library:name', got {card.reference!r}")
    if card.recipe_style not in RECIPE_STYLES:
        raise SettingError(f"model '{card.name}': unknown recipe_style {card.recipe_style!r}; "
                           f"choose one of {', '.join(RECIPE_STYLES)}")
    _REGISTRY[card.name] = card
    return card


def register_family(
    variants: Mapping[str, Any],
    *,
    family: str,
    paper: str,
    year: int,
    builder: Callable[..., nn.Module],
    recipe_style: str,
    reference_library: str = "timm",
    cam_layer: CamLayer | None = None,
    lora_targets: LoraTargets | None = None,
    edge: bool = False,
    extras: Mapping[str, VariantExtras] | None = None,
) -> list[ModelCard]:
    """Register one card per entry of `variants` (name -> config) with the family's facts.

    What a variant says differently comes from its `extras` entry. Unless an entry sets them:
    the reference is the model of the same name in `reference_library`; the input size is the
    config's `img_size` when it has one (a model whose position embeddings or attention windows
    are built for one size), else 224; and the classifier has 1000 classes (ImageNet-1k).

    `cam_layer`, `lora_targets` and `edge` are the family's facts for the workflows (see
    `FamilyFacts`); a variant that `extras` puts in a family of its own (DINOv2 among the ViTs)
    shares them, except `edge` where its entry sets it.

        register_family(VARIANTS, family="resnet", paper="Deep Residual Learning for Image Recognition",
                        year=2015, builder=ResNet, recipe_style="convnet", cam_layer=CamLayer("layer4"),
                        extras={"resnext50_32x4d": VariantExtras(paper=..., year=2016)})
    """
    extras = dict(extras or {})
    strays = sorted(set(extras) - set(variants))
    if strays:
        raise SettingError(f"family '{family}': extras for {', '.join(repr(s) for s in strays)}, "
                           "which VARIANTS does not list")
    cards = []
    family_facts_of: dict[str, FamilyFacts] = {}
    for name, config in variants.items():
        size = getattr(config, "img_size", 224)
        facts = dict(family=family, paper=paper, year=year, builder=builder, recipe_style=recipe_style,
                     input_size=(3, size, size), num_classes=1000, reference=f"{reference_library}:{name}",
                     defaults={}, data_config={})
        extra = extras.get(name, VariantExtras())
        facts.update({f.name: getattr(extra, f.name) for f in dataclasses.fields(extra)
                      if getattr(extra, f.name) is not None})
        workflow_facts = FamilyFacts(facts["family"], cam_layer, lora_targets,
                                     edge if extra.edge is None else extra.edge)
        if family_facts_of.setdefault(facts["family"], workflow_facts) != workflow_facts:
            raise SettingError(f"family '{facts['family']}': its variants give it different facts (edge); "
                               "a family's facts are one for all its variants")
        facts.pop("edge", None)
        cards.append(register_model(ModelCard(name=name, config=config, **facts)))
    for name, workflow_facts in family_facts_of.items():
        if _FAMILIES.get(name, workflow_facts) != workflow_facts:
            raise SettingError(f"family '{name}' is registered twice with different facts; register a family "
                               "in one register_family call")
        _FAMILIES[name] = workflow_facts
    return cards


def _load_families() -> None:
    """Import every module of `visionzoo.models` once, so that its variants register.

    Done lazily, on the first query, so that `import visionzoo` stays cheap.
    The family modules are found by name, not imported statically: they import the registry to
    register their variants, and the registry (the base layer) never depends on them.
    """
    global _families_loaded
    if _families_loaded:
        return
    _families_loaded = True
    package = importlib.util.find_spec(_MODELS_PACKAGE)
    for module in pkgutil.iter_modules(package.submodule_search_locations):
        if not module.name.startswith("_"):
            importlib.import_module(f"{_MODELS_PACKAGE}.{module.name}")


def get_card(name: str) -> ModelCard:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        if "/" in name or "\\" in name or name.startswith((".", "~")):  # meant as a path to a saved model
            raise UnknownModelError(f"'{name}' is neither a registered model nor an existing file or folder "
                                    "(check the path; `visionzoo list` shows the registered names)") from None
        close = difflib.get_close_matches(name, _REGISTRY.keys(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model '{name}'{hint} (`visionzoo list` shows all {len(_REGISTRY)})"
        ) from None


def family_facts(family: str) -> FamilyFacts:
    """The facts the workflows ask of `family` (CAM layer, LoRA targets, edge), as its model file registered them.

    A family registered card by card through `register_model` has none: no CAM layer, no LoRA
    targets, not built for the edge.
    """
    _load_families()
    if family not in _FAMILIES and family not in list_families():
        close = difflib.get_close_matches(family, list_families(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise SettingError(f"unknown family '{family}'{hint} (`visionzoo list` shows each model's family)")
    return _FAMILIES.get(family, FamilyFacts(family))


def list_models(pattern: str = "*", *, family: str | None = None) -> list[str]:
    """Registered names matching a shell-style `pattern`, optionally of one `family`, sorted."""
    _load_families()
    if family is not None and family not in list_families():
        close = difflib.get_close_matches(family, list_families(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise SettingError(f"unknown family '{family}'{hint}")
    names = (
        name
        for name, card in _REGISTRY.items()
        if fnmatch.fnmatchcase(name, pattern) and (family is None or card.family == family)
    )
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list:
    """Sort 'resnet18' before 'resnet101': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_families() -> list[str]:
    _load_families()
    return sorted({card.family for card in _REGISTRY.values()})
