"""Freezing the stem and the first stages of a network (`--freeze-stages N`).

Stages come from the family's `feature_info` (the stage outputs that `features_only` hooks):
the stem is every parameter registered before the first stage, and stage k holds the
parameters registered after stage k-1 up to the end of its module. A feature level at stride 2
that is not a numbered block (ResNet's `act1`, MaxViT's `stem`, DenseNet's `features.norm0`)
belongs to the stem. Token models without multi-scale stages (ViT, DeiT, EVA) count their
transformer blocks (`blocks.0`, `blocks.1`, ...) as stages, the patch embedding and the tokens
as the stem.

Frozen parameters stop needing gradients, so backward never runs through the frozen prefix
(the cheap part of fine-tuning on a CPU), and frozen BatchNorm layers keep their running
statistics: `set_frozen_eval(model)` puts every module whose parameters are all frozen back in
eval mode after each `model.train()`. Fine-tuning only the later stages of a pretrained network is the
"freeze the early layers" practice of transfer learning (Yosinski et al., 2014, "How
transferable are features in deep neural networks?": early features are general).
"""

from __future__ import annotations

import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.factory import model_name

__all__ = ["freeze_stages", "set_batchnorm_eval", "set_frozen_eval", "stage_prefixes"]


def _is_stem_level(module_name: str, reduction: int) -> bool:
    return reduction <= 2 and not any(part.isdigit() for part in module_name.split("."))


def stage_prefixes(model: nn.Module) -> list[str]:
    """Module names of the stages, in order (the stem excluded)."""
    infos = list(getattr(model, "feature_info", None) or [])
    if infos:
        return [info.module for info in infos if not _is_stem_level(info.module, info.reduction)]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        return [f"blocks.{index}" for index in range(len(blocks))]
    name = model_name(model)
    raise SettingError(f"model '{name}' declares no stages (feature_info) and has no `blocks`; "
                     "--freeze-stages needs one of them")


def freeze_stages(model: nn.Module, count: int) -> set[str]:
    """Freeze the stem and the first `count` stages (0: the stem only); returns the frozen parameters' names."""
    stages = stage_prefixes(model)
    if not 0 <= count <= len(stages):
        name = model_name(model)
        raise SettingError(f"freeze_stages must be between 0 (the stem only) and {len(stages)} for '{name}' "
                         f"(its stages: {', '.join(stages)}), got {count}")
    # The frozen prefix ends with the last parameter of the last frozen stage (or before the first stage).
    names = [name for name, _ in model.named_parameters()]
    if count == 0:
        first = stages[0] + "."
        end = next((i for i, name in enumerate(names) if name.startswith(first)), len(names))
    else:
        last = stages[count - 1] + "."
        inside = [i for i, name in enumerate(names) if name.startswith(last)]
        end = inside[-1] + 1 if inside else 0
    frozen = set(names[:end])
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return frozen


def set_frozen_eval(model: nn.Module) -> None:
    """Modules whose parameters are all frozen (normalisation layers above all: their running
    statistics) in eval mode; call after `model.train()`."""
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()


def set_batchnorm_eval(model: nn.Module) -> None:
    """Every BatchNorm layer in eval mode (`--freeze-bn`; call after `model.train()`): it normalises with
    its pretrained running statistics and keeps them, while its affine weight and bias still train.
    Small fine-tuning batches give noisy batch statistics, and a head fitted on evaluation-mode
    features (LP-FT's probe) then sees the features it was fitted on."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
