"""The network a run trains, made from the settings in one place: `build_model`.

It creates the registered model (with the recipe's drop rates, from the pretrained weights
asked for) or takes the given module, gives it a classifier for the data's classes, finds
the head's parameters and freezes what the settings freeze.

Extension point: how a new head is initialised, freezing by stage (`--freeze-stages`) and
adapters (LoRA through peft) go here, as steps on the model before it is returned; the
trainer then moves it to the device and wraps it (EMA, DDP, compile). The returned head
names are the parameters the optimizer treats as the head (`optim.build_optimizer`).
"""

from __future__ import annotations

import torch.nn as nn

import visionzoo
from visionzoo.training.optim import head_parameter_names
from visionzoo.training.settings import TrainSettings
from visionzoo.errors import SettingError

__all__ = ["build_model"]


def build_model(model_or_name: nn.Module | str, num_classes: int, settings: TrainSettings,
                pretrained: bool | str = False) -> tuple[nn.Module, set[str]]:
    """(the model to train, its head's parameter names), not yet moved to the device nor wrapped."""
    if isinstance(model_or_name, nn.Module):
        model = model_or_name
    else:
        overrides = {}
        if settings.drop_path_rate:
            overrides["drop_path_rate"] = settings.drop_path_rate
        if settings.drop_rate:
            overrides["drop_rate"] = settings.drop_rate
        model = visionzoo.create_model(model_or_name, num_classes=num_classes, pretrained=pretrained or False,
                                       **overrides)
    if getattr(model, "num_classes", num_classes) != num_classes:
        if not hasattr(model, "reset_classifier"):
            raise SettingError(f"the model has {model.num_classes} outputs for {num_classes} classes")
        model.reset_classifier(num_classes)
    head_names = head_parameter_names(model, num_classes)
    if settings.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in head_names)
    return model, head_names
