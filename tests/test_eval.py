"""Evaluation metrics by hand, and `visionzoo train` / `visionzoo eval` end to end on small data."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from visionzoo.cli import main
from visionzoo.metrics.classification import classification_metrics, expected_calibration_error


def test_metrics_match_hand_computed_values():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.full((6, 3), -5.0)
    logits[torch.arange(6), predicted] = 5.0
    logits[torch.arange(6), labels] += 1.0  # the true class is always second best or best
    metrics = classification_metrics(logits, labels, ["a", "b", "c"])
    assert metrics["top1"] == pytest.approx(4 / 6)
    assert "top5" not in metrics  # only 3 classes: top-5 would always be 100%, so it is not reported
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a = metrics["per_class"]["a"]
    assert a["precision"] == pytest.approx(1 / 2) and a["recall"] == pytest.approx(1 / 2) and a["support"] == 2
    b = metrics["per_class"]["b"]
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0 and b["f1"] == pytest.approx(0.8)


def test_expected_calibration_error():
    # Confident and always right: ECE 0. Confident (p=0.9) and right half the time: ECE 0.4.
    assert expected_calibration_error(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])) == pytest.approx(0)
    probabilities = torch.tensor([[0.9, 0.1]] * 4)
    assert expected_calibration_error(probabilities, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.4)


def test_cli_train_then_eval_end_to_end(tmp_path, capsys, one_thread):
    data = "builtin:shapes?size=32&train=40&val=20"
    run = tmp_path / "run"
    code = main(["train", "--model", "resnet18", "--data", data, "--epochs", "1", "--batch-size", "20",
                 "--out", str(run), "--workers", "0", "--no-progress", "--crop-padding", "2", "--tta-shift", "1",
                 "--alternate-flip", "--lookahead", "2", "--norm-lr-scale", "8", "--schedule", "linear",
                 "--min-lr-ratio", "0.1", "--warmup-start-ratio", "0.2"])
    assert code == 0
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["crop_padding"] == 2 and resolved["tta_shift"] == 1
    assert (resolved["alternate_flip"], resolved["lookahead"], resolved["norm_lr_scale"], resolved["schedule"],
            resolved["min_lr_ratio"], resolved["warmup_start_ratio"]) == (True, 2, 8.0, "linear", 0.1, 0.2)
    captured = capsys.readouterr()
    last_line = captured.out.strip().splitlines()[-1]
    assert str(run) in last_line and "best val top-1" in last_line
    for name in ("config.json", "metrics_epochs.csv", "curves.png", "confusion_matrix.png", "best/model.safetensors",
                 "last/config.json", "checkpoint/latest.json"):
        assert (run / name).exists(), name

    code = main(["eval", str(run / "best"), "--data", data, "--json", "--out", str(tmp_path / "eval")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "per_class", "ece"} <= set(result)
    assert 0 <= result["top1"] <= result["top5"] <= 1 and result["count"] == 20
    assert set(result["per_class"]) == {"circle", "ring", "triangle", "square", "pentagon", "hexagon", "star",
                                        "cross", "crescent", "arrow"}
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000

    code = main(["eval", str(run), "--data", data])  # a run folder means its best/
    assert code == 0
    assert "per class" in capsys.readouterr().out

    code = main(["eval", str(run), "--data", data, "--tta-flip", "--tta-shift", "1", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["count"] == 20


def test_tta_views_are_weighted_as_documented():
    """Half the weight on the image and its mirror, half on both views shifted by 1 pixel towards the
    top left and the bottom right, reflect-padded; checked against views built with F.pad."""
    from visionzoo.evaluation import tta_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4))
    images = torch.rand(2, 3, 6, 6)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    top_left, bottom_right = padded[..., :6, :6], padded[..., 2:, 2:]

    def flip_mean(x):
        return (model(x) + model(x.flip(-1))) / 2

    expected = (flip_mean(images) + (flip_mean(top_left) + flip_mean(bottom_right)) / 2) / 2
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, images, flip=True, shift=1), expected, atol=1e-6)
        assert torch.allclose(tta_logits(model, images, flip=True), flip_mean(images), atol=1e-6)
        assert torch.equal(tta_logits(model, images), model(images))


def test_cli_scan_and_cache_write_bad_file_list_and_training_survives(tmp_path, capsys, one_thread):
    for name, colour in (("dark", (20, 20, 20)), ("light", (230, 230, 230))):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 20), colour).save(folder / f"{i}.jpg")
    (tmp_path / "data" / "dark" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "data" / "light" / "empty.png").write_bytes(b"")
    run = tmp_path / "run"
    code = main(["train", "--model", "resnet18", "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4",
                 "--image-size", "16", "--scan", "--cache", "--out", str(run), "--workers", "0", "--no-progress", "--val-fraction", "0.3"])
    assert code == 0
    bad = (run / "bad_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in bad) == ["broken.jpg", "empty.png"]
    assert all("\t" in line and line.split("\t")[1] for line in bad)
    assert json.loads((run / "config.json").read_text())["resolved"]["cache"] is True


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    assert main(["train", "--model", "resnet18", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--model", "resnet18", "--data", "builtin:shapes?train=20&val=10&size=16",
                 "--recipe", "finetune", "--optimizer", "sgd", "--epochs", "0"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err


def test_top5_is_reported_only_above_five_classes():
    torch.manual_seed(0)
    for num_classes, reported in ((2, False), (5, False), (6, True)):
        logits, labels = torch.randn(12, num_classes), torch.arange(12) % num_classes
        metrics = classification_metrics(logits, labels, [str(i) for i in range(num_classes)])
        assert ("top5" in metrics) == reported, num_classes
    ranks = logits.argsort(dim=1, descending=True)
    expected = (ranks[:, :5] == labels[:, None]).any(dim=1).float().mean()
    assert metrics["top5"] == pytest.approx(float(expected))


def test_two_class_run_and_eval_show_no_top5(tmp_path, capsys, one_thread):
    for name, colour in (("dark", (20, 20, 20)), ("light", (230, 230, 230))):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4",
                 "--image-size", "16", "--out", str(run), "--workers", "0", "--no-progress",
                 "--val-fraction", "0.4"]) == 0
    printed = capsys.readouterr().out
    assert "val top-1" in printed and "top-5" not in printed
    header = (run / "metrics_epochs.csv").read_text().splitlines()[0]
    assert "val_top1" in header and "val_top5" not in header
    assert (run / "curves.png").exists()
    assert main(["eval", str(run), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" not in printed
    assert main(["eval", str(run), "--data", str(tmp_path / "data"), "--json", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "top1" in result and "top5" not in result
    assert "top5" not in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_class_names_with_markup_and_escape_sequences_print_as_they_are(tmp_path, capsys, one_thread):
    """Issue 28: a class named `[/]` (rich markup) made eval crash, and an ANSI escape in a class name
    reached the terminal. Both are shown literally, the escape's control character as '?'. (A CSV
    gives the label `[/]`, which no folder name can.)"""
    hostile = ("[/]", "red\x1b[31mflag")
    (tmp_path / "data").mkdir()
    rows = ["path,label"]
    for index, (name, colour) in enumerate(zip(hostile, ((20, 20, 20), (230, 230, 230)))):
        for i in range(5):
            Image.new("RGB", (16, 16), colour).save(tmp_path / "data" / f"{index}-{i}.png")
            rows.append(f"{index}-{i}.png,{name}")
    (tmp_path / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    data = str(tmp_path / "data" / "labels.csv")
    assert main(["train", "--model", "resnet18", "--data", data, "--epochs", "1", "--batch-size", "4",
                 "--image-size", "16", "--out", str(run), "--workers", "0", "--no-progress",
                 "--val-fraction", "0.4"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", data, "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "[/]" in printed and "red?[31mflag" in printed and "\x1b" not in printed


def _photo_tree(root, sizes=((37, 53), (80, 45), (64, 64), (29, 90), (120, 70), (50, 31))):
    """train/ and val/ of two classes: JPEGs and PNGs, non-square, of several sizes, with noisy content."""
    import numpy as np

    rng = np.random.default_rng(1)
    for split, count in (("train", 8), ("val", 12)):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = sizes[(i + label) % len(sizes)]
                pixels = (rng.random((height, width, 3)) * 220).astype(np.uint8)
                pixels[: height // 2, :, label] += 35  # a weak cue: the model is unsure, so a pixel matters
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 3 == 0 else 'jpg'}")
    return root


@pytest.mark.parametrize("augment, cache", [("light", True), ("light", False), ("crop", True), ("crop", False)],
                         ids=["photo-cache", "plain", "pixel-cache-crop", "fast-crop"])
def test_train_last_validation_and_eval_agree_exactly_on_the_same_photos(tmp_path, capsys, monkeypatch, one_thread,
                                                                         augment, cache):
    """Training's validation and `eval` see the same pixels (issue 30), on every input path: the photo
    cache (its evaluation view, cut once), the plain transforms, the pixel cache of the crop preset
    (its validation images cut once as the evaluation view, kept on the device) and the crop preset's
    fast path of files (crop_pct 1, normalised on the device): the same correct count, and logits
    equal to float rounding."""
    import visionzoo.evaluation
    import visionzoo.training.validation

    data = _photo_tree(tmp_path / "photos")
    run = tmp_path / "run"
    seen: dict[str, list] = {"train": [], "eval": []}

    def recording(into: str, original):
        def predict_logits(*args, **kwargs):
            result = original(*args, **kwargs)
            seen[into].append(result)
            return result
        return predict_logits

    monkeypatch.setattr(visionzoo.training.validation, "predict_logits",
                        recording("train", visionzoo.training.validation.predict_logits))
    monkeypatch.setattr(visionzoo.evaluation, "predict_logits", recording("eval", visionzoo.evaluation.predict_logits))
    code = main(["train", "--model", "resnet18", "--data", str(data), "--recipe", "finetune", "--epochs", "1",
                 "--augment", augment, "--batch-size", "8", "--image-size", "24", "--out", str(run), "--workers", "0",
                 "--no-progress", *(["--cache"] if cache else ["--no-cache"])])
    assert code == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["cache"] is cache
    assert (config["data_config"]["crop_pct"] == 1.0) is (augment == "crop")  # crop: the fast paths
    last = json.loads((run / "summary.json").read_text())["history"][-1]
    capsys.readouterr()
    assert main(["eval", str(run / "last"), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 24 and not result["skipped"]
    assert last["val_top1"] == round(result["top1"], 6)
    # the same images in the same order: eval's logits against the last validation's, image by image
    train_logits, train_labels, train_indices, _ = seen["train"][-1]
    eval_logits, eval_labels, eval_indices, _ = seen["eval"][-1]
    order, eval_order = train_indices.argsort(), eval_indices.argsort()
    assert torch.equal(train_labels[order], eval_labels[eval_order])
    correct = (train_logits.argmax(1) == train_labels).sum()
    assert int(correct) == int((eval_logits.argmax(1) == eval_labels).sum()) == round(result["top1"] * 24)
    # the same pixels, not just the same verdicts: a different resize or crop moves these logits by 1e-2
    # and more; batching may move them by float rounding only
    torch.testing.assert_close(train_logits[order], eval_logits[eval_order], atol=1e-4, rtol=1e-4)
    assert last["val_loss"] == pytest.approx(result["calibration"]["nll_before"], abs=1e-5)
