"""`push`: the model card (its YAML front matter, field by field, and its body), the repository's layout,
and the round trip back through `load_model("hf-hub:...")` from a Hugging Face cache in the Hub's
snapshot layout, offline. Nothing is mocked: the card is parsed, the model is rebuilt and run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

import visionzoo
from conftest import MODEL
from visionzoo.cli import main
from visionzoo.errors import SettingError, UsageError
from visionzoo.registry import get_card
from visionzoo.resolve import resolve_model
from visionzoo.share.card import card_license
from visionzoo.share.hub import push
from visionzoo.share.record import RunRecord


def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def pushed(tiny_runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pushed") / "repo"
    result = push(tiny_runs / "fast", "someone/tiny-shapes", to_folder=folder)
    return result


def test_card_front_matter_has_every_field(pushed, tiny_runs):
    meta, _ = _front_matter((pushed.folder / "README.md").read_text())
    summary = json.loads((tiny_runs / "fast" / "summary.json").read_text())
    best = summary["history"][summary["best_epoch"] - 1]
    assert meta["library_name"] == "visionzoo" and meta["pipeline_tag"] == "image-classification"
    assert {get_card(MODEL).family, "multiclass", MODEL} <= set(meta["tags"])
    assert meta["license"] == "unknown"  # from scratch: no base weights, no licence chosen
    assert "base_model" not in meta and "datasets" not in meta  # neither is known for generated shapes
    [index] = meta["model-index"]
    assert index["name"] == "tiny-shapes"
    [result] = index["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"]["split"] == "validation" and result["dataset"]["name"] == "builtin:shapes"
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert metrics["accuracy"] == pytest.approx(best["val_top1"], abs=1e-4)
    assert metrics["ece"] == pytest.approx(best["val_ece"], abs=1e-4)
    assert "top_5_accuracy" not in metrics  # three classes: no top-5


def test_card_body_says_what_how_results_limits_and_usage(pushed, tiny_runs):
    _, body = _front_matter((pushed.folder / "README.md").read_text())
    config = json.loads((tiny_runs / "fast" / "config.json").read_text())
    for heading in ("## Validation results", "## How it was trained", "## Limitations", "## Usage"):
        assert heading in body
    assert "circle, ring, square" in body and "32x32" in body
    # the settings table names the rule that chose each setting
    assert f"| lr | {config['resolved']['lr']:.4g} | user |" in body
    assert f"| optimizer | {config['resolved']['optimizer']} | {config['settings_source']['optimizer']} |" in body
    for image in ("confusion_matrix.png", "reliability.png"):
        assert f"]({image})" in body and (pushed.folder / image).stat().st_size > 1000
    assert 'visionzoo.load_model("hf-hub:someone/tiny-shapes")' in body and "visionzoo export" in body


def test_folder_holds_exactly_the_repository(pushed, tiny_runs):
    run = tiny_runs / "fast"
    assert set(pushed.files) == {"README.md", "config.json", "model.safetensors", "training_config.json",
                                 "training_summary.json", "calibration.json", "metrics_epochs.csv",
                                 "confusion_matrix.png", "reliability.png", "curves.png"}
    assert (pushed.folder / "config.json").read_bytes() == (run / "best" / "config.json").read_bytes()
    assert (pushed.folder / "model.safetensors").read_bytes() == (run / "best" / "model.safetensors").read_bytes()
    assert json.loads((pushed.folder / "training_config.json").read_text())["settings_source"]["lr"] == "user"


def _hub_cache(root, repo: str, files_from) -> None:
    """A Hugging Face cache holding `repo` as the Hub's client lays it out: refs/main names a commit,
    snapshots/<commit>/ holds the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = root / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, entry / "snapshots" / commit)


