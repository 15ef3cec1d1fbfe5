"""Training and fine-tuning: `visionzoo.train(model_or_name, data, **settings)`.

See `visionzoo.training.settings` for every setting and the recipes, `trainer` for the loop
and how its parts fit (`model`, `losses`, `state`, `step`, `hooks`, `after`; the loaders are
`visionzoo.data.loaders`), `checkpoint` for the on-disk format. (The package is `training`, not `train`, so that the
function `visionzoo.train` and a subpackage never compete for one name.)

The names below are imported on first use, so `visionzoo.training.command` (the CLI's parser)
loads without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "visionzoo.training.trainer",
    "TrainResult": "visionzoo.training.trainer",
    "NonFiniteLossError": "visionzoo.training.trainer",
    "TrainSettings": "visionzoo.training.settings",
    "RECIPES": "visionzoo.training.settings",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'visionzoo.training' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
