"""open_clip's SigLIP / SigLIP 2 checkpoints (`open_clip_model.safetensors`) into
`visionzoo.siglip_text.SigLIP`.

open_clip wraps the timm image tower as `visual.trunk`, whose names are already ours; the text
tower, `logit_scale` and `logit_bias` carry open_clip's names, which our pair keeps. So the plan
only drops `trunk.` from the image tower's keys.
"""

from __future__ import annotations

from visionzoo.weights.convert.base import Converter, Mapping


class SigLIPModel(Converter):
    """A whole open_clip SigLIP checkpoint (timm image tower under `visual.trunk.`, open_clip text tower)."""

    name = "open_clip SigLIP image and text towers"

    def detect(self, source_keys, target):
        return "visual.trunk.pos_embed" in source_keys and "logit_bias" in target and "visual.pos_embed" in target

    def plan(self, source_keys, target):
        return {key: Mapping("visual.trunk." + key[len("visual."):] if key.startswith("visual.") else key)
                for key in target}