def test_round_trip_through_the_hub_cache_offline(pushed, tiny_runs, tmp_path, monkeypatch):
    _hub_cache(tmp_path / "hub", "someone/tiny-shapes", pushed.folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    original = visionzoo.load_model(tiny_runs / "fast" / "best")
    images = torch.rand(4, 3, 32, 32)
    expected = original(images)
    for model in (visionzoo.load_model("hf-hub:someone/tiny-shapes"), visionzoo.load_model(pushed.folder),
                  resolve_model("hf-hub:someone/tiny-shapes"), resolve_model(MODEL, "hf-hub:someone/tiny-shapes")):
        assert torch.equal(model(images), expected)
        spec, reference = visionzoo.spec_of(model), visionzoo.spec_of(original)
        assert spec.class_names == reference.class_names and spec.head == reference.head
        assert spec.data_config == reference.data_config
    # as weights for the architecture (what `train --pretrained hf-hub:...` fine-tunes from): the same
    # weights, classes and preprocessing, through the one resolver of `visionzoo.weights`
    weights = visionzoo.create_model(MODEL, pretrained="hf-hub:someone/tiny-shapes", num_classes=3).eval()
    assert torch.equal(weights(images), expected)
    assert visionzoo.spec_of(weights).class_names == visionzoo.spec_of(original).class_names
    assert visionzoo.spec_of(weights).weights == "hf-hub:someone/tiny-shapes"
    with pytest.raises(SettingError, match="holds a mobilenetv3_small_050, not a resnet18"):
        resolve_model("resnet18", "hf-hub:someone/tiny-shapes")
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        visionzoo.load_model("hf-hub:someone/absent")


def test_export_uploads_a_verified_torch_free_file(tiny_runs, tmp_path):
    from visionzoo.deploy.runtimes import open_exported

    result = push(tiny_runs / "fast", "someone/tiny-shapes", to_folder=tmp_path / "repo", export=["onnx"])
    verify = json.loads((tmp_path / "repo" / "exports" / "onnx" / "verify.json").read_text())
    assert verify["verified"] is True and verify["format"] == "onnx"
    assert "exports/onnx/model.onnx" in result.files
    classifier = open_exported(tmp_path / "repo" / "exports" / "onnx" / "model.onnx")
    images = torch.rand(2, 3, 32, 32)
    torch_logits = visionzoo.load_model(tmp_path / "repo")(images).detach().numpy()
    assert classifier.logits(images.numpy()).argmax(1).tolist() == torch_logits.argmax(1).tolist()
    _, body = _front_matter((tmp_path / "repo" / "README.md").read_text())
    assert 'hf_hub_download("someone/tiny-shapes", "exports/onnx/model.onnx")' in body


def test_licence_comes_from_the_base_weights_and_is_never_widened(tiny_runs):
    record = RunRecord.read(tiny_runs / "fast")
    non_commercial = RunRecord(record.run_dir, {**record.config, "pretrained": "resnet18.fb_ssl_yfcc100m_ft_in1k"},
                               record.summary, {**record.model_config, "weights": "resnet18.fb_ssl_yfcc100m_ft_in1k"})
    assert card_license(non_commercial) == ("cc-by-nc-4.0", None)
    with pytest.raises(SettingError, match="non-commercial"):
        card_license(non_commercial, "apache-2.0")
    apache = RunRecord(record.run_dir, {**record.config, "pretrained": True},
                       record.summary, {**record.model_config, "weights": "resnet18.a1_in1k"})
    assert card_license(apache) == ("apache-2.0", None)
    custom = RunRecord(record.run_dir, {**record.config, "pretrained": True},
                       record.summary, {**record.model_config, "weights": "fastvit_t8.apple_in1k"})
    assert card_license(custom) == ("other", "fastvit-license")


def test_refusals_are_one_line_usage_errors(tiny_runs, tmp_path, monkeypatch):
    with pytest.raises(SettingError, match="OWNER/NAME"):
        push(tiny_runs / "fast", "no-owner", to_folder=tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SettingError, match="not an empty folder"):
        push(tiny_runs / "fast", "someone/x", to_folder=tmp_path / "full")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="--to-folder"):
        push(tiny_runs / "fast", "someone/x")


def test_push_from_the_command_line(tiny_runs, tmp_path, capsys):
    assert main(["push", str(tiny_runs / "slow"), "--repo", "someone/slow", "--to-folder", str(tmp_path / "r"),
                 "--license", "mit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["url"] is None and "README.md" in out["files"]
    meta, _ = _front_matter((tmp_path / "r" / "README.md").read_text())
    assert meta["license"] == "mit"
