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
towers into `visionzoo.clip.CLIP`; and
efficientnet_pytorch (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Mapping", "Converter", "ConversionError", "CONVERTERS", "find_converter", "convert_state_dict",
           "to_source_layout"]

logger = logging.getLogger("visionzoo.weights")

Shapes = dict[str, torch.Size]


class ConversionError(ValueError):
    """A checkpoint that a converter recognised but whose keys or shapes do not map completely."""


@dataclass(frozen=True)
class Mapping:
    """Where one of our tensors comes from. `source=None`: no source tensor, `fill(shape)` makes it."""

    source: str | None
    to_ours: Callable[[torch.Tensor, torch.Size], torch.Tensor] | None = None
    to_source: Callable[[torch.Tensor], torch.Tensor] | None = None
    fill: Callable[[torch.Size], torch.Tensor] | None = None


def _reshape_to_ours(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return tensor.reshape(shape)


def _flatten_linear(tensor: torch.Tensor) -> torch.Tensor:
    """Back to a Linear layer's (out, in) weight from a 1x1 / kxk conv weight or a (C, 1, 1) scale."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 2 else tensor


def _reshaped(source: str, to_source: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Mapping:
    """A tensor with the same values in another shape (a Linear as a 1x1 conv, a (C,1,1) scale as (C,))."""
    return Mapping(source, _reshape_to_ours, to_source or _flatten_linear)


class Converter:
    """One source layout. Subclasses set `name` and implement `detect` and `plan`."""

    name = ""
    ignored: tuple[str, ...] = ()  # regexes of source keys that carry nothing we keep

    def detect(self, source_keys: set[str], target: Shapes) -> bool:
        raise NotImplementedError

    def plan(self, source_keys: set[str], target: Shapes) -> dict[str, Mapping]:
        raise NotImplementedError

    def is_ignored(self, key: str) -> bool:
        return any(re.search(pattern, key) for pattern in self.ignored)


def _same(keys) -> dict[str, Mapping]:
    return {k: Mapping(k) for k in keys}


def _renamed(target: Shapes, prefix_map: list[tuple[str, str]]) -> dict[str, Mapping]:
    """Keys renamed by the first matching (our prefix, source prefix) pair; unmatched keys keep their name."""
    plan = {}
    for key in target:
        for ours, theirs in prefix_map:
            if key.startswith(ours):
                plan[key] = Mapping(theirs + key[len(ours):])
                break
        else:
            plan[key] = Mapping(key)
    return plan


def _block_indices(target: Shapes, pattern: str) -> list[tuple[int, ...]]:
    """Sorted distinct index tuples of keys matching `pattern` (with integer groups)."""
    found = {tuple(int(g) for g in m.groups()) for k in target if (m := re.match(pattern, k))}
    return sorted(found)


def _prefixed(ours: str, theirs: str, target: Shapes) -> dict[str, Mapping]:
    """Every key of ours under the module `ours`, taken from the same key under `theirs`."""
    return {k: Mapping(theirs + k[len(ours):]) for k in target if k.startswith(ours + ".")}


# --- efficientnet_pytorch ---------------------------------------------------------------------


class EfficientNetPyTorch(Converter):
    """Luke Melas-Kyriazi's efficientnet_pytorch layout (also used by many EfficientNet-Lite ports)."""

    name = "efficientnet_pytorch"

    def detect(self, source_keys, target):
        return "_conv_stem.weight" in source_keys and "conv_stem.weight" in target

    def plan(self, source_keys, target):
        plan = {**_prefixed("conv_stem", "_conv_stem", target), **_prefixed("bn1", "_bn0", target),
                **_prefixed("conv_head", "_conv_head", target), **_prefixed("bn2", "_bn1", target),
                **_prefixed("classifier", "_fc", target)}
        for flat, (stage, index) in enumerate(_block_indices(target, r"blocks\.(\d+)\.(\d+)\.")):
            ours, theirs = f"blocks.{stage}.{index}", f"_blocks.{flat}"
            if f"{ours}.conv_pwl.weight" in target:  # inverted residual: expand, depthwise, project
                parts = [("conv_pw", "_expand_conv"), ("bn1", "_bn0"), ("conv_dw", "_depthwise_conv"),
                         ("bn2", "_bn1"), ("conv_pwl", "_project_conv"), ("bn3", "_bn2")]
            else:  # depthwise-separable first block: depthwise, project
                parts = [("conv_dw", "_depthwise_conv"), ("bn1", "_bn1"), ("conv_pw", "_project_conv"),
                         ("bn2", "_bn2")]
            parts += [("se.conv_reduce", "_se_reduce"), ("se.conv_expand", "_se_expand")]
            for a, b in parts:
                plan.update(_prefixed(f"{ours}.{a}", f"{theirs}.{b}", target))
        return plan


# --- torchvision --------------------------------------------------------------------------------


class TorchvisionVGG(Converter):
    """torchvision's VGG: a Linear classifier where timm's head holds 7x7 and 1x1 convolutions."""

    name = "torchvision VGG"

    def detect(self, source_keys, target):
        return "classifier.0.weight" in source_keys and "pre_logits.fc1.weight" in target

    def plan(self, source_keys, target):
        plan = _same(k for k in target if k.startswith("features."))
        plan["pre_logits.fc1.weight"] = _reshaped("classifier.0.weight")  # (4096, 512*7*7) -> (4096, 512, 7, 7)
        plan["pre_logits.fc1.bias"] = Mapping("classifier.0.bias")
        plan["pre_logits.fc2.weight"] = _reshaped("classifier.3.weight")  # (4096, 4096) -> (4096, 4096, 1, 1)
        plan["pre_logits.fc2.bias"] = Mapping("classifier.3.bias")
        plan.update(_prefixed("head.fc", "classifier.6", target))
        return plan


class TorchvisionViT(Converter):
    name = "torchvision ViT"

    def detect(self, source_keys, target):
        return "encoder.pos_embedding" in source_keys and "pos_embed" in target

    def plan(self, source_keys, target):
        old_mlp = "encoder.layers.encoder_layer_0.mlp.linear_1.weight" in source_keys  # torchvision < 0.13
        fc1, fc2 = ("linear_1", "linear_2") if old_mlp else ("0", "3")
        plan = {"cls_token": Mapping("class_token"), "pos_embed": Mapping("encoder.pos_embedding"),
                **_prefixed("patch_embed.proj", "conv_proj", target), **_prefixed("norm", "encoder.ln", target),
                **_prefixed("head", "heads.head", target)}
        for (i,) in _block_indices(target, r"blocks\.(\d+)\."):
            src = f"encoder.layers.encoder_layer_{i}"
            for a, b in [("norm1", "ln_1"), ("attn.proj", "self_attention.out_proj"), ("norm2", "ln_2"),
                         ("mlp.fc1", f"mlp.{fc1}"), ("mlp.fc2", f"mlp.{fc2}")]:
                plan.update(_prefixed(f"blocks.{i}.{a}", f"{src}.{b}", target))
            plan[f"blocks.{i}.attn.qkv.weight"] = Mapping(f"{src}.self_attention.in_proj_weight")
            plan[f"blocks.{i}.attn.qkv.bias"] = Mapping(f"{src}.self_attention.in_proj_bias")
        return plan


class TorchvisionSwin(Converter):
    name = "torchvision Swin"
    ignored = (r"relative_position_index$",)

    def detect(self, source_keys, target):
        return "features.0.0.weight" in source_keys and "layers.0.blocks.0.attn.relative_position_bias_table" in target

    def plan(self, source_keys, target):
        plan = {**_prefixed("patch_embed.proj", "features.0.0", target), **_prefixed("patch_embed.norm", "features.0.2", target),
                **_prefixed("norm", "norm", target), **_prefixed("head.fc", "head", target)}
        for key in target:
            if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
                stage, block, rest = int(m[1]), m[2], m[3]
                rest = rest.replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.3")
                plan[key] = Mapping(f"features.{2 * stage + 1}.{block}.{rest}")
            elif m := re.match(r"layers\.(\d+)\.downsample\.(.*)$", key):
                plan[key] = Mapping(f"features.{2 * int(m[1])}.{m[2]}")  # merging before stage s = features[2s]
        return plan


class TorchvisionConvNeXt(Converter):
    name = "torchvision ConvNeXt"

    def detect(self, source_keys, target):
        return "features.1.0.layer_scale" in source_keys and "stem.0.weight" in target

    def plan(self, source_keys, target):
        plan = {**_prefixed("stem.0", "features.0.0", target), **_prefixed("stem.1", "features.0.1", target),
                **_prefixed("head.norm", "classifier.0", target), **_prefixed("head.fc", "classifier.2", target)}
        for key in target:
            if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
                src = f"features.{2 * int(m[1]) + 1}.{m[2]}"
                rest = m[3]
                if rest == "gamma":
                    plan[key] = Mapping(f"{src}.layer_scale", _reshape_to_ours, lambda t: t.reshape(-1, 1, 1))
                    continue
                for a, b in [("conv_dw", "block.0"), ("norm", "block.2"), ("mlp.fc1", "block.3"),
                             ("mlp.fc2", "block.5")]:
                    if rest.startswith(a + "."):
                        plan[key] = _reshaped(f"{src}.{b}{rest[len(a):]}")
            elif m := re.match(r"stages\.(\d+)\.downsample\.(.*)$", key):
                plan[key] = Mapping(f"features.{2 * int(m[1])}.{m[2]}")
        return plan


def _mbconv_parts(target: Shapes, block: str) -> list[tuple[str, ...]]:
    """Our layers of one inverted-residual / depthwise-separable block in forward order."""
    if f"{block}.conv_pwl.weight" in target:
        parts = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("se",), ("conv_pwl", "bn3")]
    else:
        parts = [("conv_dw", "bn1"), ("se",), ("conv_pw", "bn2")]
    return [p for p in parts if any(k.startswith(f"{block}.{p[0]}.") for k in target)]


