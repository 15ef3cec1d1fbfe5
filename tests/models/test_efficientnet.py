"""EfficientNet, EfficientNet-Lite and MobileNetV3: the stage tables and what they must produce.

The generic parity and interface tests (test_parity.py, test_interface.py) cover every
variant; these check what those cannot see: that the width/depth multipliers applied to
the stage table give timm's per-stage widths and depths, TensorFlow "SAME" padding at odd
sizes, the Lite simplifications, training-mode behaviour and stochastic-depth rates.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import make_divisible as timm_make_divisible
from timm.models._efficientnet_builder import _scale_stage_depth

import visionzoo
from visionzoo.layers.padding import Conv2dSame
from visionzoo.layers.squeeze_excite import SqueezeExcite
from visionzoo.layers.stage_table import BlockSpec, make_divisible, round_channels, scale_depth
from visionzoo.models.efficientnet import EFFICIENTNET_B0_STAGES, SCALES

EFFICIENTNET_B = [f"efficientnet_b{i}" for i in range(8)]


def _meta_pair(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    with torch.device("meta"):
        return visionzoo.create_model(name, **kwargs), timm.create_model(name, **kwargs)


def _stage_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(blocks, output channels) of each stage."""
    shapes = []
    for stage in model.blocks:
        last = stage[-1]
        out = getattr(last, "conv_pwl", None) or getattr(last, "conv_pw", None) or last.conv
        shapes.append((len(stage), out.out_channels))
    return shapes


def test_b0_is_the_papers_table():
    ours, _ = _meta_pair("efficientnet_b0")
    assert _stage_shapes(ours) == [(1, 16), (2, 24), (2, 40), (3, 80), (3, 112), (4, 192), (1, 320)]
    assert [spec.kernel for (spec,) in EFFICIENTNET_B0_STAGES] == [3, 3, 5, 3, 5, 5, 3]


@pytest.mark.parametrize("name", EFFICIENTNET_B)
def test_multipliers_give_timms_stage_widths_and_depths(name):
    ours, reference = _meta_pair(name)
    width, depth, _, _ = SCALES[name.rsplit("_", 1)[1]]
    expected_depths = [math.ceil(spec.repeats * depth) for (spec,) in EFFICIENTNET_B0_STAGES]
    assert [blocks for blocks, _ in _stage_shapes(ours)] == expected_depths
    assert _stage_shapes(ours) == _stage_shapes(reference)
    assert ours.conv_stem.out_channels == reference.conv_stem.out_channels == round_channels(32, width)
    assert ours.num_features == reference.num_features == round_channels(1280, width)


def test_make_divisible_matches_timm():
    for value in [v / 4 for v in range(4, 4000)]:
        assert make_divisible(value) == timm_make_divisible(value), value
    assert make_divisible(11) == 16  # 8 would lose more than 10%
    assert round_channels(1280, 1.1) == 1408 and round_channels(32, 1.2) == 40


@pytest.mark.parametrize("repeats", [(1,), (3,), (1, 1), (1, 1, 2), (2, 3)])
@pytest.mark.parametrize("multiplier", [1.0, 1.1, 1.4, 1.8, 3.1])
def test_depth_scaling_of_multi_row_stages_matches_timm(repeats, multiplier):
    stage = tuple(BlockSpec("ir", 6, 3, 1, 16 * (i + 1), r) for i, r in enumerate(repeats))
    expected = _scale_stage_depth([{"row": i} for i in range(len(repeats))], list(repeats), multiplier)
    assert [stage.index(spec) for spec in scale_depth(stage, multiplier)] == [row["row"] for row in expected]


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b3", "tf_efficientnet_b7", "efficientnet_lite4",
                                  *visionzoo.list_models("mobilenetv3*")])
def test_feature_info_equals_timms(name):
    ours, reference = _meta_pair(name)
    assert [(f.module, f.num_chs, f.reduction) for f in ours.feature_info] == \
        [(f["module"], f["num_chs"], f["reduction"]) for f in reference.feature_info]


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "tf_efficientnet_lite0", "efficientnet_b0"])
def test_odd_and_non_square_input_matches_timm(name):
    """99 x 130 px: TF "SAME" pads a strided conv symmetrically on odd sizes and one pixel more at the
    bottom/right on even ones; 99 -> 50 -> 25 and 130 -> 65 -> 33 take both paths in each dimension."""
    torch.manual_seed(0)
    reference = timm.create_model(name).eval()
    ours = visionzoo.create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 99, 130)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("size", [7, 8, 9, 12])
