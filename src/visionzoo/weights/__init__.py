"""Pretrained weights: the catalog, loading from the Hub or local files, converters, saving.

    create_model("resnet50", pretrained=True)                  # the default tag of the catalog
    create_model("resnet50", pretrained="resnet50.tv_in1k")    # a named weight
    create_model("resnet50", pretrained="path/to/file.pth")    # a local file or directory
    create_model("resnet50", pretrained="hf-hub:timm/resnet50.a1_in1k")
    save_model(model, "runs/best"); load_model("runs/best")    # safetensors + config.json

A model built with weights carries `model.pretrained_cfg` (the weight's entry: preprocessing,
classes) so that `visionzoo.preprocess` and `predict` follow the weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from visionzoo.weights.adapt import WeightsMismatchError, fit_state_dict
from visionzoo.weights.catalog import (UnknownWeightError, WeightEntry, catalog, default_weight, get_weight,
                                       imagenet_class_names, list_weights)
from visionzoo.weights.convert import ConversionError, convert_state_dict, find_converter
from visionzoo.weights.files import (WEIGHT_SUFFIXES, NonFiniteWeightsError, UnsafeCheckpointError,
                                     WeightsNotAvailableError, check_finite, hub_download, read_state_dict,
                                     url_download)
from visionzoo.errors import SettingError

__all__ = ["load_pretrained", "save_model", "load_model", "class_names", "WeightEntry", "catalog", "get_weight",
           "list_weights", "default_weight", "imagenet_class_names", "UnknownWeightError", "UnsafeCheckpointError",
           "NonFiniteWeightsError", "WeightsNotAvailableError", "WeightsMismatchError", "ConversionError",
           "SAVED_MODEL_FORMAT"]

logger = logging.getLogger("visionzoo.weights")

SAVED_MODEL_FORMAT = "visionzoo-saved-model"
_WEIGHTS_FILE, _CONFIG_FILE = "model.safetensors", "config.json"


@dataclasses.dataclass
class _Source:
    """What a `pretrained=` value resolved to."""

    path: Path
    description: str
    entry: dict[str, Any] | None = None  # the pretrained_cfg the model will carry
    class_names: list[str] | None = None


def _architecture_layers(model: nn.Module) -> tuple[tuple[str, ...], str | None]:
    """Classifier and first-conv names of the model's architecture, from its default catalog entry."""
    entry = default_weight(getattr(model, "visionzoo_name", ""))
    if entry is None:
        return (), None
    return entry.classifier, entry.first_conv


def _entry_source(entry: WeightEntry) -> _Source:
    if entry.hub:
        path = hub_download(entry.hub["repo"], entry.hub["files"], entry.hub.get("revision"))
    elif entry.url:
        path = url_download(entry.url)
    else:  # pragma: no cover - the catalog test checks every entry has a location
        raise SettingError(f"weight '{entry.name}' names no location")
    return _Source(path, f"'{entry.name}'", entry.as_dict())


def _hub_source(spec: str) -> _Source:
    repo, _, revision = spec[len("hf-hub:"):].partition("@")
    if repo.count("/") != 1:
        raise SettingError(f"hf-hub weights are named 'hf-hub:org/repo[@revision]', got {spec!r}")
    path = hub_download(repo, ["model.safetensors", "pytorch_model.bin"], revision or None)
    entry = None
    try:
        config_path = hub_download(repo, ["config.json"], revision or None)
        entry = _timm_hub_config(json.loads(config_path.read_text()))
    except (WeightsNotAvailableError, ValueError):
        pass  # a repo without config.json: the model's own defaults apply
    return _Source(path, spec, entry)


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
        config = _read_config(path)
        if config and config.get("format") == SAVED_MODEL_FORMAT:
            return _Source(path / _WEIGHTS_FILE, str(path), config.get("pretrained_cfg") or config.get("preprocessing"),
                           config.get("class_names"))
        files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        preferred = [p for p in files if p.suffix == ".safetensors"] or files
        if len(preferred) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise FileNotFoundError(f"{path} should hold exactly one weight file ({', '.join(WEIGHT_SUFFIXES)}); "
                                    f"found {found}. Pass the file itself")
        entry = _timm_hub_config(config) if config else None
        return _Source(preferred[0], str(preferred[0]), entry, (entry or {}).pop("class_names", None))
    return _Source(path, str(path))


def _read_config(folder: Path) -> dict[str, Any] | None:
    config_path = folder / _CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise SettingError(f"{config_path} is not valid JSON: {error}") from None


def _resolve(model: nn.Module, pretrained: bool | str | os.PathLike) -> _Source:
    name = getattr(model, "visionzoo_name", "")
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


def load_pretrained(model: nn.Module, pretrained: bool | str | os.PathLike, *, num_classes: int,
                    in_chans: int) -> None:
    """Load weights named by `pretrained` into `model` (see the module docstring), adapting the
    classifier, the first convolution and position tables where the model differs."""
    source = _resolve(model, pretrained)
    state_dict = read_state_dict(source.path)
    check_finite(state_dict, source.description)
    classifier, first_conv = _architecture_layers(model)
    entry = source.entry or {}
    classifier = tuple(entry.get("classifier") or classifier)
    first_conv = entry.get("first_conv") or first_conv
    state_dict = _convert_if_needed(model, state_dict, source.description, classifier)
    kept = fit_state_dict(model, state_dict, source=source.description, classifier=classifier, first_conv=first_conv)
    cfg = dict(entry)
    if not entry and not kept and num_classes == 1000:
        # A bare 1000-class checkpoint for an ImageNet architecture: its outputs are ImageNet-1k's classes.
        logger.info("%s: no config with the weights; taking its 1000 outputs as the ImageNet-1k classes",
                    source.description)
        cfg["label_set"] = "imagenet-1k"
    if kept:  # a new classifier: the weight's classes no longer describe the outputs
        cfg.pop("label_set", None)
        cfg["num_classes"] = num_classes
    model.pretrained_cfg = cfg
    if source.class_names is not None and not kept:
        model.class_names = list(source.class_names)


