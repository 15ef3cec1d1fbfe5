"""The preprocessing a model expects, tied to its weights.

`data_config(model)` gives input size, crop fraction, interpolation, mean and std: from the
weights the model was built with (`model.pretrained_cfg`), else from its architecture's
default weight in the catalog, else ImageNet defaults at the model card's input size.
`transforms(model)` turns that into a torchvision.transforms.v2 pipeline.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torchvision.transforms import v2

__all__ = ["IMAGENET_DEFAULTS", "data_config", "transforms"]

IMAGENET_DEFAULTS: dict[str, Any] = {"crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
                                     "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


def data_config(model: nn.Module | str) -> dict[str, Any]:
    """Preprocessing for `model` (a model made by `create_model`, or a registered name)."""
    from visionzoo.registry import get_card, list_models
    from visionzoo.weights.catalog import default_weight

    name = model if isinstance(model, str) else getattr(model, "visionzoo_name", None)
    entry = default_weight(name) if name else None
    cfg = entry.data_config() if entry is not None else {}
    if not isinstance(model, str):  # the weights the model was built with take precedence
        cfg.update({k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if v is not None})
    config = {**IMAGENET_DEFAULTS, **{k: cfg[k] for k in _KEYS if cfg.get(k) is not None}}
    if "input_size" not in config:
        config["input_size"] = (3, 224, 224)
        if name in list_models():  # not every model carrying a name is registered (CLIP pairs, classifiers)
            config["input_size"] = tuple(get_card(name).input_size)
    # A model built for another resolution (img_size=...) is fed at that resolution.
    img_size = None if isinstance(model, str) else (getattr(model, "visionzoo_overrides", None) or {}).get("img_size")
    if img_size is not None:
        side = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        config["input_size"] = (config["input_size"][0], *side)
    config["input_size"] = tuple(int(v) for v in config["input_size"])
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    return config


def transforms(model: nn.Module | str, train: bool = False, **kwargs: Any) -> v2.Compose:
    """The eval pipeline of `data_config(model)` (resize to size / crop_pct, centre crop, normalise), or
    with `train=True` the training engineer's augmentation presets (`preset="light"` etc. in kwargs)."""
    from visionzoo.data.transforms import eval_transform, train_transform

    config = data_config(model)
    if train:
        return train_transform(config, **kwargs)
    if config.get("crop_mode") == "squash":  # resize both sides to the crop, no aspect-preserving crop
        from visionzoo.data.transforms import _interpolation, _to_float_normalized

        height, width = config["input_size"][1:]
        return v2.Compose([v2.ToImage(), v2.Resize((height, width), interpolation=_interpolation(config),
                                                   antialias=True), *_to_float_normalized(config)])
    return eval_transform(config, **kwargs)
