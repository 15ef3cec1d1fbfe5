"""Converters from other published layouts: detected from keys, every key and shape asserted, exact round trips.

Source layouts come from the reference code where it is installed (torchvision, open_clip),
numerically for small models and by keys and shapes on the meta device for large ones, and
otherwise are synthesised from our own state_dict by the inverse mapping.
"""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

import visionzoo
from visionzoo.weights.convert import CONVERTERS, ConversionError, convert_state_dict, find_converter, to_source_layout


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and BN statistic random, so that a tensor loaded in the wrong place shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * 0.05 + (1.0 if param.ndim == 1 and "weight" in name else 0.0))
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
    return model.eval()


def _shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _convert(source_state: dict, ours: torch.nn.Module, expected: str) -> dict:
    target = _shapes(ours)
    converter = find_converter(set(source_state), target)
    assert converter is not None and converter.name == expected
    return convert_state_dict(converter, source_state, target)


# --- torchvision, numerically (small models) -------------------------------------------------------------


def _assert_same_function(reference: torch.nn.Module, ours: torch.nn.Module, size: int = 96) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, actual = reference(x), ours.eval()(x)
    assert (expected - actual).abs().max() <= 1e-4 * expected.abs().max()


def test_torchvision_mobilenetv3_numerically():
    reference = _randomized(torchvision.models.mobilenet_v3_small())
    ours = visionzoo.create_model("mobilenetv3_small_100")
    ours.load_state_dict(_convert(reference.state_dict(), ours, "torchvision MobileNetV3"), strict=True)
    for module in ours.modules():  # torchvision's MobileNetV3 uses BN eps 1e-3, timm's 1e-5: not a layout matter
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-3
    _assert_same_function(reference, ours)


def test_torchvision_vit_numerically():
    from torchvision.models.vision_transformer import VisionTransformer

    reference = _randomized(VisionTransformer(image_size=224, patch_size=16, num_layers=2, num_heads=3,
                                              hidden_dim=192, mlp_dim=768))
    ours = visionzoo.create_model("vit_tiny_patch16_224", depth=2)
    ours.load_state_dict(_convert(reference.state_dict(), ours, "torchvision ViT"), strict=True)
    _assert_same_function(reference, ours, size=224)


def test_torchvision_densenet_legacy_keys_numerically():
    reference = _randomized(torchvision.models.densenet121())
    ours = visionzoo.create_model("densenet121")
    modern = reference.state_dict()
    assert find_converter(set(modern), _shapes(ours)) is None  # torchvision's current keys are ours already
    legacy = to_source_layout(next(c for c in CONVERTERS if c.name == "DenseNet legacy keys"), modern)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    ours.load_state_dict(_convert(legacy, ours, "DenseNet legacy keys"), strict=True)
    _assert_same_function(reference, ours, size=64)


# --- torchvision, by keys and shapes on the meta device (large models) -------------------------------------


@pytest.mark.parametrize("torchvision_name, ours_name, converter", [
    ("vgg11", "vgg11", "torchvision VGG"),
    ("vgg16_bn", "vgg16_bn", "torchvision VGG"),
    ("vit_b_16", "vit_base_patch16_224", "torchvision ViT"),
    ("swin_t", "swin_tiny_patch4_window7_224", "torchvision Swin"),
    ("swin_b", "swin_base_patch4_window7_224", "torchvision Swin"),
    ("convnext_tiny", "convnext_tiny", "torchvision ConvNeXt"),
    ("convnext_large", "convnext_large", "torchvision ConvNeXt"),
    ("efficientnet_b0", "efficientnet_b0", "torchvision EfficientNet"),
    ("efficientnet_b4", "efficientnet_b4", "torchvision EfficientNet"),
    ("mobilenet_v3_large", "mobilenetv3_large_100", "torchvision MobileNetV3"),
])
def test_torchvision_layouts_map_every_key_and_shape(torchvision_name, ours_name, converter):
    with torch.device("meta"):
        reference = torchvision.models.get_model(torchvision_name)
        ours = visionzoo.create_model(ours_name)
    converted = _convert(reference.state_dict(), ours, converter)
    assert set(converted) == set(ours.state_dict()) - {k for k in ours.state_dict() if k.endswith("num_batches_tracked")
                                                      and k not in converted}
    assert all(converted[k].shape == v.shape for k, v in ours.state_dict().items() if k in converted)


