"""RepViT: structure and outputs against timm, and re-parameterisation against the unfused model.

`reparameterize()` folds each token mixer's three branches (3x3 conv-BN, 1x1 conv, identity) and
its BN into one depthwise convolution, every conv-BN into one biased convolution, and the two
BN-linear classifier heads into one linear; the fused network must compute the same function in
eval mode, checked for every variant with batch-norm statistics and biases given random spread.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import visionzoo
from harness import (
    check_numeric_parity,
    check_structure_parity,
    max_relative_difference,
    perturb_constant_tensors,
)
from visionzoo.models.repvit import VARIANTS, RepVggDw

NAMES = list(VARIANTS)


@pytest.mark.parametrize("name", NAMES)
def test_structure_matches_timm(name):
    check_structure_parity(name)


def test_outputs_match_timm():
    check_numeric_parity("repvit_m0_9", input_size=(3, 96, 96))


def test_squeeze_excite_in_every_other_block():
    import timm

    with torch.device("meta"):
        ours, reference = visionzoo.create_model("repvit_m1_0"), timm.create_model("repvit_m1_0")
    assert [type(b.se).__name__ != "Identity" for b in ours.stages[2].blocks] == \
        [type(b.se).__name__ != "Identity" for b in reference.stages[2].blocks] == [True, False] * 7


@pytest.mark.parametrize("name", NAMES)
def test_reparameterized_equals_unfused(name):
    """fp32: with perturbed BNs the deeper variants' logits reach thousands and float rounding over ~100
    folded layers alone is 1e-5 to 2e-4 of the largest logit (m1_5, m2_3), hence 1e-3; m0_9 is held to 1e-5
    below. (In float64 every variant agrees to 1e-10, but that runs minutes on CPU.)"""
    torch.manual_seed(0)
    model = visionzoo.create_model(name).eval()
    perturb_constant_tensors(model)  # BN statistics, biases and the zero-started BNs away from their init
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        actual = model(x)
    assert max_relative_difference(actual, expected) <= 1e-3
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, RepVggDw)) for m in model.modules())
    assert isinstance(model.head, nn.Linear)  # the distilled pair of heads, averaged into one
    mixers = [m for stage in model.stages for block in stage.blocks for m in [block.token_mixer]]
    assert all(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == m.in_channels for m in mixers)


def test_reparameterized_equals_unfused_in_fp32_and_timms_fuse():
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("repvit_m0_9", num_classes=0).eval()
    perturb_constant_tensors(reference)
    ours = visionzoo.create_model("repvit_m0_9", num_classes=0).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        unfused = ours(x)
        expected = reference.fuse()(x)
        actual = ours.reparameterize()(x)
    assert actual.shape == (1, 384)  # num_classes=0: pooled features, no head to fuse
    assert max_relative_difference(actual, unfused) <= 1e-5
    assert max_relative_difference(actual, expected) <= 1e-5


def test_registered_as_an_edge_family():
    from visionzoo.registry import family_facts, get_card

    facts = family_facts("repvit")
    assert facts.edge and facts.lora_targets is None and facts.cam_layer.module == "stages.-1"
    assert get_card("repvit_m2_3").year == 2024
