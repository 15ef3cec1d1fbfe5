"""Behaviour of the classic CNN families beyond the shared interface: AlexNet, VGG,
GoogLeNet, Inception v3 and DenseNet.

The generic parity and interface tests cover every variant; here are the auxiliary
classifiers, the dropout overrides and a numeric VGG check (every VGG is above the
harness's numeric parameter limit, so the generic parity test compares them by structure only).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import visionzoo
from harness import RELATIVE_TOLERANCE, max_relative_difference


def _materialise(model: nn.Module) -> nn.Module:
    """Random weights for a model built on the meta device, scaled so activations neither vanish nor
    explode (and random batch-norm statistics, so eval mode is not the identity). One pass of
    normal_ per tensor: far cheaper than a reference's own initialisation."""
    model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.zero_()
    return model


def _pair_on_meta(name: str, reference_builder, ours_kwargs: dict) -> tuple[nn.Module, nn.Module]:
    """A materialised reference and our model sharing its tensors (load_state_dict(assign=True))."""
    torch.manual_seed(0)
    with torch.device("meta"):
        reference = reference_builder()
        ours = visionzoo.create_model(name, **ours_kwargs)
    _materialise(reference)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return ours, reference


@pytest.fixture(scope="module")
def googlenets() -> tuple[nn.Module, nn.Module]:
    """Our GoogLeNet and torchvision's with the same weights and every dropout off."""
    return _pair_on_meta(
        "googlenet",
        lambda: torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False,
                                             dropout=0.0, dropout_aux=0.0),
        dict(drop_rate=0.0, aux_drop_rate=0.0))


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return max_relative_difference(actual, expected) <= RELATIVE_TOLERANCE


def test_googlenet_returns_aux_logits_in_training_only(googlenets):
    ours, _ = googlenets
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outputs = ours.train()(x)
        assert isinstance(outputs, tuple) and len(outputs) == 3
        assert outputs._fields == ("logits", "aux_logits2", "aux_logits1")
        assert [tuple(o.shape) for o in outputs] == [(2, 1000)] * 3
        logits = ours.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 1000)


def test_googlenet_aux_logits_match_torchvision_in_training(googlenets):
    # With dropout off, training mode is deterministic (batch norm uses the batch statistics),
    # so all three outputs can be compared as the harness compares eval outputs.
    ours, reference = googlenets
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = reference.train()(x)
        actual = ours.train()(x)
    for name, a, e in zip(("logits", "aux_logits2", "aux_logits1"), actual, expected):
        assert _close(a, e), f"{name}: max |diff| / max |ref| = {max_relative_difference(a, e):.2e}"
    assert not _close(actual.aux_logits1, actual.aux_logits2)  # the two heads are not one head twice


def test_googlenet_transform_input_matches_torchvision(googlenets):
    ours, reference = googlenets
    with torch.device("meta"):
        transformed = visionzoo.create_model("googlenet", transform_input=True)
    transformed.load_state_dict(ours.state_dict(), strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64)
    reference.transform_input = True  # torchvision reads the flag at every forward
    try:
        with torch.no_grad():
            expected = reference.eval()(x)
            actual = transformed.eval()(x)
            plain = ours.eval()(x)
    finally:
        reference.transform_input = False
    assert _close(actual, expected)
    assert not _close(plain, expected)  # the transform changes the function
    with pytest.raises(ValueError, match="in_chans=3"):
        visionzoo.create_model("googlenet", transform_input=True, in_chans=1)


def test_googlenet_aux_heads_follow_num_classes():
    with torch.device("meta"):
        model = visionzoo.create_model("googlenet", num_classes=7)
        assert model.aux1.fc2.out_features == 7 and model.aux2.fc2.out_features == 7
        model.reset_classifier(3)
        assert model.aux1.fc2.out_features == 3 and model.aux2.fc2.out_features == 3
        model.reset_classifier(0)  # no classifier: training mode returns the pooled features alone
        output = model.train()(torch.empty(2, 3, 64, 64))
        assert isinstance(output, torch.Tensor) and output.shape == (2, 1024)
        plain = visionzoo.create_model("googlenet", aux_logits=False)
        assert plain.aux1 is None and isinstance(plain.train()(torch.empty(2, 3, 64, 64)), torch.Tensor)