# --- synthesised from our own state_dict: round trips -------------------------------------------------------


@pytest.mark.parametrize("converter_name, model_name, overrides", [
    ("efficientnet_pytorch", "efficientnet_b0", {}),
    ("efficientnet_pytorch", "efficientnet_lite0", {}),
    ("ConvNeXt official", "convnext_atto", {}),
    ("ConvNeXt official", "convnext_tiny", {}),
    ("Swin official", "swin_tiny_patch4_window7_224", {"depths": (2, 2), "num_heads": (1, 2), "embed_dim": 16}),
    ("DINOv2 official", "vit_small_patch14_reg4_dinov2", {"depth": 2}),
    ("DINOv2 official", "vit_giant_patch14_dinov2", {"depth": 1, "embed_dim": 96, "num_heads": 2}),
    ("CLIP image tower", "vit_base_patch32_clip_224", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    ("torchvision Swin", "swin_tiny_patch4_window7_224", {"depths": (2, 2), "num_heads": (1, 2), "embed_dim": 16}),
    ("torchvision ConvNeXt", "convnext_atto", {}),
    ("torchvision VGG", "vgg11", {}),
])
def test_round_trip_is_exact(converter_name, model_name, overrides):
    converter = next(c for c in CONVERTERS if c.name == converter_name)
    num_classes = 512 if converter_name == "CLIP image tower" else None
    device = "meta" if model_name == "vgg11" else "cpu"
    with torch.device(device):
        ours = visionzoo.create_model(model_name, num_classes=num_classes, **overrides)
    if device == "cpu":
        _randomized(ours)
        if converter_name == "CLIP image tower":  # CLIP's projection has no bias
            torch.nn.init.zeros_(ours.head.bias)
    state = ours.state_dict()
    source = to_source_layout(converter, state)
    converted = _convert(source, ours, converter_name)
    assert set(converted) | {k for k in state if k.endswith("num_batches_tracked")} >= set(state)
    for key, value in converted.items():
        assert value.shape == state[key].shape, key
        if device == "cpu":
            assert torch.equal(value, state[key]), key


def test_official_checkpoint_buffers_and_text_tower_are_left_out():
    with torch.device("meta"):
        ours = visionzoo.create_model("swin_tiny_patch4_window7_224", depths=(2, 2), num_heads=(1, 2), embed_dim=16)
    swin = next(c for c in CONVERTERS if c.name == "Swin official")
    source = to_source_layout(swin, ours.state_dict())
    source["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    source["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    assert set(_convert(source, ours, "Swin official")) == set(ours.state_dict())


def test_dinov2_official_chunked_blocks():
    """Meta's hub models with block_chunks > 0 name block i `blocks.<chunk>.<i>`."""
    with torch.device("meta"):
        ours = visionzoo.create_model("vit_small_patch14_reg4_dinov2", depth=4)
    dinov2 = next(c for c in CONVERTERS if c.name == "DINOv2 official")
    source = {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // 2}.{m[1]}.", k): v
              for k, v in to_source_layout(dinov2, ours.state_dict()).items()}
    source["mask_token"] = torch.zeros(1, 384, device="meta")
    assert "blocks.1.3.attn.qkv.weight" in source
    assert set(_convert(source, ours, "DINOv2 official")) == set(ours.state_dict())


def test_dinov3_official_convnext_loads_as_a_feature_backbone(tmp_path):
    """Meta's DINOv3 ConvNeXt checkpoints: the official ConvNeXt names, no classifier, and per-stage feature
    norms the backbone does not use; the features equal timm's ConvNeXt on the same weights."""
    from safetensors.torch import save_file

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("convnext_atto", num_classes=0).eval()
    with torch.device("meta"):
        target = visionzoo.create_model("convnext_atto", num_classes=0)
    converter = next(c for c in CONVERTERS if c.name == "ConvNeXt official")
    source = to_source_layout(converter, {k: reference.state_dict()[k] for k in target.state_dict()})
    assert "downsample_layers.0.0.weight" in source and not any(k.startswith("head") for k in source)
    source.update({f"norms.{i}.weight": torch.ones(40) for i in range(4)})
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "dinov3_convnext.safetensors"))
    ours = visionzoo.create_model("convnext_atto", num_classes=0, pretrained=str(tmp_path / "dinov3_convnext.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference(x), rtol=1e-5, atol=1e-5)


def test_deit_official_checkpoint_loads_as_is(tmp_path):
    """DeiT's official checkpoints hold timm's names inside {"model": ...}; no renaming is needed."""
    ours = _randomized(visionzoo.create_model("deit_tiny_distilled_patch16_224", depth=1))
    torch.save({"model": ours.state_dict(), "epoch": 300}, tmp_path / "deit_tiny_distilled.pth")
    loaded = visionzoo.create_model("deit_tiny_distilled_patch16_224", depth=1,
                                    pretrained=str(tmp_path / "deit_tiny_distilled.pth")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=0, atol=0)


def test_a_key_that_does_not_map_is_named():
    with torch.device("meta"):
        ours = visionzoo.create_model("convnext_atto")
    converter = next(c for c in CONVERTERS if c.name == "ConvNeXt official")
    source = to_source_layout(converter, ours.state_dict())
    del source["stages.2.1.pwconv1.weight"]
    source["stages.9.0.extra"] = torch.zeros(1, device="meta")
    with pytest.raises(ConversionError, match=r"stages\.2\.1\.pwconv1\.weight.*stages\.9\.0\.extra"):
        convert_state_dict(converter, source, _shapes(ours))


def test_converted_checkpoint_loads_through_create_model(tmp_path):
    """The whole path: a file in another layout, detected, converted, adapted to 10 classes."""
    reference = _randomized(torchvision.models.mobilenet_v3_small())
    torch.save(reference.state_dict(), tmp_path / "mobilenet_v3_small.pth")
    model = visionzoo.create_model("mobilenetv3_small_100", num_classes=10,
                                   pretrained=str(tmp_path / "mobilenet_v3_small.pth"))
    assert model.classifier.out_features == 10
    torch.testing.assert_close(model.conv_stem.weight, reference.features[0][0].weight)


# --- open_clip, numerically -----------------------------------------------------------------------------------


def test_open_clip_checkpoint_into_the_image_tower_and_the_whole_clip_model_numerically():
    """open_clip's layout (OpenAI's, for ViTs): image tower alone, and both towers into visionzoo.clip.CLIP."""
    open_clip = pytest.importorskip("open_clip")
    from visionzoo.factory import create_clip

    reference = _randomized(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None))
    state = reference.state_dict()
    image, tokens = torch.randn(1, 3, 224, 224), torch.randint(1, 49000, (2, 77))

    tower = visionzoo.create_model("vit_base_patch32_clip_quickgelu_224", num_classes=512)
    tower.load_state_dict(_convert(state, tower, "CLIP image tower"), strict=True)
    clip = create_clip("ViT-B-32-quickgelu")
    clip.load_state_dict(_convert(state, clip, "CLIP image and text towers"), strict=True)
    with torch.no_grad():
        expected_image, expected_text = reference.encode_image(image), reference.encode_text(tokens)
        for actual, expected in [(tower.eval()(image), expected_image), (clip.eval().encode_image(image), expected_image),
                                 (clip.encode_text(tokens), expected_text)]:
            assert (expected - actual).abs().max() <= 1e-4 * expected.abs().max()
    assert torch.equal(clip.logit_scale, reference.logit_scale)
