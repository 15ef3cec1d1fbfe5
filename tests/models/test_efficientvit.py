"""EfficientViT, both families: MIT's (multi-scale ReLU linear attention, efficientvit_b*) and
Microsoft's (cascaded group attention, efficientvit_m*).

The generic parity test loads timm's freshly initialised weights, in which every attention
bias is zero, many residual branches end in a zero-initialised norm and every BatchNorm has
unit statistics, so it cannot see a wrong bias index or a misplaced norm. These tests first
randomise those tensors in the reference, then compare at a non-default input size.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import visionzoo
from harness import max_relative_difference, reference_model
from visionzoo.models.efficientvit_msra import CascadedGroupAttention, relative_offset_index

TOLERANCE = 1e-4


def _randomise_statistics(model: torch.nn.Module) -> None:
    """Give norms, biases and attention-bias tables values that a trained model would have."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            if key.endswith("running_var"):
                new = torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5
            elif key.endswith("running_mean") or "attention_biases" in key:
                new = torch.randn(tensor.shape, generator=generator) * (1.0 if "attention" in key else 0.1)
            elif tensor.ndim == 1 and key.endswith("weight"):  # norm scales, some initialised to zero
                new = torch.rand(tensor.shape, generator=generator) + 0.5
            elif tensor.ndim == 1 and key.endswith("bias"):
                new = torch.randn(tensor.shape, generator=generator) * 0.1
            else:
                continue
            tensor.copy_(new)


def _pair(name: str, **overrides):
    """The timm reference with randomised statistics and ours with its weights, both in eval mode."""
    torch.manual_seed(0)
    reference = reference_model(name, **overrides).eval()
    _randomise_statistics(reference)
    ours = visionzoo.create_model(name, **overrides).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = max_relative_difference(actual, expected)
    assert difference <= TOLERANCE, f"{what}: max |diff| / max |ref| = {difference:.2e}"


# --- Microsoft's EfficientViT (efficientvit_m*) -------------------------------------------------


@pytest.mark.parametrize("name, img_size", [("efficientvit_m0", 160), ("efficientvit_m1", 96)])
def test_msra_parity_at_other_img_size(name, img_size):
    """At 160 px the first stage's 10x10 map is padded to two 7-pixel windows a side; at 96 px
    the windows shrink to the 6x6, 3x3 and 2x2 maps. Biases are random, so a wrong index shows."""
    reference, ours = _pair(name, img_size=img_size)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        _assert_close(ours.forward_features(x), reference.forward_features(x), f"{name} features")
        _assert_close(ours(x), reference(x), f"{name} logits")


def _offset_index_first_seen(resolution: int) -> torch.Tensor:
    """The official numbering: offsets numbered in the order first met, row-major over pairs."""
    points = list(itertools.product(range(resolution), range(resolution)))
    seen: dict[tuple[int, int], int] = {}
    index = [[seen.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(seen)) for b in points] for a in points]
    return torch.tensor(index)


@pytest.mark.parametrize("resolution", [1, 2, 3, 5, 7])
def test_msra_offset_index_matches_first_seen_numbering(resolution):
    assert torch.equal(relative_offset_index(resolution), _offset_index_first_seen(resolution))


def test_msra_bias_index_is_a_non_persistent_buffer_and_builds_on_meta():
    with torch.device("meta"):
        reference = reference_model("efficientvit_m0")
        ours = visionzoo.create_model("efficientvit_m0")
    ours_buffers = {k for k, _ in ours.named_buffers() if k.endswith("attention_bias_idxs")}
    reference_buffers = {k for k, _ in reference.named_buffers() if k.endswith("attention_bias_idxs")}
    assert ours_buffers == reference_buffers and len(ours_buffers) == 6  # one per block
    assert not any(k.endswith("attention_bias_idxs") for k in ours.state_dict())
    assert not any(k.endswith("attention_bias_idxs") for k in reference.state_dict())
    attn = ours.stages[1].blocks[0].mixer.m.attn  # 7x7 map at 224 px, one 7x7 window
    assert attn.attention_bias_idxs.shape == (49, 49) and attn.attention_biases.shape == (4, 49)


