"""MobileNetV4: the stage tables against timm's, and numeric parity at small inputs.

test_parity.py runs every variant at its card's size; these check what it cannot see, at sizes
that keep the file quick: that each table row builds the block timm builds (kind, kernels,
widths, strides), the feature levels, stochastic-depth rates, and the hybrids' attention (one
shared key and value head, downsampled keys and values) number for number.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import visionzoo
from harness import check_numeric_parity, check_structure_parity
from visionzoo.models.mobilenetv4 import VARIANTS, MobileAttention, UniversalInvertedResidual

NAMES = list(VARIANTS)


def _meta_pair(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    with torch.device("meta"):
        return visionzoo.create_model(name, **kwargs), timm.create_model(name, **kwargs)


def _block_signature(block: nn.Module) -> tuple:
    """What a block is, in terms both implementations share: its kind and its convolutions' shapes."""
    kind = {"UniversalInvertedResidual": "uib", "MobileAttention": "mqa", "EdgeResidual": "fused_ib",
            "FusedMBConv": "fused_ib", "ConvBnAct": "conv", "ConvBlock": "conv"}[type(block).__name__]
    convs = tuple((name, tuple(m.weight.shape), m.stride, m.groups) for name, m in block.named_modules()
                  if isinstance(m, nn.Conv2d))
    return kind, convs, getattr(block, "has_skip", None)


@pytest.mark.parametrize("name", NAMES)
def test_every_block_is_timms(name):
    ours, reference = _meta_pair(name)
    assert [[_block_signature(b) for b in stage] for stage in ours.blocks] == \
        [[_block_signature(b) for b in stage] for stage in reference.blocks]
    check_structure_parity(name)


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_and_drop_path_rates_equal_timms(name):
    ours, reference = _meta_pair(name, drop_path_rate=0.2)
    assert [(f.module, f.num_chs, f.reduction) for f in ours.feature_info] == \
        [(f["module"], f["num_chs"], f["reduction"]) for f in reference.feature_info]

    def rates(model):  # timm gives its plain conv blocks a DropPath too, which they never use (no residual)
        return [getattr(block.drop_path, "drop_prob", 0.0) for stage in model.blocks for block in stage
                if type(block).__name__ not in ("ConvBlock", "ConvBnAct")]
    assert rates(ours) == pytest.approx(rates(reference))


def test_hybrids_have_layer_scale_and_multi_query_attention():
    ours, _ = _meta_pair("mobilenetv4_hybrid_medium")
    attention = [m for m in ours.modules() if isinstance(m, MobileAttention)]
    assert len(attention) == 8
    assert all(m.attn.key.proj.out_channels == m.attn.value.proj.out_channels == 64 for m in attention)  # one head
    assert sum(hasattr(m.attn.key, "down_conv") for m in attention) == 4  # the 1/16 stage's keys and values
    assert all(isinstance(m.layer_scale, nn.Module) and hasattr(m.layer_scale, "gamma")
               for m in ours.modules() if isinstance(m, (MobileAttention, UniversalInvertedResidual)))
    conv, _ = _meta_pair("mobilenetv4_conv_medium")
    assert not any(hasattr(m.layer_scale, "gamma") for m in conv.modules() if isinstance(m, UniversalInvertedResidual))


def test_conv_small_matches_timm():
    check_numeric_parity("mobilenetv4_conv_small", input_size=(3, 64, 64))


def test_hybrid_matches_timm_at_an_odd_size():
    """77 px: every strided convolution meets an odd map, and the MQA's downsampled keys a 3x3 one.
    (test_parity.py runs every variant at its card's size; hybrid_large's GELU is checked there.)"""
    check_numeric_parity("mobilenetv4_hybrid_medium", batch=1, input_size=(3, 77, 77))


def test_hybrid_large_uses_exact_gelu():
    ours, _ = _meta_pair("mobilenetv4_hybrid_large")
    activations = {type(m).__name__ for m in ours.modules() if isinstance(m, (nn.ReLU, nn.GELU))}
    assert activations == {"GELU"}
    assert all(m.approximate == "none" for m in ours.modules() if isinstance(m, nn.GELU))


def test_registered_as_an_edge_family_with_the_cam_on_the_last_stage():
    from visionzoo.registry import family_facts, get_card

    facts = family_facts("mobilenetv4")
    assert facts.edge and facts.lora_targets is None and facts.cam_layer.module == "blocks"
    assert get_card("mobilenetv4_conv_small").input_size == (3, 224, 224)
    assert get_card("mobilenetv4_conv_large").input_size == (3, 384, 384)
    assert get_card("mobilenetv4_hybrid_medium").year == 2024


def test_a_width_multiplier_is_refused():
    """MobileNetV4's config extends MobileNetV3's, whose width multiplier V4's tables do not take: it would
    scale the stem alone, so it is refused rather than half applied."""
    from visionzoo.errors import SettingError

    with pytest.raises(SettingError, match="no width multiplier"):
        visionzoo.create_model("mobilenetv4_conv_small", width=0.5)
