"""Multi-label data, losses, metrics and thresholds, end to end: train, eval, predict, serve, ONNX."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo.data.multilabel import iterative_split
from visionzoo.data.shapes import make_shape_sets
from visionzoo.data.sources import resolve_data
from visionzoo.factory import spec_of, with_spec
from visionzoo.heads import probabilities, result_record
from visionzoo.metrics.calibration import head_of, with_head
from visionzoo.metrics.multilabel import average_precision, multilabel_metrics, tune_thresholds
from visionzoo.training.losses import AsymmetricLoss, LabelVectorMixer, multilabel_bce

ML_SHAPES = "builtin:shapes?size=16&train=48&val=32&task=multilabel"


def write_images(folder, count, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


# --- data ------------------------------------------------------------------------------------


def test_csv_of_separated_labels_is_multilabel_and_split_keeping_every_label(tmp_path):
    names = write_images(tmp_path / "img", 40)
    sets = ["cat|dog", "cat", "dog;bird", "bird", ""]
    rows = ["path,labels"] + [f"img/{n},{sets[i % len(sets)]}" for i, n in enumerate(names)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    splits = resolve_data(tmp_path / "data.csv", val_fraction=0.25, seed=0)
    assert splits.task == "multilabel" and splits.classes == ["bird", "cat", "dog"]
    assert splits.train.labels.shape[1] == 3 and len(splits.train) + len(splits.val) == 40
    assert splits.train.labels.dtype == np.uint8
    paths, labels = splits.train.paths + splits.val.paths, np.concatenate([splits.train.labels, splits.val.labels])
    assert labels[paths.index(str(tmp_path / "img" / "0.png"))].tolist() == [0, 1, 1]  # cat|dog
    assert labels[paths.index(str(tmp_path / "img" / "4.png"))].tolist() == [0, 0, 0]  # an image of no class
    assert (splits.val.labels.sum(0) > 0).all(), "iterative stratification keeps every label in validation"
    assert 8 <= len(splits.val) <= 12


def test_roboflow_one_hot_csv_and_folder_with_labels_csv(tmp_path):
    names = write_images(tmp_path, 6)
    rows = ["filename, apple, pear, plum"] + [f"{n}, {i % 2}, {int(i % 3 == 0)}, 1" for i, n in enumerate(names)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    csv_splits = resolve_data(tmp_path / "labels.csv", split="eval")
    assert csv_splits.task == "multilabel" and csv_splits.classes == ["apple", "pear", "plum"]
    assert csv_splits.val.labels[:3].tolist() == [[0, 1, 1], [1, 0, 1], [0, 0, 1]]
    folder = resolve_data(tmp_path, split="eval")  # a folder holding labels.csv
    assert folder.task == "multilabel" and folder.val.paths == csv_splits.val.paths


def test_task_option_forces_or_refuses_multilabel(tmp_path):
    names = write_images(tmp_path / "img", 6)
    (tmp_path / "single.csv").write_text("\n".join(f"img/{n},{'ab'[i % 2]}" for i, n in enumerate(names)) + "\n")
    assert resolve_data(tmp_path / "single.csv").task == "multiclass"
    forced = resolve_data(tmp_path / "single.csv", task="multilabel", split="eval")
    assert forced.task == "multilabel" and forced.val.labels.sum(1).tolist() == [1] * 6
    (tmp_path / "multi.csv").write_text("\n".join(f"img/{n},a|b" for n in names) + "\n")
    with pytest.raises(ValueError, match="drop --task multiclass"):
        resolve_data(tmp_path / "multi.csv", task="multiclass")
    with pytest.raises(ValueError, match="labels.csv"):
        resolve_data(tmp_path / "img", task="multilabel")


def test_shape_sets_show_one_to_three_shapes_and_split_iteratively():
    samples = make_shape_sets(60, size=16, seed=3)
    assert samples.images.shape == (60, 16, 16, 3) and samples.labels.shape == (60, 10)
    assert set(samples.labels.sum(1).tolist()) <= {1, 2, 3} and len(set(samples.labels.sum(1).tolist())) > 1
    assert (make_shape_sets(60, size=16, seed=3).images == samples.images).all()
    train, val = iterative_split(samples.labels, 0.25, 0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 60


# --- losses and mixing -------------------------------------------------------------------------


def test_asl_without_focusing_or_shift_is_bce_and_focusing_down_weights_easy_negatives():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 5), (torch.rand(8, 5) > 0.6).float()
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, targets)
    assert torch.allclose(plain, multilabel_bce(logits, targets), atol=1e-5)
    assert torch.allclose(multilabel_bce(logits, targets),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits, targets) * 5, atol=1e-5)
    easy_negative = torch.tensor([[-4.0]], requires_grad=True)
    for loss_fn, name in ((AsymmetricLoss(0, 0, 0), "bce"), (AsymmetricLoss(), "asl")):
        easy_negative.grad = None
        loss_fn(easy_negative, torch.zeros(1, 1)).backward()
        if name == "bce":
            bce_grad = float(easy_negative.grad)
        else:
            assert abs(float(easy_negative.grad)) < abs(bce_grad) * 1e-3  # shifted below m: no gradient at all


def test_label_vector_mixer_mixes_images_and_labels_in_one_proportion():
    torch.manual_seed(0)
    images = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for mixer in (LabelVectorMixer(mixup_alpha=1.0), LabelVectorMixer(cutmix_alpha=1.0)):
        mixed, mixed_targets = mixer(images, targets)
        share_of_other = mixed[0].mean()  # image 0 is zeros, mixed with image 1 (ones)
        assert torch.allclose(mixed_targets[0], torch.stack([1 - share_of_other, share_of_other]), atol=1e-5)
    assert not LabelVectorMixer()


def test_class_balance_per_label_weighs_rare_labels_up():
    from visionzoo.data.multilabel import balanced_sample_weights
    from visionzoo.training.losses import build_loss
    from visionzoo.training.settings import TrainSettings

    labels = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.uint8)  # class 1 is rare
    weights = balanced_sample_weights(labels)
    assert weights[3] > weights[0] and weights[4] == pytest.approx(weights[:4].mean())
    logits, targets = torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    settings = TrainSettings(task="multilabel", loss="bce", label_smoothing=0.0, class_balance="weights")
    weighted = build_loss(settings, labels, 2, torch.device("cpu"))(logits, targets)
    plain = build_loss(TrainSettings(task="multilabel", loss="bce", label_smoothing=0.0), labels, 2,
                       torch.device("cpu"))(logits, targets)
    # class 1's positives weigh negatives / positives = 4 / 1: its term grows four times
    assert float(weighted - plain) == pytest.approx(3 * float(np.log(2)), rel=1e-5)


# --- metrics and thresholds ---------------------------------------------------------------------


def test_average_precision_matches_scikit_learn_and_thresholds_maximise_f1():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < 0.3).astype(int)
    probs = np.clip(targets * 0.3 + rng.random((200, 4)) * 0.7, 0, 1).round(2)  # ties included
    for c in range(4):
        assert average_precision(probs[:, c], targets[:, c]) == pytest.approx(
            average_precision_score(targets[:, c], probs[:, c]), abs=1e-12)
    thresholds = tune_thresholds(probs, targets)
    for c in range(4):
        best = max(f1_score(targets[:, c], probs[:, c] >= t) for t in np.unique(probs[:, c]))
        assert f1_score(targets[:, c], probs[:, c] >= thresholds[c]) == pytest.approx(best)
    metrics = multilabel_metrics(probs, targets, thresholds, list("abcd"))
    assert metrics["micro_f1"] == pytest.approx(f1_score(targets, probs >= np.array(thresholds), average="micro"))
    assert metrics["macro_f1"] == pytest.approx(f1_score(targets, probs >= np.array(thresholds), average="macro"))
    assert metrics["per_class"]["b"]["threshold"] == thresholds[1]
    assert metrics["exact_match"] == pytest.approx(((probs >= np.array(thresholds)) == targets).all(1).mean())


# --- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ml") / "run"
        result = visionzoo.train("mobilenetv3_small_050", ML_SHAPES, out=out, epochs=1, batch_size=16,
                                 progress=False, tensorboard=False, loss="asl", mixup=0.2)
    finally:
        torch.set_num_threads(threads)
    return result


def test_multilabel_run_saves_tuned_thresholds_and_temperature(trained_run):
    config = json.loads((trained_run.run_dir / "best" / "config.json").read_text())
    head = config["head"]
    assert head["task"] == "multilabel" and len(head["thresholds"]) == 10 and head["temperature"] > 0
    assert "ood" not in head  # a multi-label model answers "no label" instead
    calibration = json.loads((trained_run.run_dir / "calibration.json").read_text())
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-6
    assert (trained_run.run_dir / "per_class_ap.png").exists() and (trained_run.run_dir / "reliability.png").exists()
    assert not (trained_run.run_dir / "confusion_matrix.png").exists()
    resolved = json.loads((trained_run.run_dir / "config.json").read_text())["resolved"]
    assert resolved["loss"] == "asl" and resolved["label_smoothing"] == 0.0
    assert "val_map" in (trained_run.run_dir / "metrics_epochs.csv").read_text().splitlines()[0]
    summary = json.loads((trained_run.run_dir / "summary.json").read_text())
    assert summary["best_metric"] == "val_map" and "best_val_top1" not in summary  # mAP chose best/, named so
    assert summary["best_val_map"] == pytest.approx(trained_run.best_metric)


def test_eval_json_reports_multilabel_keys_at_the_saved_thresholds(trained_run, tmp_path, capsys):
    from visionzoo.cli import main

    assert main(["eval", str(trained_run.run_dir), "--data", ML_SHAPES, "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "multilabel"
    assert {"mAP", "per_class", "micro_f1", "macro_f1", "precision", "recall", "exact_match", "calibration"} <= set(result)
    saved = head_of(visionzoo.load_model(trained_run.run_dir / "best"))["thresholds"]
    assert [row["threshold"] for row in result["per_class"].values()] == pytest.approx(saved)
    assert {"ap", "f1", "threshold"} <= set(result["per_class"]["circle"])
    assert (tmp_path / "per_class_ap.png").exists() and (tmp_path / "reliability.png").exists()
    assert not (tmp_path / "confusion_matrix.png").exists()


@pytest.fixture(scope="module")
def thresholded_model(tmp_path_factory):
    """A saved 3-class multi-label model whose thresholds make each class's decision known in advance."""
    torch.manual_seed(0)
    model = visionzoo.create_model("mobilenetv3_small_050", num_classes=3)
    with_spec(model, class_names=("red", "green", "blue"),
              data_config={**spec_of(model).data_config, "input_size": (3, 32, 32), "crop_pct": 1.0})
    with_head(model, {"task": "multilabel", "temperature": 2.0, "thresholds": [1e-6, 1 - 1e-6, 0.5]})
    folder = tmp_path_factory.mktemp("thresholded")
    visionzoo.save_model(model, folder / "model")
    image = folder / "x.png"
    Image.fromarray(np.full((40, 40, 3), (200, 30, 60), dtype=np.uint8)).save(image)
    return folder / "model", image


