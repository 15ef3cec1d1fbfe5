"""Converters from other published checkpoint layouts to visionzoo's (timm's) names.

A converter is a plan: for every key of our model it names the source key that fills it,
and how the tensor is reshaped on the way (`to_ours`) and back (`to_source`). Converting
asserts that every key of the plan is in the checkpoint with the right shape and that no
checkpoint key is left over (other than the buffers a layout recomputes anyway); the same
plan run backwards writes our weights in the source layout, which the tests use for exact
round trips. A converter is chosen by looking at the checkpoint's keys.

Layouts: torchvision's VGG, ViT, Swin, ConvNeXt, EfficientNet and MobileNetV3; DenseNet's
legacy keys (`norm.1` for `norm1`); the official ConvNeXt, Swin and DINOv2 checkpoints
(DeiT's official checkpoints already use timm's names inside a `model` wrapper, which
`read_state_dict` removes); OpenAI CLIP and open_clip checkpoints, image tower alone or both
towers into `visionzoo.clip.CLIP`; open_clip's SigLIP 2 pairs (`visual.trunk.`); and
efficientnet_pytorch (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`).
"""

from __future__ import annotations

import logging

import torch

from visionzoo.weights.convert.base import ConversionError, Converter, Mapping, Shapes, reshape_to_ours
from visionzoo.weights.convert.efficientnet_pytorch import EfficientNetPyTorch
from visionzoo.weights.convert.official import CLIPImageTower, CLIPModel, ConvNeXtOfficial, DINOv2Official, SwinOfficial
from visionzoo.weights.convert.siglip import SigLIPModel
from visionzoo.weights.convert.torchvision import (
    DenseNetLegacy,
    TorchvisionConvNeXt,
    TorchvisionEfficientNet,
    TorchvisionMobileNetV3,
    TorchvisionSwin,
    TorchvisionVGG,
    TorchvisionViT,
)

__all__ = ["Mapping", "Converter", "ConversionError", "CONVERTERS", "find_converter", "convert_state_dict",
           "to_source_layout"]

logger = logging.getLogger("visionzoo.weights")


CONVERTERS: tuple[Converter, ...] = (
    EfficientNetPyTorch(), TorchvisionVGG(), TorchvisionViT(), TorchvisionSwin(), TorchvisionConvNeXt(),
    TorchvisionEfficientNet(), TorchvisionMobileNetV3(), DenseNetLegacy(), ConvNeXtOfficial(), SwinOfficial(),
    DINOv2Official(), CLIPModel(), CLIPImageTower(), SigLIPModel(),
)


def find_converter(source_keys: set[str] | list[str], target: Shapes) -> Converter | None:
    """The converter whose layout the checkpoint's keys show, or None when they are ours already."""
    source_keys = set(source_keys)
    if set(target) <= source_keys:
        return None
    for converter in CONVERTERS:
        if converter.detect(source_keys, target):
            return converter
    return None


def _shown(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def convert_state_dict(converter: Converter, state_dict: dict[str, torch.Tensor], target: Shapes, *,
                       flexible: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """`state_dict` in our names. Every planned key must be present with our shape, except keys
    under a `flexible` prefix (classifier, position tables), whose shapes the adapter checks, and
    keys under an `optional` prefix (the classifier: a feature backbone ships none), which may be absent."""
    plan = converter.plan(set(state_dict), target)
    out, used, missing, mismatched = {}, set(), [], []
    for ours, mapping in plan.items():
        if mapping.source is None:
            out[ours] = mapping.fill(target[ours])
            continue
        if mapping.source not in state_dict:
            if not ours.endswith("num_batches_tracked") and not _under(ours, optional):
                missing.append(f"{mapping.source} (for {ours})")
            continue
        tensor = state_dict[mapping.source]
        used.add(mapping.source)
        flexible_key = _under(ours, flexible) or any(ours.endswith(p) for p in flexible)
        if mapping.to_ours is not None:
            if mapping.to_ours is not reshape_to_ours or tensor.numel() == target[ours].numel():
                tensor = mapping.to_ours(tensor, target[ours])
        if tensor.shape != target[ours] and not flexible_key:
            mismatched.append(f"{mapping.source} {tuple(tensor.shape)} for {ours} {tuple(target[ours])}")
            continue
        out[ours] = tensor
    leftover = [k for k in state_dict if k not in used and not converter.is_ignored(k)
                and not k.endswith("num_batches_tracked")]
    if missing or mismatched or leftover:
        parts = [f"{len(missing)} missing: {_shown(missing)}" if missing else "",
                 f"{len(mismatched)} shape-mismatched: {_shown(mismatched, 3)}" if mismatched else "",
                 f"{len(leftover)} not mapped: {_shown(leftover)}" if leftover else ""]
        raise ConversionError(f"checkpoint looks like the {converter.name} layout but does not convert: "
                              + "; ".join(p for p in parts if p))
    skipped = [k for k in state_dict if k not in used and converter.is_ignored(k)]
    if skipped:
        logger.info("%s converter: left out %d keys the model does not hold (%s)", converter.name, len(skipped),
                    _shown(skipped, 3))
    return out


def to_source_layout(converter: Converter, our_state_dict: dict[str, torch.Tensor],
                     source_keys: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Our weights written in `converter`'s source layout (the inverse of `convert_state_dict`)."""
    target = {k: v.shape for k, v in our_state_dict.items()}
    out = {}
    for ours, mapping in converter.plan(set(source_keys), target).items():
        if mapping.source is None:
            continue
        tensor = our_state_dict[ours]
        out[mapping.source] = mapping.to_source(tensor) if mapping.to_source is not None else tensor
    return out
