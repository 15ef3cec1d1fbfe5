from __future__ import annotations

import pytest
import torch

import visionzoo
from visionzoo import registry
from visionzoo.registry import (
    RECIPE_STYLES,
    CamLayer,
    FamilyFacts,
    LoraTargets,
    ModelCard,
    UnknownModelError,
    VariantExtras,
    family_facts,
    get_card,
    list_families,
    register_family,
    register_model,
)


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


def test_every_family_file_ends_with_one_variants_table():
    """Each module of visionzoo.models has `VARIANTS: dict[str, Config]` of one frozen config
    class, and its entries are exactly the cards registered: the configs themselves, not copies."""
    import dataclasses
    import importlib
    import pkgutil

    from visionzoo import models

    seen = []
    for module_info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"visionzoo.models.{module_info.name}")
        variants = module.VARIANTS
        assert isinstance(variants, dict) and variants, module_info.name
        (config_type,) = {type(config) for config in variants.values()}
        assert dataclasses.is_dataclass(config_type) and config_type.__dataclass_params__.frozen
        for name, config in variants.items():
            assert get_card(name).config is config, name
        seen += variants
    assert sorted(seen) == sorted(visionzoo.list_models())


VIT_STYLE_FAMILIES = {"vit", "deit", "dinov2", "dinov3", "clip", "siglip2", "eva02", "swin", "maxvit",
                      "efficientvit_mit", "efficientvit_msra", "repvit", "fastvit"}  # RepViT and FastViT: DeiT's AdamW recipe


def test_every_card_names_its_recipe_style():
    for name in visionzoo.list_models():
        card = get_card(name)
        assert card.recipe_style in RECIPE_STYLES, name
        expected = ("vit" if card.family in VIT_STYLE_FAMILIES
                    else "convnext" if card.family in ("convnext", "convnextv2") else "convnet")
        assert card.recipe_style == expected, (name, card.family)
    assert visionzoo.model_info("resnet18")["recipe_style"] == "convnet"


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register into a copy of the registry, so that test families do not outlive the test."""
    registry._load_families()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))


def test_register_family_fills_family_facts_and_applies_extras(scratch_registry):
    small, wide = get_card("resnet18").config, get_card("wide_resnet50_2").config
    builder = get_card("resnet18").builder
    cards = register_family(
        {"test_net_a": small, "test_net_b": wide}, family="test_net", paper="A", year=2001, builder=builder,
        recipe_style="convnet", reference_library="torchvision",
        extras={"test_net_b": VariantExtras(paper="B", year=2002, num_classes=0, input_size=(3, 160, 160))})
    a, b = cards
    assert (a.name, a.family, a.paper, a.year, a.num_classes, a.input_size, a.reference, a.defaults) == (
        "test_net_a", "test_net", "A", 2001, 1000, (3, 224, 224), "torchvision:test_net_a", {})
    assert (b.family, b.paper, b.year, b.num_classes, b.input_size) == ("test_net", "B", 2002, 0, (3, 160, 160))
    assert b.config is wide and get_card("test_net_b") is b
    # a config that fixes its input size gives the card that size
    from visionzoo.models.vit import VisionTransformer, VisionTransformerConfig

    vit = register_family({"test_vit_96": VisionTransformerConfig(img_size=96)}, family="test_vit", paper="V",
                          year=2003, builder=VisionTransformer, recipe_style="vit")
    assert vit[0].input_size == (3, 96, 96) and vit[0].reference == "timm:test_vit_96"


def test_register_family_refuses_stray_extras_and_unknown_styles(scratch_registry):
    config, builder = get_card("resnet18").config, get_card("resnet18").builder
    with pytest.raises(ValueError, match="extras for 'test_net_c', which VARIANTS does not list"):
        register_family({"test_net_a": config}, family="test_net", paper="A", year=2001, builder=builder,
                        recipe_style="convnet", extras={"test_net_c": VariantExtras(year=2002)})
    with pytest.raises(ValueError, match="unknown recipe_style 'transformer'; choose one of vit, convnext, convnet"):
        register_family({"test_net_a": config}, family="test_net", paper="A", year=2001, builder=builder,
                        recipe_style="transformer")


def test_register_family_records_the_family_facts_for_the_workflows(scratch_registry):
    config, builder = get_card("resnet18").config, get_card("resnet18").builder
    cam, lora = CamLayer("layer4"), LoraTargets(r"layer\d\.\d+\.conv1", r"layer\d\.\d+\.conv2")
    register_family({"test_net_a": config, "test_net_lite": config}, family="test_net", paper="A", year=2001,
                    builder=builder, recipe_style="convnet", cam_layer=cam, lora_targets=lora,
                    extras={"test_net_lite": VariantExtras(family="test_net_lite", edge=True)})
    assert family_facts("test_net") == FamilyFacts("test_net", cam, lora, edge=False)
    assert family_facts("test_net_lite") == FamilyFacts("test_net_lite", cam, lora, edge=True)  # a family of its own
    with pytest.raises(ValueError, match="unknown family 'test_nett'; did you mean 'test_net'"):
        family_facts("test_nett")
    # a family is stated once: a second call may not change its facts, nor may two of its variants differ
    with pytest.raises(ValueError, match="family 'test_net' is registered twice with different facts"):
        register_family({"test_net_b": config}, family="test_net", paper="A", year=2001, builder=builder,
                        recipe_style="convnet", edge=True)
    with pytest.raises(ValueError, match="family 'test_other': its variants give it different facts"):
        register_family({"test_other_a": config, "test_other_b": config}, family="test_other", paper="A", year=2001,
                        builder=builder, recipe_style="convnet", extras={"test_other_b": VariantExtras(edge=True)})


def test_each_family_file_registers_what_the_workflows_ask():
    """What explain's, adapt's and advise's tables used to hold, now registered by each family's file."""
    facts = {family: family_facts(family) for family in list_families()}
    assert all(f.cam_layer is not None for f in facts.values())
    assert {f for f, fact in facts.items() if fact.edge} == {"efficientnet_lite", "mobilenetv3", "mobilenetv4", "repvit",
                                                                "fastvit", "mobileone"}
    assert {f for f, fact in facts.items() if fact.lora_targets} == {
        "vit", "deit", "dinov2", "dinov3", "clip", "siglip2", "eva02", "swin", "maxvit", "convnext", "convnextv2",
        "fastvit"}
    assert facts["convnext"].lora_targets.mlp is None  # no attention: the MLP's linears are the targets
    assert facts["resnet"].cam_layer == CamLayer("layer4") and facts["swin"].cam_layer.to_map is not None


def test_every_family_config_names_its_paper():
    for name in visionzoo.list_models():
        card = get_card(name)
        doc = type(card.config).__doc__ or ""
        assert card.paper in " ".join(doc.split()), (name, card.paper, doc)  # not dataclass's generated signature


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
    from visionzoo.measure import compute_operators, count_operators

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
