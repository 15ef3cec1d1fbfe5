"""FastViT: structure and outputs against timm's `fastvit.py`, and re-parameterisation against the unfused model.

`reparameterize()` folds each RepMixer (skip connection, BN'd identity, 3x3 and 1x1 depthwise conv-BN, layer
scale) into one depthwise convolution, each MobileOne block of the stem, the patch embeddings and final_conv
into one convolution, each patch embedding's 7x7 and 3x3 pair into one 7x7, RepCPE and its skip into one 7x7,
and the ConvFFN's conv-BN into one biased convolution. The fused network must compute the same function in
eval mode, checked for every variant with batch-norm statistics, biases and layer scales given random spread.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import visionzoo
from harness import check_numeric_parity, check_structure_parity, max_relative_difference, perturb_constant_tensors
from visionzoo.models.fastvit import VARIANTS, AttentionBlock, RepMixerBlock

NAMES = list(VARIANTS)


@pytest.mark.parametrize("name", NAMES)
def test_structure_matches_timm(name):
    check_structure_parity(name)


@pytest.mark.parametrize("name", ["fastvit_t8", "fastvit_sa12"])  # RepMixer only; attention and RepCPE
def test_outputs_match_timm(name):
    check_numeric_parity(name, input_size=(3, 64, 64))


def test_only_the_sa_variants_have_attention_and_a_positional_encoding():
    with torch.device("meta"):
        models = {name: visionzoo.create_model(name) for name in ("fastvit_s12", "fastvit_sa12")}
    kinds = {name: [type(b).__name__ for stage in m.stages for b in stage.blocks] for name, m in models.items()}
    assert kinds["fastvit_s12"] == ["RepMixerBlock"] * 12
    assert kinds["fastvit_sa12"] == ["RepMixerBlock"] * 10 + ["AttentionBlock"] * 2
    assert [type(s.pos_emb).__name__ for s in models["fastvit_sa12"].stages][-1] == "RepConditionalPosEnc"
    assert models["fastvit_sa12"].stages[3].blocks[0].token_mixer.num_heads == 512 // 32
    assert [(i.num_chs, i.reduction) for i in models["fastvit_sa12"].feature_info] == [
        (64, 4), (128, 8), (256, 16), (512, 32)]
    assert models["fastvit_sa12"].num_features == 1024  # final_conv doubles the last stage's width


@pytest.mark.parametrize("name", NAMES)
def test_reparameterized_equals_unfused(name):
    """fp32, 1e-5 of the largest logit: the errors are 5e-7 to 8e-7 (float64: 1e-15)."""
    torch.manual_seed(0)
    model = visionzoo.create_model(name).eval()
    perturb_constant_tensors(model)  # BN statistics, biases and layer scales away from their init
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        actual = model(x)
    assert max_relative_difference(actual, expected) <= 1e-5
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    attention_norms = [m.norm for m in model.modules() if isinstance(m, AttentionBlock)]
    assert len(norms) == len(attention_norms) and all(any(n is a for a in attention_norms) for n in norms)
    for block in (m for m in model.modules() if isinstance(m, RepMixerBlock)):
        mixer = block.token_mixer.reparam_conv
        assert block.token_mixer.mixer is None and mixer.groups == mixer.in_channels and mixer.kernel_size == (3, 3)
    assert all(isinstance(m.reparam_conv, nn.Conv2d) for m in model.modules() if hasattr(m, "reparam_conv"))


def test_reparameterized_equals_timms_fused_model():
    """The same function as timm's fused SA12 (ours also folds the ConvFFN's batch norm, which timm keeps)."""
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    reference = timm.create_model("fastvit_sa12").eval()
    perturb_constant_tensors(reference)
    ours = visionzoo.create_model("fastvit_sa12").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reparameterize_model(reference)(x)
        actual = ours.reparameterize()(x)
    assert max_relative_difference(actual, expected) <= 1e-5


def test_registered_as_an_edge_family():
    from visionzoo.factory import is_reparameterizable
    from visionzoo.registry import family_facts, get_card

    facts = family_facts("fastvit")
    assert facts.edge and facts.cam_layer.module == "final_conv"
    assert "token_mixer" in facts.lora_targets.attention and "mlp" in facts.lora_targets.attention
    card = get_card("fastvit_t8")
    assert (card.year, card.recipe_style, card.input_size) == (2023, "vit", (3, 256, 256))
    assert is_reparameterizable("fastvit_sa12")
