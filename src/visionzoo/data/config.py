"""The preprocessing a model expects, as a data-config dict, and the pipeline it describes.

A data config has timm's keys: `input_size` (C, H, W), `crop_pct`, `crop_mode`,
`interpolation`, `mean`, `std`, and visionzoo's `resize_mode` (crop, squash or letterbox; see
`visionzoo.data.resize`; where no layer names it, `resize_mode_of` reads it from `crop_mode` when used,
so weights that say squash keep meaning squash). `resolve_data_config` layers the sources of those facts (the
architecture's default weight, then the weights the model was built with) over ImageNet
defaults; `visionzoo.factory.data_config(model)` calls it with the model's spec.
`transforms_for(config)` turns a config into a torchvision.transforms.v2 pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchvision.transforms import v2

from visionzoo.data import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.data.resize import check_resize_mode
from visionzoo.data.transforms import eval_transform, train_transform

__all__ = ["IMAGENET_DEFAULTS", "DATA_CONFIG_KEYS", "resolve_data_config", "transforms_for"]

IMAGENET_DEFAULTS: dict[str, Any] = {"crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
                                     "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
DATA_CONFIG_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "resize_mode")


def resolve_data_config(*layers: Mapping[str, Any] | None, input_size: tuple[int, ...] = (3, 224, 224),
                        img_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """ImageNet defaults, then each of `layers` in turn (later ones win; None values are skipped).

    `input_size` applies when no layer names one (the model card's size); `img_size` (a model
    built for another resolution) sets the spatial size last, as the model is fed at it.
    """
    config: dict[str, Any] = {**IMAGENET_DEFAULTS, "input_size": input_size}
    for layer in layers:
        config.update({k: layer[k] for k in DATA_CONFIG_KEYS if (layer or {}).get(k) is not None})
    if img_size is not None:
        side = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        config["input_size"] = (config["input_size"][0], *side)
    config["input_size"] = tuple(int(v) for v in config["input_size"])
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    if config.get("resize_mode") is not None:  # named by a layer; else read from crop_mode where used
        check_resize_mode(config["resize_mode"])
    return config


def transforms_for(config: Mapping[str, Any], train: bool = False, **kwargs: Any) -> v2.Compose:
    """The eval pipeline of `config` (fit to the input by its resize mode, normalise), or with
    `train=True` the training augmentation presets (`preset="light"` etc. in kwargs)."""
    config = dict(config)
    if train:
        return train_transform(config, **kwargs)
    return eval_transform(config, **kwargs)