def expected_labels(logits: np.ndarray, thresholds, temperature: float) -> list[str]:
    probs = 1 / (1 + np.exp(-logits / temperature))
    names = ["red", "green", "blue"]
    return [names[i] for i in np.argsort(-probs) if probs[i] >= thresholds[i]]


def test_thresholds_and_temperature_are_honoured_by_predict_serve_and_onnx(thresholded_model, tmp_path):
    from visionzoo.deploy.export.onnx import export_onnx
    from visionzoo.deploy.runtimes import OnnxClassifier
    from visionzoo.factory import transforms
    from visionzoo.prediction import predict
    from visionzoo.serve import create_app, load_classifier

    folder, image = thresholded_model
    model = visionzoo.load_model(folder)
    head = head_of(model)
    assert head["thresholds"] == [1e-6, 1 - 1e-6, 0.5] and head["temperature"] == 2.0
    with torch.no_grad():
        logits = model(transforms(model)(Image.open(image).convert("RGB"))[None])[0].numpy()
    labels = expected_labels(logits, head["thresholds"], 2.0)
    assert "red" in labels and "green" not in labels

    [record] = predict(folder, [image], topk=3)
    assert record["labels"] == labels and set(record) == {"path", "predictions", "labels"}
    probs = {p["label"]: p["prob"] for p in record["predictions"]}
    assert probs["blue"] == pytest.approx(float(1 / (1 + np.exp(-logits[2] / 2.0))), abs=1e-6)

    async def serve() -> dict:
        app = create_app(load_classifier(str(folder)))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                response = await client.post("/v1/classify?topk=3", content=image.read_bytes(),
                                             headers={"content-type": "image/png"})
                return response.json()

    served = asyncio.run(serve())
    assert served["labels"] == labels and "unknown" not in served
    assert served["predictions"][0]["prob"] == pytest.approx(record["predictions"][0]["prob"], abs=1e-5)

    export_onnx(model, tmp_path / "m.onnx")
    classifier = OnnxClassifier(tmp_path / "m.onnx")
    assert classifier.head == head
    [onnx_record] = classifier.predict_files([image], topk=3)
    assert onnx_record["labels"] == labels
    assert onnx_record["predictions"][0]["prob"] == pytest.approx(record["predictions"][0]["prob"], abs=1e-4)


def test_result_record_for_multilabel_and_single_label_heads():
    logits = np.array([2.0, -1.0, 0.1])
    names = ["a", "b", "c"]
    multi = result_record("x", logits, names, 2, {"task": "multilabel", "thresholds": [0.5, 0.5, 0.5]})
    assert multi["labels"] == ["a", "c"] and len(multi["predictions"]) == 2
    assert multi["predictions"][0]["prob"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    plain = result_record("x", logits, names, 2, None)
    assert set(plain) == {"path", "predictions"}  # a model without head facts: today's shape
    assert probabilities(logits, None).sum() == pytest.approx(1.0)


def test_serve_answers_the_old_way_for_a_classifier_without_a_head():
    from visionzoo.serve import Classifier

    classifier = Classifier("t", lambda image: np.zeros(1), lambda batch: batch, ["a", "b"], {})
    assert classifier.answer("x", np.array([0.2, 0.8]), 1) == {"predictions": [{"index": 1, "label": "b", "prob": 0.8}]}
