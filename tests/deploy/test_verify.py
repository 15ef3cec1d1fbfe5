"""`--verify DATA`: a file run in its own runtime on images against eager; it fails (exit 1) on a file
exported with the wrong normalisation, passes on a good one, and records both in verify.json.
ONNX here (the fastest export); the phone formats are verified in test_litert/executorch/coreml."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_export import _write_class_folders

import visionzoo

pytest.importorskip("onnxruntime")

CLASSES = ["blue", "red"]


def colour_classifier(data, classes=CLASSES, size=32, **overrides):
    """resnet18 (random body) whose head separates the colour folders: the class-mean difference of the
    pooled features, from one forward pass (no training), so every image of `data` is classified right.
    `overrides` change the body (e.g. `layers=(1, 1, 1, 1)`: one block a stage, for exporters whose cost
    grows with the graph)."""
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.export.onnx import model_preprocessing
    from visionzoo.deploy.runtimes import preprocess_image

    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=len(classes), **overrides).eval()
    visionzoo.with_spec(model, class_names=list(classes))
    files = sorted(data.rglob("*.png"))
    x = torch.stack([torch.from_numpy(preprocess_image(decode_image(f), model_preprocessing(model, size)))
                     for f in files])
    labels = torch.tensor([classes.index(f.parent.name) for f in files])
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        means = torch.stack([features[labels == i].mean(0) for i in range(len(classes))])
        direction = means - means.mean(0)  # (classes, features)
        scale = 10.0 / direction.norm(dim=1, keepdim=True).max()
        model.fc.weight.copy_(direction * scale)
        model.fc.bias.copy_(-(direction * scale) @ means.mean(0))
        assert (model(x).argmax(1) == labels).all(), "the colour folders are not separable by this head"
    return model


@pytest.fixture
def onnx_export(tmp_path):
    data = _write_class_folders(tmp_path / "data")
    model = colour_classifier(data)
    folder = tmp_path / "model"
    visionzoo.save_model(model, folder)
    return model, folder, data


def _wrong_normalisation(monkeypatch):
    """Make the exporter write a mean that turns red images blue into the file's metadata."""
    import visionzoo.deploy.export.onnx as onnx_export
    import visionzoo.deploy.verify  # noqa: F401  (binds the true preprocessing before the patch)

    true = onnx_export.model_preprocessing

    def broken(model, img_size=None):
        preprocessing = true(model, img_size)
        return {**preprocessing, "mean": [0.485 + 0.8, 0.456, 0.406 - 0.8]}

    monkeypatch.setattr(onnx_export, "model_preprocessing", broken)


def test_cli_verify_passes_a_good_export_and_fails_a_broken_one(onnx_export, tmp_path, capsys, monkeypatch):
    from visionzoo.cli import main

    _, folder, data = onnx_export
    good = tmp_path / "good" / "m.onnx"
    code = main(["export", str(folder), "--out", str(good), "--image-size", "32", "--verify", str(data)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "m.onnx in onnx on 12 images: top-1 file 100.00%, eager 100.00%" in printed and "passed" in printed
    record = json.loads((good.parent / "verify.json").read_text())["m.onnx"]
    assert record["passed"] and record["drop"] == 0.0 and record["max_abs_difference"] < 1e-3

    _wrong_normalisation(monkeypatch)
    broken = tmp_path / "broken" / "m.onnx"
    code = main(["export", str(folder), "--out", str(broken), "--image-size", "32", "--verify", str(data),
                 "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # the elementwise check passed (same graph); the images caught the metadata
    assert report["verified"] is True
    record = json.loads((broken.parent / "verify.json").read_text())["m.onnx"]
    assert record == report["verification"][0]
    assert not record["passed"] and record["top1_eager"] == 1.0 and record["drop"] >= 25.0
    from visionzoo.deploy.verify import verify_export

    assert verify_export(broken, visionzoo.load_model(folder), data, max_drop=100.0, save=False)["passed"]


def test_unlabelled_images_give_agreement_with_eager(onnx_export, tmp_path, monkeypatch):
    from visionzoo.deploy.verify import export, verify_export

    model, _, data = onnx_export
    loose = tmp_path / "loose"
    loose.mkdir()
    for index, path in enumerate(sorted(data.rglob("*.png"))):
        (loose / f"{index}.png").write_bytes(path.read_bytes())
    report = export(model, tmp_path / "m.onnx", img_size=32, verify_data=loose)
    record = report.verification[0]
    assert not record["labelled"] and record["agreement"] == 1.0 and record["drop"] == 0.0 and record["passed"]
    _wrong_normalisation(monkeypatch)
    export(model, tmp_path / "b.onnx", img_size=32, verify=False)
    record = verify_export(tmp_path / "b.onnx", model, loose, max_drop=1.0)
    assert not record["labelled"] and record["agreement"] <= 0.75 and not record["passed"]
    assert np.isclose(record["drop"], 100 * (1 - record["agreement"]))
    assert set(json.loads((tmp_path / "verify.json").read_text())) == {"m.onnx", "b.onnx"}


def test_cli_refuses_mismatched_format_options(tmp_path, capsys):
    import visionzoo as package
    from visionzoo.cli import main
    from visionzoo.deploy.verify import export

    assert package.export is export
    code = main(["export", "resnet18", "--pretrained", "none", "--format", "coreml", "--out", str(tmp_path / "m.tflite")])
    assert code == 2 and "NAME.mlpackage" in capsys.readouterr().err
    code = main(["export", "resnet18", "--pretrained", "none", "--precision", "fp16", "--out", str(tmp_path / "m.onnx")])
    assert code == 2 and "--precision applies to" in capsys.readouterr().err
    code = main(["export", "resnet18", "--pretrained", "none", "--format", "litert", "--int8",
                 "--out", str(tmp_path / "m.tflite")])
    assert code == 2 and "--calib DIR" in capsys.readouterr().err