def _torchvision_mbconv(plan: dict, target: Shapes, block: str, source: str) -> None:
    """torchvision numbers a block's layers in order: `block.j.0` conv, `block.j.1` BN, SE `fc1`/`fc2`."""
    for j, part in enumerate(_mbconv_parts(target, block)):
        if part == ("se",):
            plan.update(_prefixed(f"{block}.se.conv_reduce", f"{source}.block.{j}.fc1", target))
            plan.update(_prefixed(f"{block}.se.conv_expand", f"{source}.block.{j}.fc2", target))
        else:
            plan.update(_prefixed(f"{block}.{part[0]}", f"{source}.block.{j}.0", target))
            plan.update(_prefixed(f"{block}.{part[1]}", f"{source}.block.{j}.1", target))


class TorchvisionEfficientNet(Converter):
    name = "torchvision EfficientNet"

    def detect(self, source_keys, target):
        return "features.1.0.block.0.0.weight" in source_keys and "conv_stem.weight" in target

    def plan(self, source_keys, target):
        plan = {**_prefixed("conv_stem", "features.0.0", target), **_prefixed("bn1", "features.0.1", target),
                **_prefixed("classifier", "classifier.1", target)}
        stages = _block_indices(target, r"blocks\.(\d+)\.(\d+)\.")
        last = len({s for s, _ in stages}) + 1
        plan.update({**_prefixed("conv_head", f"features.{last}.0", target), **_prefixed("bn2", f"features.{last}.1", target)})
        for stage, index in stages:
            _torchvision_mbconv(plan, target, f"blocks.{stage}.{index}", f"features.{stage + 1}.{index}")
        return plan


