"""The weight catalog: published weights as data (`catalog.json`), one entry per `arch.tag`.

Each entry says where the weight lives (a Hugging Face Hub repo and file, or a URL), its
license, the data it was (pre)trained on, its classes, the preprocessing it expects (input
size, crop fraction, interpolation, mean, std), the layer names the loader adapts (first
convolution, classifier) and the published ImageNet accuracy with its source. One tag per
architecture is its default. `tools/make_weight_catalog.py` regenerates the file.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from visionzoo.errors import UsageError

__all__ = ["WeightEntry", "UnknownWeightError", "catalog", "get_weight", "list_weights", "default_weight",
           "imagenet_class_names"]


class UnknownWeightError(UsageError, KeyError):
    """A weight name that is not in the catalog; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class WeightEntry:
    """One published weight, as the catalog describes it."""

    name: str  # "arch.tag"
    architecture: str
    tag: str
    default: bool
    license: str
    pretraining: str
    num_classes: int
    label_set: str | None  # "imagenet-1k", "imagenet-21k", ... or None for feature / embedding heads
    input_size: tuple[int, int, int]
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    first_conv: str | None = None
    classifier: tuple[str, ...] = ()
    hub: dict[str, Any] | None = None  # {"repo": "timm/resnet50.a1_in1k", "files": [...]} in order of preference
    url: str | None = None
    imagenet: dict[str, Any] | None = None  # {"top1", "top5", "eval_size", "source"}
    test_input_size: tuple[int, int, int] | None = None
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> WeightEntry:
        return cls(
            name=name, architecture=data["architecture"], tag=data["tag"], default=bool(data.get("default")),
            license=data.get("license", "unknown"), pretraining=data.get("pretraining", ""),
            num_classes=int(data["num_classes"]), label_set=data.get("label_set"),
            input_size=tuple(data["input_size"]), crop_pct=float(data.get("crop_pct", 0.875)),
            crop_mode=data.get("crop_mode", "center"), interpolation=data.get("interpolation", "bicubic"),
            mean=tuple(data["mean"]), std=tuple(data["std"]), first_conv=data.get("first_conv"),
            classifier=tuple(data.get("classifier") or ()), hub=data.get("hub"), url=data.get("url"),
            imagenet=data.get("imagenet"),
            test_input_size=tuple(data["test_input_size"]) if data.get("test_input_size") else None,
            notes=tuple(data.get("notes") or ()),
        )

    def data_config(self) -> dict[str, Any]:
        """The preprocessing these weights expect, in the shape `visionzoo.data.config` uses."""
        return {"input_size": self.input_size, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode,
                "interpolation": self.interpolation, "mean": self.mean, "std": self.std}

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name, "architecture": self.architecture, "tag": self.tag, "default": self.default,
            "license": self.license, "pretraining": self.pretraining, "num_classes": self.num_classes,
            "label_set": self.label_set, **self.data_config(), "input_size": list(self.input_size),
            "mean": list(self.mean), "std": list(self.std),
            "first_conv": self.first_conv, "classifier": list(self.classifier),
        }
        if self.hub:
            out["hub"] = self.hub
        if self.url:
            out["url"] = self.url
        if self.imagenet:
            out["imagenet"] = self.imagenet
        return out


@functools.cache
def catalog() -> dict[str, WeightEntry]:
    """Every catalogued weight by name, read once from the packaged `catalog.json`."""
    text = resources.files("visionzoo.weights").joinpath("catalog.json").read_text()
    return {name: WeightEntry.from_dict(name, data) for name, data in json.loads(text)["weights"].items()}


def get_weight(name: str) -> WeightEntry:
    try:
        return catalog()[name]
    except KeyError:
        close = difflib.get_close_matches(name, catalog().keys(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownWeightError(
            f"unknown weight '{name}'{hint} (`visionzoo list --pretrained` shows the {len(catalog())} catalogued "
            "weights; a local file or 'hf-hub:org/repo' works too)") from None


def list_weights(architecture: str | None = None) -> list[WeightEntry]:
    """Catalogued weights, of one architecture or all; each architecture's default first."""
    entries = [e for e in catalog().values() if architecture is None or e.architecture == architecture]
    return sorted(entries, key=lambda e: (e.architecture, not e.default, e.tag))


def default_weight(architecture: str) -> WeightEntry | None:
    """The default weight of an architecture, or None when it has no published weights."""
    for entry in catalog().values():
        if entry.architecture == architecture and entry.default:
            return entry
    return None


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (torchvision's wording)."""
    text = resources.files("visionzoo.weights").joinpath("imagenet_classes.txt").read_text()
    return tuple(line for line in text.splitlines() if line)
