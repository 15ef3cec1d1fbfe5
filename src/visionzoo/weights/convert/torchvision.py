"""torchvision's layouts: VGG, ViT, Swin, ConvNeXt, EfficientNet, MobileNetV3, and DenseNet's legacy keys."""

from __future__ import annotations

import re

from visionzoo.weights.convert.base import (
    Converter,
    Mapping,
    Shapes,
    block_indices,
    prefixed,
    reshape_to_ours,
    reshaped,
    same,
)

# --- torchvision --------------------------------------------------------------------------------


class TorchvisionVGG(Converter):
    """torchvision's VGG: a Linear classifier where timm's head holds 7x7 and 1x1 convolutions."""

    name = "torchvision VGG"

    def detect(self, source_keys, target):
        return "classifier.0.weight" in source_keys and "pre_logits.fc1.weight" in target

    def plan(self, source_keys, target):
        plan = same(k for k in target if k.startswith("features."))
        plan["pre_logits.fc1.weight"] = reshaped("classifier.0.weight")  # (4096, 512*7*7) -> (4096, 512, 7, 7)
        plan["pre_logits.fc1.bias"] = Mapping("classifier.0.bias")
        plan["pre_logits.fc2.weight"] = reshaped("classifier.3.weight")  # (4096, 4096) -> (4096, 4096, 1, 1)
        plan["pre_logits.fc2.bias"] = Mapping("classifier.3.bias")
        plan.update(prefixed("head.fc", "classifier.6", target))
        return plan


class TorchvisionViT(Converter):
    name = "torchvision ViT"

    def detect(self, source_keys, target):
        return "encoder.pos_embedding" in source_keys and "pos_embed" in target

    def plan(self, source_keys, target):
        old_mlp = "encoder.layers.encoder_layer_0.mlp.linear_1.weight" in source_keys  # torchvision < 0.13
        fc1, fc2 = ("linear_1", "linear_2") if old_mlp else ("0", "3")
        plan = {"cls_token": Mapping("class_token"), "pos_embed": Mapping("encoder.pos_embedding"),
                **prefixed("patch_embed.proj", "conv_proj", target), **prefixed("norm", "encoder.ln", target),
                **prefixed("head", "heads.head", target)}
        for (i,) in block_indices(target, r"blocks\.(\d+)\."):
            src = f"encoder.layers.encoder_layer_{i}"
            for a, b in [("norm1", "ln_1"), ("attn.proj", "self_attention.out_proj"), ("norm2", "ln_2"),
                         ("mlp.fc1", f"mlp.{fc1}"), ("mlp.fc2", f"mlp.{fc2}")]:
                plan.update(prefixed(f"blocks.{i}.{a}", f"{src}.{b}", target))
            plan[f"blocks.{i}.attn.qkv.weight"] = Mapping(f"{src}.self_attention.in_proj_weight")
            plan[f"blocks.{i}.attn.qkv.bias"] = Mapping(f"{src}.self_attention.in_proj_bias")
        return plan


class TorchvisionSwin(Converter):
    name = "torchvision Swin"
    ignored = (r"relative_position_index$",)

    def detect(self, source_keys, target):
        return "features.0.0.weight" in source_keys and "layers.0.blocks.0.attn.relative_position_bias_table" in target

    def plan(self, source_keys, target):
        plan = {**prefixed("patch_embed.proj", "features.0.0", target), **prefixed("patch_embed.norm", "features.0.2", target),
                **prefixed("norm", "norm", target), **prefixed("head.fc", "head", target)}
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
        plan = {**prefixed("stem.0", "features.0.0", target), **prefixed("stem.1", "features.0.1", target),
                **prefixed("head.norm", "classifier.0", target), **prefixed("head.fc", "classifier.2", target)}
        for key in target:
            if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
                src = f"features.{2 * int(m[1]) + 1}.{m[2]}"
                rest = m[3]
                if rest == "gamma":
                    plan[key] = Mapping(f"{src}.layer_scale", reshape_to_ours, lambda t: t.reshape(-1, 1, 1))
                    continue
                for a, b in [("conv_dw", "block.0"), ("norm", "block.2"), ("mlp.fc1", "block.3"),
                             ("mlp.fc2", "block.5")]:
                    if rest.startswith(a + "."):
                        plan[key] = reshaped(f"{src}.{b}{rest[len(a):]}")
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
            plan.update(prefixed(f"{block}.se.conv_reduce", f"{source}.block.{j}.fc1", target))
            plan.update(prefixed(f"{block}.se.conv_expand", f"{source}.block.{j}.fc2", target))
        else:
            plan.update(prefixed(f"{block}.{part[0]}", f"{source}.block.{j}.0", target))
            plan.update(prefixed(f"{block}.{part[1]}", f"{source}.block.{j}.1", target))


class TorchvisionEfficientNet(Converter):
    name = "torchvision EfficientNet"

    def detect(self, source_keys, target):
        return "features.1.0.block.0.0.weight" in source_keys and "conv_stem.weight" in target

    def plan(self, source_keys, target):
        plan = {**prefixed("conv_stem", "features.0.0", target), **prefixed("bn1", "features.0.1", target),
                **prefixed("classifier", "classifier.1", target)}
        stages = block_indices(target, r"blocks\.(\d+)\.(\d+)\.")
        last = len({s for s, _ in stages}) + 1
        plan.update({**prefixed("conv_head", f"features.{last}.0", target), **prefixed("bn2", f"features.{last}.1", target)})
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
        plan = {**prefixed("conv_stem", "features.0.0", target), **prefixed("bn1", "features.0.1", target),
                "conv_head.weight": reshaped("classifier.0.weight"), "conv_head.bias": Mapping("classifier.0.bias"),
                **prefixed("classifier", "classifier.3", target)}
        blocks = block_indices(target, r"blocks\.(\d+)\.(\d+)\.")
        flat = 1
        for stage, index in blocks:
            block = f"blocks.{stage}.{index}"
            if f"{block}.conv.weight" in target:  # the final conv-BN-activation stage
                plan.update({**prefixed(f"{block}.conv", f"features.{flat}.0", target),
                             **prefixed(f"{block}.bn1", f"features.{flat}.1", target)})
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