class TorchvisionMobileNetV3(Converter):
    """torchvision's MobileNetV3: blocks numbered flat; the last 1x1 conv before pooling is timm's last stage,
    and the first Linear of the classifier is timm's `conv_head` (a 1x1 conv on the pooled map)."""

    name = "torchvision MobileNetV3"

    def detect(self, source_keys, target):
        return "features.1.block.0.0.weight" in source_keys and "conv_stem.weight" in target

    def plan(self, source_keys, target):
        plan = {**_prefixed("conv_stem", "features.0.0", target), **_prefixed("bn1", "features.0.1", target),
                "conv_head.weight": _reshaped("classifier.0.weight"), "conv_head.bias": Mapping("classifier.0.bias"),
                **_prefixed("classifier", "classifier.3", target)}
        blocks = _block_indices(target, r"blocks\.(\d+)\.(\d+)\.")
        flat = 1
        for stage, index in blocks:
            block = f"blocks.{stage}.{index}"
            if f"{block}.conv.weight" in target:  # the final conv-BN-activation stage
                plan.update({**_prefixed(f"{block}.conv", f"features.{flat}.0", target),
                             **_prefixed(f"{block}.bn1", f"features.{flat}.1", target)})
            else:
                _torchvision_mbconv(plan, target, block, f"features.{flat}")
            flat += 1
        return plan


