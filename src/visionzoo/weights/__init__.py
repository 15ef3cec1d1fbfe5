"""Pretrained weights: the catalog, loading from the Hub or local files, and the converters.

    create_model("resnet50", pretrained=True)                  # the default tag of the catalog
    create_model("resnet50", pretrained="resnet50.tv_in1k")    # a named weight
    create_model("resnet50", pretrained="path/to/file.pth")    # a local file or directory
    create_model("resnet50", pretrained="hf-hub:timm/resnet50.a1_in1k")

This package never imports the registry or the model code: `visionzoo.factory` resolves the
architecture and passes in what loading needs (the architecture's name, its state-dict shapes,
the names of its classifier and first convolution), and records what `load_pretrained` returns
(the weight's name, preprocessing and classes) in the model's spec.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.weights.adapt import WeightsMismatchError, fit_state_dict
from visionzoo.weights.catalog import (
    UnknownWeightError,
    WeightEntry,
    catalog,
    default_weight,
    get_weight,
    imagenet_class_names,
    list_weights,
)
from visionzoo.weights.convert import ConversionError, convert_state_dict, find_converter
from visionzoo.weights.files import (
    WEIGHT_SUFFIXES,
    DamagedWeightsError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    WeightsNotAvailableError,
    check_finite,
    hub_download,
    hub_snapshot,
    read_state_dict,
    url_download,
    why_unobtainable,
)

__all__ = ["load_pretrained", "LoadedWeights", "read_folder_config", "WeightEntry", "catalog", "get_weight",
           "list_weights", "default_weight", "imagenet_class_names", "UnknownWeightError", "UnsafeCheckpointError",
           "DamagedWeightsError", "NonFiniteWeightsError", "WeightsNotAvailableError", "WeightsMismatchError", "ConversionError",
           "SAVED_MODEL_FORMAT", "WEIGHTS_FILE", "CONFIG_FILE", "unobtainable_weights", "parse_hub_spec",
           "hub_config", "hub_model_folder", "SAVED_MODEL_PATTERNS"]

logger = logging.getLogger("visionzoo.weights")

SAVED_MODEL_FORMAT = "visionzoo-saved-model"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


@dataclasses.dataclass
class _Source:
    """What a `pretrained=` value resolved to."""

    path: Path
    description: str  # for messages: the weight's name in quotes, or the file
    name: str  # what the model's spec records: the catalog name, the hf-hub spec or the path
    entry: dict[str, Any] | None = None  # the weight's preprocessing, classifier and first-conv names, label set
    class_names: list[str] | None = None
    saved: dict[str, Any] | None = None  # the config.json of a folder written by save_model


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    """What `load_pretrained` loaded, for the model's spec."""

    name: str  # the catalog name (`arch.tag`), `hf-hub:org/repo`, or the file or folder
    config: dict[str, Any]  # the weight's entry: preprocessing keys, label set, ...
    class_names: tuple[str, ...] | None  # the names of the outputs, when the weights say (None after a new head)
    saved: dict[str, Any] | None = None  # config.json of a save_model folder


def _entry_source(entry: WeightEntry) -> _Source:
    if entry.hub:
        path = hub_download(entry.hub["repo"], entry.hub["files"], entry.hub.get("revision"))
    elif entry.url:
        path = url_download(entry.url)
    else:  # pragma: no cover - the catalog test checks every entry has a location
        raise SettingError(f"weight '{entry.name}' names no location")
    return _Source(path, f"'{entry.name}'", entry.name, entry.as_dict())


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """('org/repo', revision or None) of `hf-hub:org/repo[@revision]`."""
    repo, _, revision = spec[len("hf-hub:"):].partition("@")
    if not spec.startswith("hf-hub:") or repo.count("/") != 1:
        raise SettingError(f"Hub models are named 'hf-hub:org/repo[@revision]', got {spec!r}")
    return repo, revision or None


