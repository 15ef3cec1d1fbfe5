"""EfficientNetV2 against timm's `efficientnetv2_*` and `tf_efficientnetv2_*`: keys, shapes and parameter
counts of every variant on the `meta` device; per-stage block types, widths and depths (B1-B3's width
rounding without EfficientNet's 90% floor); outputs at a small input, TensorFlow "SAME" padding at odd
sizes, training mode and stochastic-depth rates, where the first stage's residual conv block joins in.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import visionzoo
from harness import check_numeric_parity, check_structure_parity, parameter_count
from visionzoo.layers.inverted_residual import ConvBlock, FusedMBConv, InvertedResidual
from visionzoo.layers.padding import Conv2dSame
from visionzoo.layers.squeeze_excite import SqueezeExcite
from visionzoo.layers.stage_table import make_divisible
from visionzoo.registry import family_facts, get_card

EFFICIENTNETV2 = [
    "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l", "tf_efficientnetv2_s", "tf_efficientnetv2_m",
    "tf_efficientnetv2_l", "tf_efficientnetv2_b0", "tf_efficientnetv2_b1", "tf_efficientnetv2_b2",
    "tf_efficientnetv2_b3",
]


def _meta_pair(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    with torch.device("meta"):
        return visionzoo.create_model(name, **kwargs), timm.create_model(name, **kwargs)


def _stage_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(blocks, output channels) of each stage."""
    return [(len(stage), next(m for m in reversed(list(stage[-1].modules())) if isinstance(m, nn.Conv2d)).out_channels)
            for stage in model.blocks]


def test_every_variant_is_registered():
    assert sorted(visionzoo.list_models("*efficientnetv2*")) == sorted(EFFICIENTNETV2)
    card = get_card("tf_efficientnetv2_b0")
    assert (card.family, card.year, card.recipe_style, card.input_size) == ("efficientnetv2", 2021, "convnet",
                                                                            (3, 192, 192))
    facts = family_facts("efficientnetv2")
    assert (facts.cam_layer.module, facts.lora_targets, facts.edge) == ("bn2", None, False)


@pytest.mark.parametrize("name", EFFICIENTNETV2)
def test_keys_shapes_parameter_count_and_features_equal_timms(name):
    check_structure_parity(name)
    ours, reference = _meta_pair(name)
    assert parameter_count(name) == sum(p.numel() for p in reference.parameters())
    assert _stage_shapes(ours) == _stage_shapes(reference)
    assert [(f.module, f.num_chs, f.reduction) for f in ours.feature_info] == \
        [(f["module"], f["num_chs"], f["reduction"]) for f in reference.feature_info]


def test_s_is_the_papers_table_4():
    ours, _ = _meta_pair("efficientnetv2_s")
    assert _stage_shapes(ours) == [(2, 24), (4, 48), (4, 64), (6, 128), (9, 160), (15, 256)]
    kinds = [{type(block) for block in stage} for stage in ours.blocks]
    assert kinds == [{ConvBlock}, {FusedMBConv}, {FusedMBConv}, {InvertedResidual}, {InvertedResidual},
                     {InvertedResidual}]
    assert all(block.has_skip for block in ours.blocks[0])  # Fused-MBConv1: a 3x3 conv with a residual
    assert not any(isinstance(m, SqueezeExcite) for m in ours.blocks[:3].modules())  # SE in MBConv stages only
    assert ours.blocks[3][1].se.conv_reduce.out_channels == 32  # a quarter of the block's 128 input channels
    assert ours.conv_stem.out_channels == 24 and ours.num_features == 1280


def test_b3_rounds_widths_without_the_90_percent_floor():
    ours, _ = _meta_pair("tf_efficientnetv2_b3")
    assert make_divisible(16 * 1.2) == 24 and make_divisible(16 * 1.2, round_limit=0.0) == 16
    assert _stage_shapes(ours)[0] == (2, 16)  # 16 * 1.2 -> 16 (EfficientNet's rule would give 24)
    assert ours.conv_stem.out_channels == 40 and ours.num_features == 1536


def test_outputs_equal_timms():
    """PyTorch padding here; the tf_ variants' outputs are compared at an odd size below."""
    assert check_numeric_parity("efficientnetv2_s", input_size=(3, 32, 32)) <= 1e-5


def test_odd_and_non_square_input_matches_timm():
    """99 x 130 px: TF "SAME" pads a strided conv symmetrically on odd sizes, one pixel more at the
    bottom/right on even ones."""
    assert check_numeric_parity("tf_efficientnetv2_b0", batch=1, input_size=(3, 99, 130)) <= 1e-5


@pytest.mark.parametrize("name", ["tf_efficientnetv2_b0", "efficientnetv2_s"])
def test_tf_variants_pad_like_tensorflow(name):
    ours, reference = _meta_pair(name)
    same_ours = sorted(n for n, m in ours.named_modules() if isinstance(m, Conv2dSame))
    assert same_ours == sorted(n for n, m in reference.named_modules() if type(m).__name__ == "Conv2dSame")
    assert bool(same_ours) == name.startswith("tf_")
    assert {m.eps for m in ours.modules() if isinstance(m, nn.BatchNorm2d)} == ({1e-3} if name.startswith("tf_")
                                                                                else {1e-5})


def test_training_mode_matches_timm():
    """Batch statistics, BN momentum and eps in training mode, and the running stats they leave."""
    torch.manual_seed(0)
    reference = timm.create_model("tf_efficientnetv2_b0").train()
    ours = visionzoo.create_model("tf_efficientnetv2_b0").train()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    expected, actual = reference(x), ours(x)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)
    for key, value in reference_state.items():
        torch.testing.assert_close(ours_state[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_drop_path_rates_match_timm():
    ours, reference = _meta_pair("efficientnetv2_s", drop_path_rate=0.2, drop_rate=0.3)
    reference_modules = dict(reference.named_modules())
    rates = {n: getattr(m, "drop_prob", 0.0) for n, m in ours.named_modules() if n.endswith(".drop_path")}
    expected = {n: getattr(reference_modules[n], "drop_prob", 0.0) for n in rates}
    assert len(rates) == sum(len(stage) for stage in ours.blocks)  # the residual conv block too
    assert rates == pytest.approx(expected) and max(rates.values()) > 0
    assert ours.drop_rate == reference.drop_rate == 0.3