class DenseNetLegacy(Converter):
    """DenseNet checkpoints saved before PyTorch 0.4 name `norm1` as `norm.1` (and `conv.2` for `conv2`)."""

    name = "DenseNet legacy keys"

    def detect(self, source_keys, target):
        return any(re.search(r"denselayer\d+\.(norm|conv|relu)\.[12]\.", k) for k in source_keys)

    def plan(self, source_keys, target):
        return {k: Mapping(re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k)) for k in target}


# --- papers' official checkpoints ---------------------------------------------------------------


class ConvNeXtOfficial(Converter):
    name = "ConvNeXt official"

    def detect(self, source_keys, target):
        return "downsample_layers.0.0.weight" in source_keys and "stem.0.weight" in target

    def plan(self, source_keys, target):
        plan = {**_prefixed("stem.0", "downsample_layers.0.0", target), **_prefixed("stem.1", "downsample_layers.0.1", target),
                **_prefixed("head.norm", "norm", target), **_prefixed("head.fc", "head", target)}
        for key in target:
            if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
                rest = m[3]
                for a, b in [("conv_dw", "dwconv"), ("mlp.fc1", "pwconv1"), ("mlp.fc2", "pwconv2")]:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                plan[key] = _reshaped(f"stages.{m[1]}.{m[2]}.{rest}")  # the official MLP is Linear
            elif m := re.match(r"stages\.(\d+)\.downsample\.(.*)$", key):
                plan[key] = Mapping(f"downsample_layers.{m[1]}.{m[2]}")
        return plan


class SwinOfficial(Converter):
    """Microsoft's Swin: patch merging ends stage s (`layers.s.downsample`); timm's starts stage s+1."""

    name = "Swin official"
    ignored = (r"relative_position_index$", r"attn_mask$")

    def detect(self, source_keys, target):
        return "layers.0.downsample.reduction.weight" in source_keys and "layers.1.downsample.reduction.weight" in target

    def plan(self, source_keys, target):
        plan = {}
        for key in target:
            if m := re.match(r"layers\.(\d+)\.downsample\.(.*)$", key):
                plan[key] = Mapping(f"layers.{int(m[1]) - 1}.downsample.{m[2]}")
            elif key.startswith("head.fc."):
                plan[key] = Mapping("head." + key[len("head.fc."):])
            else:
                plan[key] = Mapping(key)
        return plan


class DINOv2Official(Converter):
    """Meta's DINOv2 hub checkpoints: `register_tokens`, `mask_token`, SwiGLU `w12`/`w3`, chunked blocks."""

    name = "DINOv2 official"
    ignored = (r"^mask_token$",)

    def detect(self, source_keys, target):
        official = "mask_token" in source_keys or "register_tokens" in source_keys or any(
            ".mlp.w12." in k for k in source_keys)
        return official and "blocks.0.ls1.gamma" in target

    def plan(self, source_keys, target):
        chunked = {}
        for key in source_keys:  # with block_chunks > 0 blocks are named blocks.<chunk>.<global index>
            if m := re.match(r"blocks\.(\d+)\.(\d+)\.", key):
                chunked[int(m[2])] = f"blocks.{m[1]}.{m[2]}"
        # The giant model's SwiGLU packs gate and value in fc1 (twice fc2's input width); Meta names it w12 / w3.
        fc1, fc2 = target.get("blocks.0.mlp.fc1.weight"), target.get("blocks.0.mlp.fc2.weight")
        swiglu = fc1 is not None and fc2 is not None and fc1[0] == 2 * fc2[1]
        plan = {}
        for key in target:
            source = key
            if key == "reg_token":
                source = "register_tokens"
            elif m := re.match(r"blocks\.(\d+)\.(.*)$", key):
                rest = m[2]
                if swiglu:
                    rest = rest.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
                source = f"{chunked.get(int(m[1]), f'blocks.{m[1]}')}.{rest}"
            plan[key] = Mapping(source)
        return plan


