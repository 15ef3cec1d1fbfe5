"""Training and fine-tuning: `train(model_or_name, data, **settings)`.

See `visionzoo.train.settings` for every setting and the recipes, `trainer` for the loop,
`checkpoint` for the on-disk format.
"""

from visionzoo.train.settings import RECIPES, TrainSettings
from visionzoo.train.trainer import NonFiniteLossError, TrainResult, train

__all__ = ["train", "TrainResult", "TrainSettings", "RECIPES", "NonFiniteLossError"]


import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    """`visionzoo.train(...)` calls `train` even where `visionzoo.train` resolves to this package
    (after `import visionzoo.train.trainer`, say): the package and the function share a name."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
