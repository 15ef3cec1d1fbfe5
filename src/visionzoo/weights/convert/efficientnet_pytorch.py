"""efficientnet_pytorch's layout (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`)."""

from __future__ import annotations

from visionzoo.weights.convert.base import Converter, block_indices, prefixed

# --- efficientnet_pytorch ---------------------------------------------------------------------


class EfficientNetPyTorch(Converter):
    """Luke Melas-Kyriazi's efficientnet_pytorch layout (also used by many EfficientNet-Lite ports)."""

    name = "efficientnet_pytorch"

    def detect(self, source_keys, target):
        return "_conv_stem.weight" in source_keys and "conv_stem.weight" in target

    def plan(self, source_keys, target):
        plan = {**prefixed("conv_stem", "_conv_stem", target), **prefixed("bn1", "_bn0", target),
                **prefixed("conv_head", "_conv_head", target), **prefixed("bn2", "_bn1", target),
                **prefixed("classifier", "_fc", target)}
        for flat, (stage, index) in enumerate(block_indices(target, r"blocks\.(\d+)\.(\d+)\.")):
            ours, theirs = f"blocks.{stage}.{index}", f"_blocks.{flat}"
            if f"{ours}.conv_pwl.weight" in target:  # inverted residual: expand, depthwise, project
                parts = [("conv_pw", "_expand_conv"), ("bn1", "_bn0"), ("conv_dw", "_depthwise_conv"),
                         ("bn2", "_bn1"), ("conv_pwl", "_project_conv"), ("bn3", "_bn2")]
            else:  # depthwise-separable first block: depthwise, project
                parts = [("conv_dw", "_depthwise_conv"), ("bn1", "_bn1"), ("conv_pw", "_project_conv"),
                         ("bn2", "_bn2")]
            parts += [("se.conv_reduce", "_se_reduce"), ("se.conv_expand", "_se_expand")]
            for a, b in parts:
                plan.update(prefixed(f"{ours}.{a}", f"{theirs}.{b}", target))
        return plan
