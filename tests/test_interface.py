"""The interface every model shares, checked for every registered variant.

The smallest variant of each kind (harness.numeric_parity_models: variants differing only in
size run the same code) runs for real at a small input (forward, backward, every parameter gets
a gradient); every check of shapes also runs on the `meta` device, which is how the other
variants are covered within the time budget.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import visionzoo
from harness import numeric_parity_models
from small_inputs import small_input
from visionzoo.registry import get_card

ALL_MODELS = visionzoo.list_models()
SMALL_MODELS = numeric_parity_models()


# Families whose convolutions and pools are unpadded (as in their papers): their maps come out a
# few pixels smaller than input / stride.
UNPADDED_FAMILIES = {"alexnet", "inception_v3", "airbench"}  # airbench: its 2x2 whitening conv


def _has_stages(name: str) -> bool:
    with torch.device("meta"):
        return bool(getattr(visionzoo.create_model(name), "feature_info", None))


def _setup(name: str) -> tuple[int, dict]:
    return small_input(get_card(name).family)


def _outputs(output) -> list[torch.Tensor]:
    """Flatten what forward returns (a tensor, or a tuple of logits in training mode)."""
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in _outputs(item)]


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_forward_backward_every_parameter_gets_gradient(name):
    size, overrides = _setup(name)
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=7, **overrides).train()
    x = torch.randn(2, 3, size, size)
    outputs = _outputs(model(x))
    for out in outputs:
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()
    sum(out.float().square().mean() for out in outputs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_builds_on_meta_device(name):
    with torch.device("meta"):
        model = visionzoo.create_model(name)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.num_classes == get_card(name).num_classes


@pytest.mark.parametrize("name", ALL_MODELS)
def test_shared_interface_shapes(name):
    """num_classes, pooled features, pre_logits, reset_classifier and in_chans, on meta."""
    size, overrides = _setup(name)
    x = torch.empty(2, 3, size, size, device="meta")
    with torch.device("meta"):
        model = visionzoo.create_model(name, num_classes=11, **overrides).eval()
        assert model(x).shape == (2, 11)
        features = model.forward_features(x)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        assert model.forward_head(features).shape == (2, 11)
        model.reset_classifier(4)
        assert model.num_classes == 4 and model(x).shape == (2, 4)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)

        pooled = visionzoo.create_model(name, num_classes=0, **overrides).eval()
        assert pooled(x).shape == (2, pooled.num_features)

        gray = visionzoo.create_model(name, in_chans=1, num_classes=3, **overrides).eval()
        assert gray(torch.empty(2, 1, size, size, device="meta")).shape == (2, 3)


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n in SMALL_MODELS[:: max(1, len(SMALL_MODELS) // 40)]])
def test_in_chans_runs_for_real(name):
    """A sample of families run with one input channel on real tensors too."""
    size, overrides = _setup(name)
    model = visionzoo.create_model(name, in_chans=1, num_classes=3, **overrides).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size)).shape == (1, 3)


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if _has_stages(n)])
def test_features_only_channels_and_strides(name):
    size, overrides = _setup(name)
    size = max(size, 64)
    x = torch.empty(2, 3, size, size, device="meta")
    with torch.device("meta"):
        extractor = visionzoo.create_model(name, features_only=True, **overrides)
        maps = extractor(x)
    assert len(maps) == len(extractor.feature_info) >= 2
    unpadded = get_card(name).family in UNPADDED_FAMILIES
    for feature, channels, stride in zip(maps, extractor.channels(), extractor.reductions()):
        assert feature.shape[:2] == (2, channels)
        width, nominal = feature.shape[-1], -(-size // stride)
        if unpadded:  # maps a few pixels short of input / stride, never larger
            assert size / stride - 4 <= width <= nominal, f"stride {stride}: width {width} at input {size}"
        else:
            assert width == nominal, f"stride {stride}: width {width} at input {size}"


@pytest.mark.parametrize("name", [n for n in SMALL_MODELS if _has_stages(n)][::5])
def test_features_only_out_indices_real(name):
    size, overrides = _setup(name)
    extractor = visionzoo.create_model(name, features_only=True, out_indices=(-2, -1), **overrides).eval()
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, size, size))
    assert [m.shape[1] for m in maps] == extractor.channels()
    assert len(maps) == 2


def test_forward_equals_head_of_features():
    model = visionzoo.create_model("resnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x)))


def test_every_model_is_an_nn_module():
    with torch.device("meta"):
        for name in ALL_MODELS:
            assert isinstance(visionzoo.create_model(name), nn.Module)
