"""ConvNeXt, Swin and MaxViT beyond the generic parity and interface tests: gradient
checkpointing, non-default image and window sizes against timm, and constructor overrides."""

from __future__ import annotations

import importlib

import pytest
import torch

import visionzoo
from harness import check_numeric_parity
from visionzoo.layers.drop import DropPath

# Small builds that still have several stages, shifted windows and padding.
CHECKPOINT_CASES = {
    "convnext_atto": (64, {"depths": (1, 1, 2, 1)}),
    "swin_tiny_patch4_window7_224": (64, {"img_size": 64, "window_size": 4, "depths": (2, 2, 2, 2)}),
    "maxvit_tiny_tf_224": (64, {"img_size": 64, "depths": (1, 1, 1, 1)}),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_grad_checkpointing_gives_same_outputs_and_gradients(name, monkeypatch):
    size, overrides = CHECKPOINT_CASES[name]
    torch.manual_seed(0)
    plain = visionzoo.create_model(name, num_classes=5, drop_path_rate=0.0, **overrides).train()
    checkpointed = visionzoo.create_model(name, num_classes=5, drop_path_rate=0.0, **overrides).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)

    module = importlib.import_module("visionzoo.layers.checkpoint")  # where every family checkpoints
    calls = []
    real_checkpoint = module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(module, "checkpoint", counting_checkpoint)

    x = torch.randn(2, 3, size, size)
    out_plain = plain(x)
    out_checkpointed = checkpointed(x)
    assert calls and set(calls) == {False}, "set_grad_checkpointing(True) must route blocks through checkpoint"
    n_blocks = sum(overrides["depths"])
    assert len(calls) == n_blocks
    torch.testing.assert_close(out_checkpointed, out_plain, rtol=1e-5, atol=1e-6)

    out_plain.square().mean().backward()
    out_checkpointed.square().mean().backward()
    grads_plain = dict(plain.named_parameters())
    for param_name, param in checkpointed.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient under checkpointing"
        torch.testing.assert_close(param.grad, grads_plain[param_name].grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{param_name}: {m}")


@pytest.mark.parametrize("img_size, window_size, dynamic", [
    (96, 6, False),  # windows tile 24 and 12, shrink to the 6 and 3 maps
    (80, 7, False),  # 20x20 map padded to 21x21 for 7x7 windows
    (None, None, True),  # built at 224, run at 96: masks rebuilt for the padded 24x24 map
])
def test_swin_nondefault_size_matches_timm(img_size, window_size, dynamic):
    overrides = {"img_size": img_size, "window_size": window_size} if not dynamic else {"dynamic_img_size": True}
    overrides["depths"] = (2, 2, 2, 2)  # plain and shifted windows in every stage, at a third of the cost
    size = img_size or 96
    check_numeric_parity("swin_tiny_patch4_window7_224", input_size=(3, size, size),
                         ours_kwargs=overrides, ref_kwargs=overrides)


def test_swin_rejects_wrong_input_size():
    model = visionzoo.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 96, 96))


def test_maxvit_small_img_size_matches_timm():
    overrides = {"img_size": 64, "depths": (1, 1, 2, 1)}
    check_numeric_parity("maxvit_tiny_tf_224", input_size=(3, 64, 64), ours_kwargs=overrides, ref_kwargs=overrides)


def test_maxvit_rejects_img_size_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        with torch.device("meta"):
            visionzoo.create_model("maxvit_tiny_tf_224", img_size=100)


def test_convnext_drop_path_and_layer_scale_overrides_reach_blocks():
    with torch.device("meta"):
        model = visionzoo.create_model("convnext_atto", drop_path_rate=0.3, ls_init_value=0.5)
    blocks = [block for stage in model.stages for block in stage.blocks]
    rates = [block.drop_path.drop_prob if isinstance(block.drop_path, DropPath) else 0.0 for block in blocks]
    assert len(blocks) == sum(model.config.depths)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates) and len(set(rates)) == len(rates)
    with torch.device("meta"):
        default = visionzoo.create_model("convnext_atto")
    assert not any(isinstance(m, DropPath) for m in default.modules())
    real = visionzoo.create_model("convnext_atto", num_classes=0, ls_init_value=0.5, depths=(1, 1, 1, 1))
    assert all(torch.equal(b.gamma, torch.full_like(b.gamma, 0.5)) for s in real.stages for b in s.blocks)


def test_swin_features_are_channels_first_maps():
    extractor = visionzoo.create_model("swin_tiny_patch4_window7_224", features_only=True, img_size=64,
                                       window_size=4, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]