def _convert_if_needed(model: nn.Module, state_dict: dict[str, torch.Tensor], description: str,
                       classifier: tuple[str, ...]) -> dict[str, torch.Tensor]:
    # The plan is made against the architecture as registered (its default head and 3 input
    # channels, with the user's config overrides), so that a checkpoint's full layout maps;
    # the head and input adaptation to the user's model happens afterwards.
    from visionzoo.registry import create_model, list_models

    name = getattr(model, "visionzoo_name", None)
    target_model = model
    if name is not None and name in list_models():  # a composite model (CLIP) is planned against itself
        with torch.device("meta"):
            target_model = create_model(name, **getattr(model, "visionzoo_overrides", {}))
    target = {k: v.shape for k, v in target_model.state_dict().items()}
    converter = find_converter(set(state_dict), target)
    if converter is None:
        return state_dict
    logger.info("%s: converting from the %s layout", description, converter.name)
    return convert_state_dict(converter, state_dict, target,
                              flexible=(*classifier, "pos_embed", "relative_position_bias_table"))


# --- saving and loading trained models ------------------------------------------------------------


def class_names(model: nn.Module) -> list[str] | None:
    """Human-readable names of the model's outputs, when known."""
    names = getattr(model, "class_names", None)
    if names is not None:
        return list(names)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("label_set") == "imagenet-1k" and getattr(model, "num_classes", None) == 1000:
        return list(imagenet_class_names())
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise SettingError(f"cannot save override value {value!r} ({type(value).__name__}) in config.json")


def _in_chans(model: nn.Module) -> int:
    _, first_conv = _architecture_layers(model)
    state = model.state_dict()
    if first_conv and f"{first_conv}.weight" in state:
        return int(state[f"{first_conv}.weight"].shape[1])
    return int(next(v.shape[1] for v in state.values() if v.ndim == 4))


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model` to the directory `path`: `model.safetensors` and `config.json` (architecture,
    overrides, num_classes, in_chans, class names, preprocessing). Files are replaced atomically."""
    from safetensors.torch import save_file

    from visionzoo.preprocess import data_config

    name = getattr(model, "visionzoo_name", None)
    if name is None:
        raise SettingError("save_model needs a model made by visionzoo.create_model (it records the architecture)")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise SettingError(f"{folder} is a file; save_model writes a directory")
    folder.mkdir(parents=True, exist_ok=True)
    from visionzoo.clip import ZeroShotClassifier

    # clone: tied or shared tensors are stored separately, as safetensors requires
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    preprocessing = {k: _jsonable(v) for k, v in data_config(model).items()}
    zero_shot = isinstance(model, ZeroShotClassifier)  # a registered image tower plus class embeddings
    tower = model.visual if zero_shot else model
    config = {
        "format": SAVED_MODEL_FORMAT,
        "format_version": 1,
        "architecture": name,
        **({"kind": "zero_shot", "tower_outputs": int(tower.num_classes)} if zero_shot else {}),
        "overrides": _jsonable(getattr(tower, "visionzoo_overrides", {})),
        "num_classes": int(getattr(model, "num_classes")),
        "in_chans": _in_chans(model),
        "class_names": class_names(model),
        "preprocessing": preprocessing,
        "pretrained_cfg": _jsonable({**(getattr(model, "pretrained_cfg", None) or {}), **preprocessing}),
    }
    for file_name, write in ((_WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})),
                             (_CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))):
        partial = folder / (file_name + ".partial")
        write(partial)
        os.replace(partial, folder / file_name)
    return folder


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild a model written by `save_model`, in eval mode, with its weights, classes and preprocessing."""
    from visionzoo.registry import create_model

    folder = Path(path)
    config = _read_config(folder) if folder.is_dir() else None
    if not config or config.get("format") != SAVED_MODEL_FORMAT:
        raise FileNotFoundError(f"{folder} is not a model saved by visionzoo.save_model (expected a directory with "
                                f"{_CONFIG_FILE} and {_WEIGHTS_FILE})")
    kwargs = {**config.get("overrides", {}), **overrides}
    kwargs.setdefault("in_chans", config.get("in_chans", 3))
    if config.get("kind") == "zero_shot":
        return _load_zero_shot(folder, config, kwargs)
    kwargs.setdefault("num_classes", config["num_classes"])
    return create_model(config["architecture"], pretrained=str(folder), **kwargs).eval()


def _load_zero_shot(folder: Path, config: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    """A saved `ZeroShotClassifier`: its image tower rebuilt from the registry, then every tensor loaded."""
    from safetensors.torch import load_file

    from visionzoo.clip import ZeroShotClassifier
    from visionzoo.registry import create_model

    tensors = load_file(str(folder / _WEIGHTS_FILE))
    visual = create_model(config["architecture"], **{**kwargs, "num_classes": config["tower_outputs"]})
    head = tensors["head.weight"]
    model = ZeroShotClassifier(visual, head, float(head.norm(dim=1).mean()), config.get("class_names"))
    model.load_state_dict(tensors)
    return model.eval()