def test_inception_v3_has_no_aux_classifier_by_default_like_timm():
    with torch.device("meta"):
        assert visionzoo.create_model("inception_v3").AuxLogits is None
        assert timm.create_model("inception_v3").AuxLogits is None


def test_inception_v3_aux_classifier_matches_timm():
    ours, reference = _pair_on_meta("inception_v3", lambda: timm.create_model("inception_v3", aux_logits=True),
                                    dict(aux_logits=True))
    x = torch.randn(2, 768, 17, 17)  # the Mixed_6e map of a 299 px input
    with torch.no_grad():
        assert _close(ours.AuxLogits.eval()(x), reference.AuxLogits.eval()(x))
    with torch.device("meta"):
        model = visionzoo.create_model("inception_v3", aux_logits=True, num_classes=4)
        logits, aux = model.train()(torch.empty(2, 3, 299, 299))
        assert logits.shape == aux.shape == (2, 4)
        assert model.eval()(torch.empty(2, 3, 299, 299)).shape == (2, 4)
        model.reset_classifier(6)
        assert model.AuxLogits.fc.out_features == 6


def test_vgg_numeric_parity_at_small_input():
    # Every VGG is above the harness's numeric limit; this one runs with materialised random weights.
    # 64 px gives a 2x2 map, which the head's ConvMlp resizes to 7x7 before its 7x7 convolution.
    ours, reference = _pair_on_meta("vgg11_bn", lambda: timm.create_model("vgg11_bn"), {})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval()(x)
        actual = ours.eval()(x)
    assert _close(actual, expected), f"max |diff| / max |ref| = {max_relative_difference(actual, expected):.2e}"


def test_vgg_num_features_is_the_pre_logits_width():
    with torch.device("meta"):
        model = visionzoo.create_model("vgg16")
    assert model.num_features == 4096 and model.feature_info[-1].num_chs == 512
    assert [info.reduction for info in model.feature_info] == [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("name, size, overrides", [
    ("alexnet", 64, {}), ("vgg11", 32, {"hidden_features": 256}),  # narrow: the 4096-wide head has 120M weights
    ("googlenet", 64, {}), ("inception_v3", 75, {}), ("densenet121", 64, {})])
def test_drop_rate_override_reaches_the_head(name, size, overrides):
    """With drop_rate=0 the head is the same function in training and eval mode; with 0.5 it is not."""
    for drop_rate, same in ((0.0, True), (0.5, False)):
        torch.manual_seed(0)
        with torch.device("meta"):
            model = visionzoo.create_model(name, num_classes=10, drop_rate=drop_rate, **overrides)
            feature_shape = model.eval().forward_features(torch.empty(2, 3, size, size)).shape
        _materialise(model)
        features = torch.rand(feature_shape)
        with torch.no_grad():
            train_out = model.train().forward_head(features)
            eval_out = model.eval().forward_head(features)
        assert torch.equal(train_out, eval_out) is same, f"{name} drop_rate={drop_rate}"


def test_densenet_proj_drop_rate_reaches_every_dense_layer():
    with torch.device("meta"):
        model = visionzoo.create_model("densenet121", proj_drop_rate=0.1)
    rates = {m.drop_rate for n, m in model.named_modules() if n.rsplit(".", 1)[-1].startswith("denselayer")}
    assert rates == {0.1}


def test_inception_v3_features_only_matches_timm_stages():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model("inception_v3", features_only=True)
        ours = visionzoo.create_model("inception_v3", features_only=True)
    assert ours.channels() == reference.feature_info.channels()
    assert ours.reductions() == reference.feature_info.reduction()
    maps = ours(torch.empty(1, 3, 299, 299, device="meta"))
    assert [m.shape[-1] for m in maps] == [147, 71, 35, 17, 8]
