"""DINOv3 specifics. Parity with timm at the default grid and the shared interface are covered for
every variant by test_parity.py and test_interface.py; these check the rotary embedding on its own
(non-square grids included), inputs of other sizes and shapes, class-token pooling, and that a model
built on the meta device computes the same function once materialised."""

from __future__ import annotations

import pytest
import timm
import torch

import visionzoo
from harness import max_relative_difference, perturb_constant_tensors
from visionzoo.models.dinov3 import RotaryEmbeddingDinov3, apply_rotary_half

TOLERANCE = 1e-5


def _pair(name: str = "vit_small_patch16_dinov3", **kwargs):
    """timm's model (constant tensors perturbed) and ours with its weights, in eval mode."""
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, **kwargs).eval()
    perturb_constant_tensors(reference)
    ours = visionzoo.create_model(name, **kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("grid", [(16, 16), (4, 4), (3, 5), (7, 2)])
def test_rotary_table_matches_timm(grid):
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3, apply_rot_embed_cat

    reference = RotaryEmbeddingDinoV3(64, temperature=100, rotate_half=True).get_embed(shape=list(grid))
    ours = RotaryEmbeddingDinov3(64, temperature=100)(grid, torch.device("cpu"))
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    x = torch.randn(2, 3, grid[0] * grid[1], 64)
    torch.testing.assert_close(apply_rotary_half(x, ours), apply_rot_embed_cat(x, reference, half=True))


def test_rotation_preserves_norms_and_relative_positions():
    rope = RotaryEmbeddingDinov3(64)((4, 4), torch.device("cpu"))
    q = torch.randn(1, 64).expand(16, 64)  # the same query at every position
    rotated = apply_rotary_half(q, rope)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    scores = rotated @ rotated.T  # q.k depends on the offset only: (0,0)-(0,1) equals (2,2)-(2,3)
    torch.testing.assert_close(scores[0, 1], scores[10, 11])


@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_other_input_sizes_match_timm(size):
    """No position table: the same model runs at any size divisible by 16, non-square included."""
    reference, ours = _pair(depth=3)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, actual = reference.forward_features(x), ours.forward_features(x)
    assert actual.shape == expected.shape == (2, 5 + size[0] * size[1] // 256, 384)
    assert max_relative_difference(actual, expected) <= TOLERANCE


def test_class_token_pooling_and_a_head_match_timm():
    """The paper reads the class token (`global_pool="token"`); timm's default, and ours, is the patch mean."""
    reference, ours = _pair(depth=2, global_pool="token", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_relative_difference(ours(x), reference(x)) <= TOLERANCE
        assert max_relative_difference(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                       ours.forward_features(x)[:, 0]) == 0


def test_meta_built_model_matches_after_materialising():
    """The rope table is computed in forward, so nothing is lost when building on meta."""
    torch.manual_seed(0)
    reference = visionzoo.create_model("vit_small_patch16_dinov3", depth=2).eval()
    with torch.device("meta"):
        model = visionzoo.create_model("vit_small_patch16_dinov3", depth=2)
    model = model.to_empty(device="cpu").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = visionzoo.create_model("vit_small_patch16_dinov3", depth=2, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, plain[name], msg=name)


def test_card_defaults_follow_timm():
    info = visionzoo.model_info("vit_large_patch16_dinov3")
    assert info["num_classes"] == 0 and info["input_size"] == [3, 256, 256] and info["family"] == "dinov3"
    with torch.device("meta"):
        model = visionzoo.create_model("vit_small_patch16_dinov3")
    assert model.num_prefix_tokens == 5 and model.global_pool == "avg"


def test_input_not_divisible_by_the_patch_is_a_clear_error():
    model = visionzoo.create_model("vit_small_patch16_dinov3", depth=1).eval()
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match="global_pool must be one of"):
        visionzoo.create_model("vit_small_patch16_dinov3", depth=1, global_pool="map")
