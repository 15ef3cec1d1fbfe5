from __future__ import annotations

import pytest
import torch

import visionzoo
from visionzoo.registry import ModelCard, UnknownModelError, get_card, register_model


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet5'; did you mean 'resnet50'"):
        visionzoo.create_model("resnet5")


def test_a_missing_path_is_reported_as_a_path(tmp_path):
    missing = str(tmp_path / "runs" / "best")
    with pytest.raises(UnknownModelError, match=r"neither a registered model nor an existing file or folder"):
        visionzoo.create_model(missing)


def test_registering_twice_raises():
    card = get_card("resnet18")
    with pytest.raises(ValueError, match="already registered"):
        register_model(card)


def test_reference_must_name_library():
    card = get_card("resnet18")
    bad = ModelCard(**{**card.__dict__, "name": "brand_new_model", "reference": "resnet18"})
    with pytest.raises(ValueError, match="library:name"):
        register_model(bad)


def test_list_models_pattern_and_family():
    assert "resnet50" in visionzoo.list_models()
    assert visionzoo.list_models("resnet1*") == ["resnet18", "resnet101", "resnet152"]
    assert set(visionzoo.list_models(family="resnet")) >= {"resnet18", "wide_resnet50_2"}
    with pytest.raises(ValueError, match="unknown family"):
        visionzoo.list_models(family="resnett")


def test_model_info_measures_params_and_gmacs():
    info = visionzoo.model_info("resnet50")
    assert info["family"] == "resnet" and info["year"] == 2015
    assert info["params"] == 25_557_032  # measured, not typed into the card
    assert 4.0 < info["gmacs"] < 4.2
    assert info["input_size"] == [3, 224, 224]
    assert info["reference"] == "timm:resnet50"


def test_unknown_override_is_a_clear_error():
    with pytest.raises(ValueError, match="does not accept 'windoww_size'"):
        visionzoo.create_model("resnet18", windoww_size=3)


def test_overrides_reach_model():
    model = visionzoo.create_model("resnet18", drop_rate=0.3, drop_path_rate=0.1)
    assert model.drop_rate == 0.3
    assert model.layer4[1].drop_path.drop_prob == pytest.approx(0.1)


def test_out_indices_needs_features_only():
    with pytest.raises(ValueError, match="features_only"):
        visionzoo.create_model("resnet18", out_indices=(1,))


def test_features_only_reports_channels_and_strides():
    extractor = visionzoo.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    assert extractor.channels() == [256, 512, 1024, 2048]
    assert extractor.reductions() == [4, 8, 16, 32]
    maps = extractor(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="out of range"):
        visionzoo.create_model("resnet50", features_only=True, out_indices=(7,))


def test_count_operators_counts_kernels_and_leaves_the_model_as_it_was():
    from visionzoo.complexity import compute_operators, count_operators

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
    model[4].weight.grad = torch.ones_like(model[4].weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    inference = count_operators(model, (3, 8, 8))
    assert inference["convolution"] == 1 and inference["addmm"] == 1
    training = count_operators(model, (3, 8, 8), train=True)
    assert training["convolution_backward"] == 1  # the backward pass is counted too
    assert compute_operators(training) > compute_operators(inference)
    assert compute_operators(inference) == 4  # conv, batch norm, relu, addmm: not the flatten's view or Linear's t

    assert not model.training
    assert torch.equal(model[4].weight.grad, torch.ones_like(model[4].weight))  # gradients untouched
    for key, value in model.state_dict().items():  # BatchNorm statistics too
        assert torch.equal(value, state[key]), key
