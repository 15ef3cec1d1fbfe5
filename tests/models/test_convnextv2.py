"""ConvNeXt-V2 against timm's `convnextv2_*`: keys, shapes and parameter counts of every variant on
the `meta` device, outputs of the 1x1-conv form (atto) and the channels-last form (tiny) at a small
input, global response normalization alone in both layouts, and the family's registered facts.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
from timm.layers.grn import GlobalResponseNorm as TimmGlobalResponseNorm

import visionzoo
from harness import check_numeric_parity, check_structure_parity, parameter_count
from visionzoo.models.convnextv2 import GlobalResponseNorm, GlobalResponseNormMlp
from visionzoo.registry import family_facts, get_card

CONVNEXTV2 = ["convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano", "convnextv2_tiny",
              "convnextv2_base"]


def test_every_variant_is_registered():
    assert sorted(visionzoo.list_models("convnextv2*")) == sorted(CONVNEXTV2)
    card = get_card("convnextv2_atto")
    assert (card.family, card.year, card.recipe_style, card.reference) == \
        ("convnextv2", 2023, "convnext", "timm:convnextv2_atto")
    assert card.paper.startswith("ConvNeXt V2")


@pytest.mark.parametrize("name", CONVNEXTV2)
def test_keys_shapes_and_parameter_count_equal_timms(name):
    check_structure_parity(name)
    with torch.device("meta"):
        reference = timm.create_model(name)
    assert parameter_count(name) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", ["convnextv2_atto", "convnextv2_tiny"])  # 1x1-conv MLP, channels-last MLP
def test_outputs_equal_timms(name):
    assert check_numeric_parity(name, input_size=(3, 64, 64)) <= 1e-5


@pytest.mark.parametrize("channels_last", [True, False])
def test_global_response_norm_equals_timms(channels_last):
    torch.manual_seed(0)
    ours, reference = GlobalResponseNorm(8, channels_last=channels_last), TimmGlobalResponseNorm(
        8, channels_last=channels_last)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 5, 7, 8) if channels_last else torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=1e-6)
    fresh = GlobalResponseNorm(8, channels_last=channels_last)
    torch.testing.assert_close(fresh(x), x)  # zero-initialised: the identity


def test_blocks_have_grn_and_no_layer_scale():
    with torch.device("meta"):
        model = visionzoo.create_model("convnextv2_atto")
    blocks = [block for stage in model.stages for block in stage.blocks]
    assert len(blocks) == 12
    assert all(isinstance(block.mlp, GlobalResponseNormMlp) and block.gamma is None for block in blocks)
    assert not any(name.endswith("gamma") for name, _ in model.named_parameters())


def test_family_facts_are_convnexts():
    facts, convnext = family_facts("convnextv2"), family_facts("convnext")
    assert (facts.cam_layer, facts.lora_targets, facts.edge) == (convnext.cam_layer, convnext.lora_targets, False)
    with torch.device("meta"):
        model = visionzoo.create_model("convnextv2_tiny")
    adapted = [name for name, _ in model.named_modules() if re.fullmatch(facts.lora_targets.attention, name)]
    assert len(adapted) == 2 * 18 and adapted[0] == "stages.0.blocks.0.mlp.fc1"  # fc1 and fc2 of all 18 blocks
