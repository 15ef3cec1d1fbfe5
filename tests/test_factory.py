"""visionzoo.factory: the model spec, save_model / load_model, and the preprocessing a model carries."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import visionzoo
from visionzoo.factory import class_names, spec_of, with_spec
from visionzoo.weights import get_weight


def _model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", **kwargs)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    with_spec(model, class_names=[f"class {i}" for i in range(model.num_classes)])
    return model.eval()


def test_save_and_load_restore_the_model_exactly(tmp_path):
    model = _model(num_classes=7, in_chans=1, drop_rate=0.1)
    folder = visionzoo.save_model(model, tmp_path / "run" / "best")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # nothing half-written
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 7 and config["in_chans"] == 1
    assert config["overrides"] == {"drop_rate": 0.1}
    assert config["class_names"][3] == "class 3"
    assert config["preprocessing"]["input_size"] == [3, 224, 224]

    restored = visionzoo.load_model(folder)
    assert not restored.training and spec_of(restored).class_names == spec_of(model).class_names
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    again = visionzoo.create_model("resnet18", num_classes=7, in_chans=1, pretrained=str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert class_names(again) == list(spec_of(model).class_names)

    visionzoo.save_model(restored, folder)  # overwriting a saved model in place works
    assert visionzoo.data_config(visionzoo.load_model(folder)) == visionzoo.data_config(model)


def test_load_model_rejects_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_model"):
        visionzoo.load_model(tmp_path)


def test_data_config_follows_the_weights():
    entry = get_weight("resnet50.a1_in1k")
    plain = visionzoo.data_config("resnet50")  # the architecture's default weight
    assert plain["crop_pct"] == entry.crop_pct and plain["interpolation"] == entry.interpolation
    model = _model()
    with_spec(model, data_config=get_weight("resnet18.tv_in1k").data_config(), weights="resnet18.tv_in1k")
    config = visionzoo.data_config(model)
    assert config["interpolation"] == "bilinear" and config["crop_pct"] == 0.875
    no_weights = visionzoo.data_config("mobilenetv3_large_075")  # no published weights: ImageNet defaults
    assert no_weights["mean"] == (0.485, 0.456, 0.406) and no_weights["input_size"] == (3, 224, 224)


def test_data_config_follows_an_img_size_override():
    with torch.device("meta"):
        model = visionzoo.create_model("vit_tiny_patch16_224", img_size=160)
    assert visionzoo.data_config(model)["input_size"] == (3, 160, 160)


def test_transforms_resize_crop_and_normalise():
    from PIL import Image

    model = _model()
    with_spec(model, data_config={**get_weight("resnet18.tv_in1k").data_config(), "input_size": [3, 96, 96]})
    image = Image.new("RGB", (300, 200), (124, 116, 104))  # about the ImageNet mean colour
    tensor = visionzoo.transforms(model)(image)
    assert tensor.shape == (3, 96, 96) and tensor.abs().max() < 0.05
    assert visionzoo.transforms(model, train=True)(image).shape == (3, 96, 96)


def test_class_names_of_imagenet_weights():
    model = _model(num_classes=1000)
    with_spec(model, class_names=None)
    assert class_names(model) is None
    with_spec(model, weights="resnet18.a1_in1k")
    assert class_names(model)[281] == "tabby"


# --- the model spec -----------------------------------------------------------------------------------


def test_spec_is_set_once_and_changed_only_through_with_spec():
    with torch.device("meta"):
        model = visionzoo.create_model("vit_tiny_patch16_224", num_classes=3, img_size=160)
    spec = spec_of(model)
    assert spec.name == "vit_tiny_patch16_224" and spec.overrides == {"img_size": 160}
    assert spec.data_config["input_size"] == (3, 160, 160) and spec.class_names is None and spec.weights is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    assert with_spec(model, class_names=["a", "b", "c"]) is model
    assert spec_of(model).class_names == ("a", "b", "c") and spec.class_names is None  # a new spec, stored back
    assert class_names(model) == ["a", "b", "c"]
    model.reset_classifier(5)
    assert class_names(model) is None  # names for 3 outputs do not describe 5


def test_spec_of_a_module_visionzoo_did_not_make_says_so():
    with pytest.raises(ValueError, match="Linear was not made by visionzoo"):
        spec_of(torch.nn.Linear(2, 2))
    assert visionzoo.data_config(torch.nn.Linear(2, 2))["input_size"] == (3, 224, 224)  # ImageNet defaults


def test_wrappers_answer_spec_of():
    with torch.device("meta"):
        features = visionzoo.create_model("resnet18", features_only=True, out_indices=(1, 2))
    assert spec_of(features).name == "resnet18"
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = _model(num_classes=3)  # what torch.compile wraps a model in
    assert spec_of(compiled_like).name == "resnet18"


def test_save_model_writes_the_spec_and_load_model_restores_it(tmp_path):
    model = _model(num_classes=2)
    head = {"task": "multilabel", "thresholds": [0.3, 0.6], "temperature": 1.5}
    adapter = {"method": "lora", "rank": 4, "targets": ["fc"]}
    with_spec(model, head=head, adapter=adapter, weights="resnet18.a1_in1k")
    folder = visionzoo.save_model(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["head"] == head and config["adapter"] == adapter and config["weights"] == "resnet18.a1_in1k"
    restored = spec_of(visionzoo.load_model(folder))
    assert restored == spec_of(model)
