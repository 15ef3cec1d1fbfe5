"""The network a run trains, made from the settings in one place: `build_model`.

It creates the registered model (with the recipe's drop rates, at the run's image size, from
the pretrained weights asked for: `factory.size_overrides`, which refuses a size the model cannot
run at before anything is built, and position tables resampled from weights of another size) or
takes the given module, gives it a classifier for the data's classes, finds
the head's parameters and freezes what the settings freeze.

Extension point: adapters (LoRA through peft) go here, as steps on the model before it is
returned; the trainer then moves it to the device and wraps it (EMA, DDP, compile). The
returned head names are the parameters the optimizer treats as the head
(`optim.build_optimizer`).

A classifier the run made (new classes on pretrained weights, or `reset_classifier` here)
starts at the transfer recipes' initialisation (`settings.head_init_std`: zeros or a small
normal, `transfer.init_new_head_`); from scratch (`head_init_std` None) it keeps the
reference's. `settings.freeze_stages` freezes the stem and the first stages
(`freeze.freeze_stages`).
"""

from __future__ import annotations

import torch.nn as nn

import visionzoo
from visionzoo.errors import SettingError
from visionzoo.factory import find_spec, size_overrides
from visionzoo.registry import get_card
from visionzoo.training.freeze import freeze_stages
from visionzoo.training.optim import head_parameter_names
from visionzoo.training.settings import TrainSettings
from visionzoo.training.transfer import init_new_head_

__all__ = ["build_model"]


def build_model(model_or_name: nn.Module | str, num_classes: int, settings: TrainSettings,
                pretrained: bool | str = False) -> tuple[nn.Module, set[str], bool]:
    """(the model to train, its head's parameter names, whether its head is new and was initialised
    for transfer), not yet moved to the device nor wrapped."""
    if isinstance(model_or_name, nn.Module):
        model = model_or_name
    else:
        overrides = size_overrides(get_card(model_or_name), settings.image_size) if settings.image_size else {}
        if settings.drop_path_rate:
            overrides["drop_path_rate"] = settings.drop_path_rate
        if settings.drop_rate:
            overrides["drop_rate"] = settings.drop_rate
        model = visionzoo.create_model(model_or_name, num_classes=num_classes, pretrained=pretrained or False,
                                       **overrides)
    # Weights that kept their head name its outputs (`ModelSpec.class_names`); a head made for other
    # classes has none. (A bare checkpoint with the data's class count but no names counts as new.)
    spec = find_spec(model)
    new_head = bool(pretrained) and spec is not None and spec.weights is not None and spec.class_names is None
    if getattr(model, "num_classes", num_classes) != num_classes:
        if not hasattr(model, "reset_classifier"):
            raise SettingError(f"the model has {model.num_classes} outputs for {num_classes} classes")
        model.reset_classifier(num_classes)
        new_head = True
    head_names = head_parameter_names(model, num_classes)
    new_head = new_head and settings.head_init_std is not None and init_new_head_(model, head_names,
                                                                                  settings.head_init_std)
    if settings.freeze_stages is not None:
        freeze_stages(model, settings.freeze_stages)
    if settings.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in head_names)
    return model, head_names, new_head
