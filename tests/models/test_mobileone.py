"""MobileOne: structure and outputs against timm's `byobnet.py`, and re-parameterisation against the unfused model.

`reparameterize()` folds each block's branches (k kxk conv-BN, a 1x1 conv-BN, a BN'd identity) into one
convolution; the fused network must compute the same function in eval mode, checked for every variant
with batch-norm statistics and biases given random spread (`perturb_constant_tensors`).
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn

import visionzoo
from harness import check_numeric_parity, check_structure_parity, max_relative_difference, perturb_constant_tensors
from visionzoo.models.mobileone import VARIANTS, MobileOneBlock

NAMES = list(VARIANTS)


def _perturbed(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = visionzoo.create_model(name).eval()
    perturb_constant_tensors(model)
    return model.to(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_structure_matches_timm(name):
    check_structure_parity(name)


@pytest.mark.parametrize(("name", "size"), [("mobileone_s0", 64), ("mobileone_s4", 32)])  # 4 kxk branches; SE
def test_outputs_match_timm(name, size):
    check_numeric_parity(name, input_size=(3, size, size))


def test_blocks_alternate_depthwise_and_pointwise_with_se_where_timm_has_it():
    with torch.device("meta"):
        ours, reference = visionzoo.create_model("mobileone_s4"), timm.create_model("mobileone_s4")

    def signature(model):
        return [(b.conv_kxk[0].conv.groups > 1, b.conv_kxk[0].conv.stride[0], type(b.attn).__name__ != "Identity")
                for stage in model.stages for b in stage]

    assert signature(ours) == signature(reference)
    assert [info.reduction for info in ours.feature_info] == [2, 4, 8, 16, 32]
    with torch.device("meta"):
        s0 = visionzoo.create_model("mobileone_s0")
    assert len(s0.stem.conv_kxk) == 1 and all(len(b.conv_kxk) == 4 for stage in s0.stages for b in stage)


def _assert_each_block_fuses_to_within(model: nn.Module, tolerance: float) -> None:
    """Each fused block against the unfused one, on the unfused network's own activations."""
    fused = copy.deepcopy(model).reparameterize()
    x = torch.randn(1, 3, 32, 32, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        x = model.stem(x)
        for block, fused_block in zip([b for s in model.stages for b in s], [b for s in fused.stages for b in s]):
            expected = block(x)
            assert max_relative_difference(fused_block(x), expected) <= tolerance
            x = expected


@pytest.mark.parametrize("name", NAMES)
def test_reparameterized_equals_unfused(name):
    """fp32, 1e-5 of the largest logit (the errors are 5e-7 to 8e-7). S4's whole network in float64: with
    perturbed BNs its squeeze-excitation gates see pre-activations of order 1e4, so a float rounding of 1e-7
    in any input moves the output by up to 1e-1 of its largest logit (the unfused network alone does so), and
    float64's rounding by up to 2e-8, hence 1e-6; block by block, fused and unfused S4 agree to 1e-5 in fp32,
    checked first."""
    model = _perturbed(name)
    if name == "mobileone_s4":
        _assert_each_block_fuses_to_within(model, 1e-5)
        model = model.double()
    x = torch.randn(1, 3, 32, 32, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        actual = model(x)
    assert max_relative_difference(actual, expected) <= (1e-6 if name == "mobileone_s4" else 1e-5)
    blocks = [model.stem, *(block for stage in model.stages for block in stage)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(block.conv_kxk is None and block.identity is None and block.conv_scale is None for block in blocks)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == len(blocks) + 2 * sum(
        not isinstance(b.attn, nn.Identity) for b in blocks)  # one conv per block, and SE's two


def test_reparameterized_equals_timms_fused_model():
    """Ours and timm's fused forms: the same keys (`reparam_conv` per block) and the same outputs."""
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    reference = timm.create_model("mobileone_s0", num_classes=0).eval()
    perturb_constant_tensors(reference)
    ours = visionzoo.create_model("mobileone_s0", num_classes=0).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = reparameterize_model(reference)
        ours.reparameterize()
        assert max_relative_difference(ours(x), reference(x)) <= 1e-5
    ours.load_state_dict(reference.state_dict(), strict=True)


def test_drop_path_only_where_a_block_keeps_its_shape():
    with torch.device("meta"):
        model = visionzoo.create_model("mobileone_s1", drop_path_rate=0.1)
    blocks = [block for stage in model.stages for block in stage]
    assert all((block.drop_path is not None) == (block.identity is not None) for block in blocks[1:])
    assert blocks[-1].drop_path is None  # the last pointwise block widens 512 -> 1280


def test_registered_as_an_edge_family():
    from visionzoo.factory import is_reparameterizable
    from visionzoo.registry import family_facts, get_card

    facts = family_facts("mobileone")
    assert facts.edge and facts.lora_targets is None and facts.cam_layer.module == "stages.-1"
    card = get_card("mobileone_s0")
    assert (card.year, card.recipe_style, card.input_size) == (2023, "convnet", (3, 224, 224))
    assert is_reparameterizable("mobileone_s0") and isinstance(visionzoo.create_model("mobileone_s1").stem,
                                                               MobileOneBlock)


_CHANNELS_LAST_STEP = """
import copy, torch
from visionzoo.models.mobileone import MobileOneBlock
torch.manual_seed(0)
block = MobileOneBlock(3, 48, 3, stride=2).train()
x = torch.randn(16, 3, 224, 224)
block(x).square().mean().backward()
first = block.conv_scale.conv.weight.grad.clone()
other = copy.deepcopy(block).to(memory_format=torch.channels_last)
other.zero_grad()
other(x.contiguous(memory_format=torch.channels_last)).square().mean().backward()
error = (other.conv_scale.conv.weight.grad - first).abs().max() / first.abs().max()
assert error < 1e-3, float(error)  # summation order; the bug gave crashes or gradients 600x off
print("ok")
"""


def test_strided_stem_trains_in_channels_last():
    """The RGB stem's 1x1 branch at 224 px in channels-last memory: a strided 1x1 conv there crashed the
    process in its weight gradient (oneDNN#6035); the branch now subsamples, with the same gradient as in
    NCHW. In a subprocess, so that a crash fails this test rather than the suite."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _CHANNELS_LAST_STEP], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (result.returncode, result.stderr[-2000:])
