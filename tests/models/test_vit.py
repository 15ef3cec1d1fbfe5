"""Vision Transformer specifics beyond the generic parity and interface tests: other input sizes,
dynamic image size, DeiT's distillation head, gradient checkpointing, SDPA, and the shared
transformer layers against timm's. Everything runs on tiny models or small inputs."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import visionzoo
from harness import max_relative_difference
from visionzoo.layers.attention import Attention
from visionzoo.layers.layer_scale import LayerScale
from visionzoo.layers.mlp import GluMlp, QuickGELU, SwiGLU
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pos_embed import resample_abs_pos_embed

TOLERANCE = 1e-5


def _pair(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    """Reference (timm) and ours with the same kwargs and the reference's weights, in eval mode."""
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, **kwargs).eval()
    ours = visionzoo.create_model(name, **kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert max_relative_difference(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("img_size", [48, 96])
def test_img_size_override_matches_timm(img_size):
    reference, ours = _pair("vit_tiny_patch16_224", img_size=img_size)
    assert ours.pos_embed.shape == (1, 1 + (img_size // 16) ** 2, 192)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        _assert_close(ours(x), reference(x))
        _assert_close(ours.forward_features(x), reference.forward_features(x))


def test_wrong_input_size_is_a_clear_error():
    model = visionzoo.create_model("vit_tiny_patch16_224", img_size=64).eval()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 80, 80))
    dynamic = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, dynamic_img_size=True).eval()
    with pytest.raises(ValueError, match="divisible by the patch size"):
        dynamic(torch.randn(1, 3, 72, 64))


@pytest.mark.parametrize("name, sizes", [
    ("vit_tiny_patch16_224", [(48, 48), (64, 96)]),
    ("vit_small_patch14_reg4_dinov2", [(56, 56), (42, 70)]),  # position table for patches only, 4 registers
    ("deit_tiny_distilled_patch16_224", [(32, 32), (80, 48)]),
])
def test_dynamic_img_size_matches_timm(name, sizes):
    reference, ours = _pair(name, dynamic_img_size=True)
    for height, width in sizes:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            _assert_close(ours(x), reference(x))
            tokens = ours.forward_features(x)
        assert tokens.shape[1] == ours.num_prefix_tokens + (height // ours.config.patch_size) * (
            width // ours.config.patch_size)


def test_global_pool_avg_matches_timm():
    reference, ours = _pair("vit_tiny_patch16_224", img_size=64, global_pool="avg")
    assert isinstance(ours.norm, nn.Identity) and isinstance(ours.fc_norm, nn.LayerNorm)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _assert_close(ours(x), reference(x))
    with pytest.raises(ValueError, match="global_pool"):
        visionzoo.create_model("vit_tiny_patch16_224", global_pool="max")


def test_deit_distilled_returns_two_logits_in_training_and_their_mean_in_eval():
    reference, ours = _pair("deit_tiny_distilled_patch16_224", img_size=64, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        evaluated = ours(x)
        _assert_close(evaluated, reference(x))
        ours.train()
        reference.train()
        reference.set_distilled_training(True)
        logits = ours(x)
        expected = reference(x)
    assert isinstance(logits, tuple) and len(logits) == 2
    assert all(t.shape == (2, 5) for t in logits)
    assert not torch.allclose(logits[0], logits[1])  # two different heads
    _assert_close(logits[0], expected[0])
    _assert_close(logits[1], expected[1])
    _assert_close((logits[0] + logits[1]) / 2, evaluated)  # no dropout: eval is the mean of the two


def test_gradient_checkpointing_gives_same_outputs_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = visionzoo.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3).train()
    x = torch.randn(2, 3, 32, 32)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_out, plain_grads = run()
    calls = []
    import visionzoo.layers.checkpoint as checkpointing

    original = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    model.set_grad_checkpointing(True)
    ckpt_out, ckpt_grads = run()
    assert len(calls) == len(model.blocks)
    assert torch.allclose(ckpt_out, plain_out, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5), name


def test_attention_goes_through_sdpa(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = visionzoo.create_model("vit_tiny_patch16_224", img_size=32).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == len(model.blocks) == 12


def test_drop_path_rates_rise_linearly_and_only_train_mode_is_stochastic():
    model = visionzoo.create_model("vit_tiny_patch16_224", img_size=32, drop_path_rate=0.1, drop_rate=0.2)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_clip_head_is_the_projection_and_pre_logits_the_normalised_class_token():
    with torch.device("meta"):
        model = visionzoo.create_model("vit_base_patch16_clip_quickgelu_224")
    assert model.num_classes == 512 and isinstance(model.blocks[0].mlp.act, QuickGELU)
    assert model.patch_embed.proj.bias is None and isinstance(model.norm_pre, nn.LayerNorm)
    x = torch.empty(2, 3, 224, 224, device="meta")
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 768)


# --- shared layers against timm's --------------------------------------------------------------

def _copy_and_compare(ours: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        _assert_close(ours(x), reference(x))


def test_attention_with_qk_norm_matches_timm():
    from timm.layers import Attention as TimmAttention

    torch.manual_seed(0)
    reference = TimmAttention(64, num_heads=4, qkv_bias=True, qk_norm=True, norm_layer=nn.LayerNorm).eval()
    with torch.no_grad():  # non-trivial norm parameters
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    _copy_and_compare(Attention(64, num_heads=4, qkv_bias=True, qk_norm=True).eval(), reference, torch.randn(2, 10, 64))


def test_gated_mlps_match_timm():
    from timm.layers import SwiGLU as TimmSwiGLU
    from timm.layers import SwiGLUPacked

    torch.manual_seed(0)
    _copy_and_compare(GluMlp(32, 96, act_layer=nn.SiLU, gate_last=False), SwiGLUPacked(32, 96), torch.randn(2, 5, 32))
    _copy_and_compare(SwiGLU(32, 48), TimmSwiGLU(32, 48), torch.randn(2, 5, 32))


def test_resample_abs_pos_embed_matches_timm():
    from timm.layers import resample_abs_pos_embed as timm_resample

    posemb = torch.randn(1, 1 + 4 * 6, 8)
    for prefix, old, new in [(1, (4, 6), (7, 3)), (0, None, (3, 3))]:
        table = posemb if prefix else posemb[:, 1:25].reshape(1, 24, 8)[:, :16]
        expected = timm_resample(table, list(new), old_size=list(old) if old else None, num_prefix_tokens=prefix)
        _assert_close(resample_abs_pos_embed(table, new, old_size=old, num_prefix_tokens=prefix), expected)
    assert resample_abs_pos_embed(posemb, (4, 6), old_size=(4, 6)) is posemb
    with pytest.raises(ValueError, match="old_size"):
        resample_abs_pos_embed(posemb, (3, 3), old_size=(5, 5))


def test_patch_embed_layouts_and_layer_scale():
    embed = PatchEmbed(32, 8, in_chans=3, embed_dim=16, output_fmt="NHWC", strict_img_size=False)
    assert embed(torch.randn(2, 3, 24, 40)).shape == (2, 3, 5, 16)
    assert PatchEmbed(32, 8, embed_dim=16)(torch.randn(2, 3, 32, 32)).shape == (2, 16, 16)
    scale = LayerScale(16, init_values=0.5)
    assert torch.equal(scale(torch.ones(2, 16)), torch.full((2, 16), 0.5))
