"""The papers' official checkpoints: ConvNeXt, Swin, DINOv2, and OpenAI CLIP / open_clip."""

from __future__ import annotations

import re

import torch

from visionzoo.weights.convert.base import Converter, Mapping, block_indices, prefixed, reshape_to_ours, reshaped

# --- papers' official checkpoints ---------------------------------------------------------------


class ConvNeXtOfficial(Converter):
    """Facebook's ConvNeXt checkpoints, and Meta's DINOv3 (and EUPE) ConvNeXt students in the same names;
    those carry per-stage feature norms (`norms.`) and distillation projectors (`projectors.`) that only
    the teachers' training reads, and no classifier: dropped, as timm's checkpoint filter drops them."""

    name = "ConvNeXt official"
    ignored = (r"^norms\.", r"^projectors\.")

    def detect(self, source_keys, target):
        return "downsample_layers.0.0.weight" in source_keys and "stem.0.weight" in target

    def plan(self, source_keys, target):
        plan = {**prefixed("stem.0", "downsample_layers.0.0", target), **prefixed("stem.1", "downsample_layers.0.1", target),
                **prefixed("head.norm", "norm", target), **prefixed("head.fc", "head", target)}
        for key in target:
            if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
                rest = m[3]
                for a, b in [("conv_dw", "dwconv"), ("mlp.fc1", "pwconv1"), ("mlp.fc2", "pwconv2")]:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                plan[key] = reshaped(f"stages.{m[1]}.{m[2]}.{rest}")  # the official MLP is Linear
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
        plan = {"cls_token": Mapping(v + "class_embedding", reshape_to_ours, lambda t: t.reshape(-1)),
                "pos_embed": Mapping(v + "positional_embedding", reshape_to_ours, lambda t: t.reshape(t.shape[1:])),
                "patch_embed.proj.weight": Mapping(v + "conv1.weight"),
                **prefixed("norm_pre", v + "ln_pre", target), **prefixed("norm", v + "ln_post", target)}
        for (i,) in block_indices(target, r"blocks\.(\d+)\."):
            src = f"{v}transformer.resblocks.{i}"
            for a, b in [("norm1", "ln_1"), ("attn.proj", "attn.out_proj"), ("norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
                plan.update(prefixed(f"blocks.{i}.{a}", f"{src}.{b}", target))
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