@pytest.mark.parametrize("kernel_size, stride", [(3, 2), (5, 2), (2, 1), (3, 1), (1, 1)])
def test_same_padding_conv_matches_timm(size, kernel_size, stride):
    from timm.layers import create_conv2d as timm_create_conv2d

    from visionzoo.layers.padding import create_conv2d

    torch.manual_seed(0)
    reference = timm_create_conv2d(4, 6, kernel_size, stride=stride, padding="same")
    ours = create_conv2d(4, 6, kernel_size, stride=stride, padding="same")
    assert type(ours).__name__ == type(reference).__name__  # Conv2dSame only where TF padding is asymmetric
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 4, size, size + 1)
    torch.testing.assert_close(ours(x), reference(x))
    assert ours(x).shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))  # TF: ceil(size / stride)


@pytest.mark.parametrize("name", ["tf_efficientnet_b3", "efficientnet_b3"])
def test_tf_variants_pad_like_tensorflow(name):
    ours, reference = _meta_pair(name)
    same_ours = sorted(n for n, m in ours.named_modules() if isinstance(m, Conv2dSame))
    same_reference = sorted(n for n, m in reference.named_modules() if type(m).__name__ == "Conv2dSame")
    assert same_ours == same_reference
    assert bool(same_ours) == name.startswith("tf_")  # the strided convolutions, stem included
    eps = {m.eps for m in ours.modules() if isinstance(m, nn.BatchNorm2d)}
    assert eps == ({1e-3} if name.startswith("tf_") else {1e-5})


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite2", "efficientnet_lite4"])
def test_lite_has_no_se_relu6_and_fixed_stem_head(name):
    ours, reference = _meta_pair(name)
    assert not any(isinstance(m, SqueezeExcite) for m in ours.modules())
    activations = {type(m) for m in ours.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish))}
    assert activations == {nn.ReLU6}
    assert ours.conv_stem.out_channels == 32 and ours.num_features == 1280
    assert len(ours.blocks[0]) == len(ours.blocks[-1]) == 1
    assert _stage_shapes(ours) == _stage_shapes(reference)


def test_efficientnet_b0_has_se_and_swish():
    ours, _ = _meta_pair("efficientnet_b0")
    assert sum(isinstance(m, SqueezeExcite) for m in ours.modules()) == 16  # one per block
    assert ours.blocks[1][0].se.conv_reduce.out_channels == 4  # a quarter of the block's 16 input channels
    assert isinstance(ours.bn1.act, nn.SiLU)


def test_mobilenetv3_se_and_activations():
    ours, _ = _meta_pair("mobilenetv3_large_100")
    se = ours.blocks[2][0].se  # expanded width 72 -> 24 (a quarter, rounded to 8)
    assert (se.conv_reduce.out_channels, type(se.act1), type(se.gate)) == (24, nn.ReLU, nn.Hardsigmoid)
    assert isinstance(ours.blocks[1][0].bn1.act, nn.ReLU) and isinstance(ours.blocks[3][0].bn1.act, nn.Hardswish)
    assert [m.conv_pw.out_channels for m in ours.blocks[3]] == [240, 200, 184, 184]  # Table 1's expansions


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_b0", "mobilenetv3_small_100"])
def test_training_mode_matches_timm(name):
    """Batch statistics, BN momentum and eps in training mode, and the running stats they leave."""
    torch.manual_seed(0)
    reference = timm.create_model(name).train()
    ours = visionzoo.create_model(name).train()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 3, 64, 64)
    expected, actual = reference(x), ours(x)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)  # same keys in the same order
    for key, value in reference_state.items():
        torch.testing.assert_close(ours_state[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_050"])
def test_drop_path_rates_match_timm(name):
    ours, reference = _meta_pair(name, drop_path_rate=0.2, drop_rate=0.3)
    reference_modules = dict(reference.named_modules())
    rates = {n: getattr(m, "drop_prob", 0.0) for n, m in ours.named_modules() if n.endswith(".drop_path")}
    expected = {n: getattr(reference_modules[n], "drop_prob", 0.0) for n in rates}
    assert len(rates) == sum(len(stage) for stage in ours.blocks if not hasattr(stage[0], "conv"))
    assert rates == pytest.approx(expected) and max(rates.values()) > 0
    assert ours.drop_rate == reference.drop_rate == 0.3


def test_mobilenetv3_pre_logits_are_the_head_conv_output():
    torch.manual_seed(0)
    reference = timm.create_model("mobilenetv3_large_100").eval()
    ours = visionzoo.create_model("mobilenetv3_large_100").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = ours.forward_features(x)
        assert features.shape[1] == 960
        pooled = ours.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, reference.forward_head(reference.forward_features(x), pre_logits=True))
    assert pooled.shape == (1, ours.num_features) == (1, 1280)
