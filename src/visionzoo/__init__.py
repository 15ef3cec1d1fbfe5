"""visionzoo: image classification architectures from AlexNet to foundation models.

    import visionzoo
    model = visionzoo.create_model("resnet50", num_classes=10)
    visionzoo.list_models("convnext_*")

The package in layers, each importing only from those below it (pyproject.toml's import contract):

    shells      cli/, serve/
    workflows   choose/ (advice, benchmark, bakeoff/), training/, diagnose/ (explanation, data_audit/),
                embed/ (embeddings, probe), evaluation, prediction, resolve
    deploy      deploy/ (export/, engines/, runtimes/: the torch-free predictors), metrics/
    factory     create_model, model_info, save_model / load_model, ModelSpec
    model code  models/ (one file per family), clip, weights/, data/
    base        registry, layers/, features, heads, measure, errors, files, runtime

The public names below are imported lazily, on first use: `import visionzoo` itself pulls in
no PyTorch, so the torch-free predictors (visionzoo.deploy.runtimes) run where torch is absent.
To export a new public name, add one line to `_EXPORTS`: name -> the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "create_model": "visionzoo.factory",
    "list_models": "visionzoo.registry",
    "list_families": "visionzoo.registry",
    "model_info": "visionzoo.factory",
    "create_clip": "visionzoo.factory",
    "zero_shot_classifier": "visionzoo.factory",
    "load_siglip_tokenizer": "visionzoo.siglip_text",
    "data_config": "visionzoo.factory",
    "transforms": "visionzoo.factory",
    "save_model": "visionzoo.factory",
    "load_model": "visionzoo.factory",
    "spec_of": "visionzoo.factory",
    "with_spec": "visionzoo.factory",
    "ModelSpec": "visionzoo.factory",
    "train": "visionzoo.training.trainer",
    "evaluate": "visionzoo.evaluation",
    "predict": "visionzoo.prediction",
    "pack_shards": "visionzoo.data.pack",
    "lr_find": "visionzoo.training.lr_find",
    "soup": "visionzoo.training.soup",
    "tune": "visionzoo.choose.tune",
    "audit": "visionzoo.diagnose.data_audit",
    "explain": "visionzoo.diagnose.explanation",
    "advise": "visionzoo.choose.advice",
    "transferability": "visionzoo.embed.scores",
    "push": "visionzoo.share.hub",
    "runs": "visionzoo.share.comparison",
    "export": "visionzoo.deploy.verify",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'visionzoo' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