def test_msra_bias_table_follows_img_size():
    ours = visionzoo.create_model("efficientvit_m0", img_size=96)  # maps of 6, 3 and 2
    windows = [stage.blocks[0].mixer.m.attn.resolution for stage in ours.stages]
    assert windows == [6, 3, 2]
    assert [tuple(stage.blocks[0].mixer.m.attn.attention_biases.shape) for stage in ours.stages] == [
        (4, 36), (4, 9), (4, 4)]


def test_msra_attention_bias_reaches_the_logits_also_under_bf16_autocast():
    torch.manual_seed(0)
    attention = CascadedGroupAttention(dim=32, key_dim=8, num_heads=4, attn_ratio=1.0, resolution=7).eval()
    with torch.no_grad():
        attention.attention_biases.normal_()
        attention.proj[1].bn.weight.fill_(1.0)  # the branch's last norm starts at zero: let it through
        x = torch.randn(2, 32, 7, 7)
        full = attention(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the float32 bias meets bfloat16 logits
            half = attention(x)
        attention.attention_biases.zero_()
        unbiased = attention(x)
    assert half.dtype == torch.bfloat16
    assert max_relative_difference(half.float(), full) < 0.05
    assert max_relative_difference(unbiased, full) > 0.05  # the bias changes the attention


def test_msra_rejects_img_size_below_the_stem_stride():
    with pytest.raises(ValueError, match="img_size must be at least 16"):
        visionzoo.create_model("efficientvit_m0", img_size=8)


# --- MIT's EfficientViT (efficientvit_b*) -------------------------------------------------------


def test_mit_parity_at_other_input_size():
    reference, ours = _pair("efficientvit_b0")
    x = torch.randn(2, 3, 96, 96)  # 3x3 maps at the end: the 5x5 aggregation is mostly padding
    with torch.no_grad():
        _assert_close(ours.forward_features(x), reference.forward_features(x), "features")
        _assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                      reference.forward_head(reference.forward_features(x), pre_logits=True), "pre-logits")
        _assert_close(ours(x), reference(x), "logits")


def test_mit_linear_attention_stays_float32_under_autocast():
    reference, ours = _pair("efficientvit_b0")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference.forward_features(x).float()
        actual = ours.forward_features(x).float()
    assert torch.isfinite(actual).all()
    assert max_relative_difference(actual, expected) <= 1e-2  # same bfloat16 casts on both sides


def test_mit_num_features_is_the_pre_logits_width():
    with torch.device("meta"):
        model = visionzoo.create_model("efficientvit_b1", num_classes=0)
    assert model.num_features == 1600
    assert model(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, 1600)


def test_mit_drop_path_is_identity_in_eval():
    torch.manual_seed(0)
    plain = visionzoo.create_model("efficientvit_b0").eval()
    dropping = visionzoo.create_model("efficientvit_b0", drop_path_rate=0.2).eval()
    dropping.load_state_dict(plain.state_dict(), strict=True)
    rates = [m.drop_prob for m in dropping.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), dropping(x))


# --- both ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, overrides, size, strides", [
    ("efficientvit_b0", {}, 96, [4, 8, 16, 32]),
    ("efficientvit_m0", {"img_size": 128}, 128, [16, 32, 64]),
])
def test_features_only_equals_reference_intermediates(name, overrides, size, strides):
    reference, ours = _pair(name, **overrides)
    extractor = visionzoo.create_model(name, features_only=True, **overrides).eval()
    result = extractor.model.load_state_dict(ours.state_dict(), strict=False)  # the extractor drops the classifier
    assert not result.missing_keys and all(key.startswith("head.") for key in result.unexpected_keys)
    assert extractor.reductions() == strides
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        maps = extractor(x)
    assert len(maps) == len(expected) == len(strides)
    for level, (actual, wanted, stride) in enumerate(zip(maps, expected, strides)):
        assert actual.shape[-1] == -(-size // stride)
        _assert_close(actual, wanted, f"{name} level {level}")