# What a model saved by `save_model` (or pushed by `visionzoo push`) needs from its Hub repo: config.json
# and the weights or adapter files; the plots, card and exported files beside them are not downloaded.
SAVED_MODEL_PATTERNS = ["*.json", "*.safetensors"]


def hub_model_folder(spec: str) -> Path:
    """The local snapshot folder of a `hf-hub:org/repo[@revision]` model written by `save_model` (see
    `files.hub_snapshot`: a folder placed by hand, the Hugging Face cache, or a download)."""
    repo, revision = parse_hub_spec(spec)
    return hub_snapshot(repo, revision, SAVED_MODEL_PATTERNS)


def hub_config(spec: str) -> dict[str, Any] | None:
    """The config.json of the Hub repo `hf-hub:org/repo[@revision]` names (a timm layout, or a model
    written by `save_model` when its `format` is `SAVED_MODEL_FORMAT`); None when it has none or it
    cannot be had."""
    repo, revision = parse_hub_spec(spec)
    try:
        return json.loads(hub_download(repo, ["config.json"], revision).read_text())
    except (WeightsNotAvailableError, ValueError):
        return None


def _hub_source(spec: str) -> _Source:
    repo, revision = parse_hub_spec(spec)
    config = hub_config(spec) or {}  # without one, the model's own defaults apply
    if config.get("format") == SAVED_MODEL_FORMAT:  # pushed by visionzoo: its classes and preprocessing too
        source = _local_source(hub_model_folder(spec))
        return dataclasses.replace(source, description=spec, name=spec)
    entry = _timm_hub_config(config) if config else None
    # timm's layout first; open_clip's file names for image-text pairs (timm/ViT-B-16-SigLIP2 ships only those)
    path = hub_download(repo, ["model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                               "open_clip_pytorch_model.bin"], revision)
    return _Source(path, spec, spec, entry, (entry or {}).pop("class_names", None))


def _timm_hub_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """The preprocessing and classes of a timm-layout Hub repo's config.json."""
    cfg = config.get("pretrained_cfg") or {}
    if not cfg:
        return None
    entry = {k: cfg[k] for k in ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std",
                                 "first_conv") if k in cfg}
    if cfg.get("classifier"):  # timm writes one name as a string, several as a list
        entry["classifier"] = [cfg["classifier"]] if isinstance(cfg["classifier"], str) else list(cfg["classifier"])
    entry["num_classes"] = config.get("num_classes", cfg.get("num_classes"))
    if entry.get("num_classes") == 1000:
        entry["label_set"] = "imagenet-1k"
    if config.get("label_names"):
        entry["class_names"] = list(config["label_names"])
    return entry


def _local_source(path: Path) -> _Source:
    if path.is_dir():
        config = read_folder_config(path)
        if config and config.get("format") == SAVED_MODEL_FORMAT:
            return _Source(path / WEIGHTS_FILE, str(path), str(path),
                           config.get("preprocessing") or config.get("pretrained_cfg"), config.get("class_names"), config)
        files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        preferred = [p for p in files if p.suffix == ".safetensors"] or files
        if len(preferred) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise FileNotFoundError(f"{path} should hold exactly one weight file ({', '.join(WEIGHT_SUFFIXES)}); "
                                    f"found {found}. Pass the file itself")
        entry = _timm_hub_config(config) if config else None
        return _Source(preferred[0], str(preferred[0]), str(preferred[0]), entry, (entry or {}).pop("class_names", None))
    return _Source(path, str(path), str(path))


def read_folder_config(folder: Path) -> dict[str, Any] | None:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise SettingError(f"{config_path} is not valid JSON: {error}") from None


def unobtainable_weights(architecture: str, pretrained: bool | str | os.PathLike | None = True) -> str | None:
    """Why the weights `pretrained` names for `architecture` cannot be had here now (not cached, and
    offline or the Hub unreachable), or None when they can or loading itself will say what is wrong
    (a missing local file, an unknown name). Quick: see `files.why_unobtainable`."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        entry = default_weight(architecture)
        return why_unobtainable(entry.hub, entry.url) if entry is not None else None
    spec = os.fspath(pretrained)
    if spec.startswith("hf-hub:"):
        repo, revision = parse_hub_spec(spec)
        return why_unobtainable({"repo": repo, "files": ["model.safetensors", "pytorch_model.bin"],
                                 "revision": revision}, None)
    if spec in catalog():
        entry = get_weight(spec)
        return why_unobtainable(entry.hub, entry.url)
    return None


def _resolve(name: str, pretrained: bool | str | os.PathLike) -> _Source:
    if pretrained is True:
        entry = default_weight(name)
        if entry is None:
            raise UnknownWeightError(f"model '{name}' has no published weights; `visionzoo list --pretrained` "
                                     "shows the models that have, or pass a local file")
        return _entry_source(entry)
    spec = os.fspath(pretrained)
    if spec.startswith("hf-hub:"):
        return _hub_source(spec)
    path = Path(spec).expanduser()
    if spec not in catalog() and path.exists():
        return _local_source(path)
    if spec not in catalog() and ("/" in spec or os.sep in spec or path.suffix in WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"weight file or folder {spec} does not exist")
    return _entry_source(get_weight(spec))  # a name not in the catalog raises, suggesting close names


def load_pretrained(model: nn.Module, pretrained: bool | str | os.PathLike, *, architecture: str,
                    target_shapes: Mapping[str, torch.Size], classifier: tuple[str, ...] = (),
                    first_conv: str | None = None, num_classes: int) -> LoadedWeights:
    """Load weights named by `pretrained` into `model` (see the module docstring), adapting the
    classifier, the first convolution and position tables where the model differs.

    `architecture` names the model (`pretrained=True` means its default weight); `target_shapes`
    are the state-dict shapes of the architecture as registered (its default head and 3 input
    channels), against which a checkpoint in another layout is converted; `classifier` and
    `first_conv` name the layers that may be adapted, unless the weight's own entry names them.
    """
    source = _resolve(architecture, pretrained)
    state_dict = read_state_dict(source.path)
    check_finite(state_dict, source.description)
    entry = source.entry or {}
    classifier = tuple(entry.get("classifier") or classifier)
    first_conv = entry.get("first_conv") or first_conv
    state_dict = _convert_if_needed(target_shapes, state_dict, source.description, classifier)
    kept = fit_state_dict(model, state_dict, source=source.description, classifier=classifier, first_conv=first_conv,
                          name=architecture)
    cfg = dict(entry)
    if not entry and not kept and num_classes == 1000:
        # A bare 1000-class checkpoint for an ImageNet architecture: its outputs are ImageNet-1k's classes.
        logger.info("%s: no config with the weights; taking its 1000 outputs as the ImageNet-1k classes",
                    source.description)
        cfg["label_set"] = "imagenet-1k"
    if kept:  # a new classifier: the weight's classes no longer describe the outputs
        cfg.pop("label_set", None)
        cfg["num_classes"] = num_classes
    names = None
    if source.class_names is not None and not kept:
        names = tuple(source.class_names)
    elif cfg.get("label_set") == "imagenet-1k" and num_classes == 1000:
        names = imagenet_class_names()
    return LoadedWeights(source.name, cfg, names, source.saved)


def _convert_if_needed(target: Mapping[str, torch.Size], state_dict: dict[str, torch.Tensor], description: str,
                       classifier: tuple[str, ...]) -> dict[str, torch.Tensor]:
    converter = find_converter(set(state_dict), dict(target))
    if converter is None:
        return state_dict
    logger.info("%s: converting from the %s layout", description, converter.name)
    try:
        return convert_state_dict(converter, state_dict, dict(target),
                                  flexible=(*classifier, "pos_embed", "relative_position_bias_table"),
                                  optional=classifier)
    except ConversionError as error:
        raise ConversionError(f"{description}: {error}") from None