class CLIPImageTower(Converter):
    """OpenAI CLIP and open_clip ViT checkpoints (`visual.*`); the image tower only.

    CLIP projects the pooled token with `visual.proj` (C, D) and no bias: it becomes our
    `head` (D, C) with a zero bias. Loading into an image tower alone leaves the text
    tower's keys out, named in one log line; `CLIPModel` loads both towers.
    """

    name = "CLIP image tower"
    ignored = (r"^(?!visual\.)",)  # text tower, logit_scale, ...

    def detect(self, source_keys, target):
        return "visual.class_embedding" in source_keys and "cls_token" in target

    def plan(self, source_keys, target):
        v = "visual."
        plan = {"cls_token": Mapping(v + "class_embedding", _reshape_to_ours, lambda t: t.reshape(-1)),
                "pos_embed": Mapping(v + "positional_embedding", _reshape_to_ours, lambda t: t.reshape(t.shape[1:])),
                "patch_embed.proj.weight": Mapping(v + "conv1.weight"),
                **_prefixed("norm_pre", v + "ln_pre", target), **_prefixed("norm", v + "ln_post", target)}
        for (i,) in _block_indices(target, r"blocks\.(\d+)\."):
            src = f"{v}transformer.resblocks.{i}"
            for a, b in [("norm1", "ln_1"), ("attn.proj", "attn.out_proj"), ("norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
                plan.update(_prefixed(f"blocks.{i}.{a}", f"{src}.{b}", target))
            plan[f"blocks.{i}.attn.qkv.weight"] = Mapping(f"{src}.attn.in_proj_weight")
            plan[f"blocks.{i}.attn.qkv.bias"] = Mapping(f"{src}.attn.in_proj_bias")
        if "head.weight" in target:
            plan["head.weight"] = Mapping(v + "proj", lambda t, shape: t.T.contiguous(), lambda t: t.T.contiguous())
            plan["head.bias"] = Mapping(None, fill=lambda shape: torch.zeros(shape))
        return plan


class CLIPModel(Converter):
    """A whole OpenAI / open_clip checkpoint into `visionzoo.clip.CLIP`: the image tower as
    `CLIPImageTower` maps it (under `visual.`), the text tower by open_clip's own names (under
    `text.`), and the logit scale."""

    name = "CLIP image and text towers"
    ignored = (r"^(input_resolution|context_length|vocab_size)$",)  # OpenAI's files carry these as tensors

    def detect(self, source_keys, target):
        return "visual.class_embedding" in source_keys and "text.token_embedding.weight" in target

    def plan(self, source_keys, target):
        visual = {k[len("visual."):]: v for k, v in target.items() if k.startswith("visual.")}
        plan = {f"visual.{k}": m for k, m in CLIPImageTower().plan(source_keys, visual).items()}
        plan.update({k: Mapping(k[len("text."):]) for k in target if k.startswith("text.")})
        if "logit_scale" in target:
            plan["logit_scale"] = Mapping("logit_scale")
        return plan


CONVERTERS: tuple[Converter, ...] = (
    EfficientNetPyTorch(), TorchvisionVGG(), TorchvisionViT(), TorchvisionSwin(), TorchvisionConvNeXt(),
    TorchvisionEfficientNet(), TorchvisionMobileNetV3(), DenseNetLegacy(), ConvNeXtOfficial(), SwinOfficial(),
    DINOv2Official(), CLIPModel(), CLIPImageTower(),
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


def convert_state_dict(converter: Converter, state_dict: dict[str, torch.Tensor], target: Shapes, *,
                       flexible: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """`state_dict` in our names. Every planned key must be present with our shape, except keys
    under a `flexible` prefix (classifier, position tables), whose shapes the adapter checks."""
    plan = converter.plan(set(state_dict), target)
    out, used, missing, mismatched = {}, set(), [], []
    for ours, mapping in plan.items():
        if mapping.source is None:
            out[ours] = mapping.fill(target[ours])
            continue
        if mapping.source not in state_dict:
            if not ours.endswith("num_batches_tracked"):
                missing.append(f"{mapping.source} (for {ours})")
            continue
        tensor = state_dict[mapping.source]
        used.add(mapping.source)
        flexible_key = any(ours == p or ours.startswith(p + ".") or ours.endswith(p) for p in flexible)
        if mapping.to_ours is not None:
            if mapping.to_ours is not _reshape_to_ours or tensor.numel() == target[ours].numel():
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
