"""SigLIP 2 image tower specifics. Parity with timm (at a small img_size) and the shared interface are
covered for every variant by test_parity.py and test_interface.py; these check the attention-pooling
(MAP) head on its own, a classifier on top, the SO400M shape, and gradient checkpointing."""

from __future__ import annotations

import timm
import torch

import visionzoo
from harness import max_relative_difference, perturb_constant_tensors
from visionzoo.models.siglip import AttentionPoolLatent

TOLERANCE = 1e-5


def test_attention_pool_matches_timm():
    from timm.layers import AttentionPoolLatent as Reference

    torch.manual_seed(0)
    reference = Reference(64, num_heads=4, mlp_ratio=3.0, norm_layer=torch.nn.LayerNorm).eval()
    perturb_constant_tensors(reference)
    ours = AttentionPoolLatent(64, num_heads=4, mlp_ratio=3.0, norm_eps=1e-5).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    tokens = torch.randn(3, 10, 64)
    with torch.no_grad():
        assert max_relative_difference(ours(tokens), reference(tokens)) <= TOLERANCE


def test_tower_with_a_classifier_matches_timm():
    torch.manual_seed(0)
    kwargs = dict(img_size=48, depth=2, num_classes=5)
    reference = timm.create_model("vit_base_patch16_siglip_256", pretrained=False, **kwargs).eval()
    perturb_constant_tensors(reference)
    ours = visionzoo.create_model("vit_base_patch16_siglip_256", **kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert ours(x).shape == (2, 5)
        assert max_relative_difference(ours(x), reference(x)) <= TOLERANCE
        features = ours.forward_features(x)
        assert features.shape == (2, 9, 768)  # patch tokens only: no class token
        assert max_relative_difference(ours.forward_head(features, pre_logits=True),
                                       reference.forward_head(reference.forward_features(x), pre_logits=True)) <= TOLERANCE


def test_so400m_is_the_shape_optimised_vit():
    with torch.device("meta"):
        model = visionzoo.create_model("vit_so400m_patch14_siglip_224")
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (1152, 27, 16)
    assert model.blocks[0].mlp.fc1.out_features == model.attn_pool.mlp.fc1.out_features == 4304
    assert model.pos_embed.shape == (1, 256, 1152)  # 16 x 16 patches of 14 px


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = visionzoo.create_model("vit_base_patch16_siglip_224", img_size=32, depth=2, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, plain[name], msg=name)


def test_cards_are_siglip2_towers():
    for name, size in [("vit_base_patch16_siglip_224", 224), ("vit_base_patch16_siglip_256", 256),
                       ("vit_large_patch16_siglip_256", 256), ("vit_so400m_patch14_siglip_224", 224)]:
        info = visionzoo.model_info(name)
        assert (info["family"], info["year"], info["num_classes"]) == ("siglip2", 2025, 0)
        assert info["input_size"] == [3, size, size] and info["reference"] == f"timm:{name}"
