"""Inference engines (each family's OpenVINO fp32 and bf16 check is in test_export.py, on the ONNX file
that test exports): IR metadata and verification, the engine interface,
`--engine auto` and the accuracy rule (with fake engines), latency caching, the CLI, and torch-free
OpenVINO prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_export import TORCH_BLOCKER, _small_model, _write_class_folders

import visionzoo

pytest.importorskip("openvino")

from visionzoo.deploy.engines import Engine  # noqa: E402
from visionzoo.deploy.runtimes.openvino import bf16_supported  # noqa: E402


def test_ir_carries_the_onnx_metadata_and_a_wrong_ir_fails(tmp_path):
    from visionzoo.deploy.export import export_model
    from visionzoo.deploy.export.onnx import ExportResult
    from visionzoo.deploy.export.openvino import ir_from_onnx, verify_openvino
    from visionzoo.deploy.runtimes import onnx_metadata
    from visionzoo.deploy.runtimes.openvino import (
        OpenVinoClassifier,
        ir_metadata,
        openvino_core,
    )

    model, size = _small_model("resnet18")
    visionzoo.with_spec(model, class_names=[f"class{i}" for i in range(10)])
    export_model(model, tmp_path / "m.onnx", img_size=size, verify=False)
    ir_from_onnx(tmp_path / "m.onnx", tmp_path / "m.xml")
    assert ir_metadata(openvino_core().read_model(str(tmp_path / "m.xml"))) == onnx_metadata(tmp_path / "m.onnx")
    classifier = OpenVinoClassifier(tmp_path / "m.xml")
    assert classifier.class_names[3] == "class3" and classifier.preprocessing["input_size"] == [3, size, size]
    assert classifier.precision == "fp32"
    probs = classifier.predict_arrays(np.zeros((5, 3, size, size), np.float32))  # dynamic batch
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    result = ExportResult(tmp_path / "m.xml", "openvino")
    assert verify_openvino(result, model, img_size=size, batch_sizes=(2,)).verified
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # the eager model no longer computes what the file does
    with pytest.raises(RuntimeError, match="does not match PyTorch"):
        verify_openvino(result, model, img_size=size, batch_sizes=(2,))


def test_every_engine_runs_the_same_model(tmp_path):
    """Each real engine gives eager's logits: fp32 ones within 1e-4, bf16 and int8 close."""
    from visionzoo.deploy.engines import ENGINES, Artifacts, create_engine

    data = _write_class_folders(tmp_path / "calib", per_class=4, size=40)
    model, size = _small_model("resnet18")
    artifacts = Artifacts(model, img_size=32, calibration=sorted(data.rglob("*.png")), folder=tmp_path / "work")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    limits = {"fp32": 1e-4, "bf16": 5e-2, "int8": 0.5}
    for name in ENGINES:
        if name == "compile":  # inductor's compile time is too long for a unit test; its result is eager's
            continue
        if name.startswith(("litert", "executorch")):  # their exports are slow: tests/deploy/test_litert.py, ...
            continue
        engine = create_engine(name, artifacts)
        if engine.unavailable():
            assert name == "openvino-bf16" and not bf16_supported()
            continue
        engine.load()
        out = engine.run(x)
        assert out.shape == (2, 10) and out.dtype == np.float32
        difference = np.abs(out - expected).max() / np.abs(expected).max()
        assert difference <= limits[engine.precision], (name, difference)
    assert (tmp_path / "work" / "model.int8.xml").is_file() and (tmp_path / "work" / "model.int8.onnx").is_file()


# --- --engine auto and the accuracy rule, with fake engines ----------------------------------


class FakeEngine(Engine):
    """Logits from a fixed random projection of the per-channel means, `delay` seconds per call;
    `flip` images (by position in the stream of images run) get their top-1 moved to another class."""

    def __init__(self, name, precision, delay, flip=()):
        super().__init__(None)
        self.name, self.precision, self.delay, self.flip = name, precision, delay, set(flip)
        self.seen = 0

    def load(self):
        pass

    def run(self, batch):
        time.sleep(self.delay)
        means = batch.reshape(len(batch), batch.shape[1], -1).mean(-1)
        logits = means @ np.random.default_rng(0).standard_normal((batch.shape[1], 5))
        for row in range(len(batch)):
            if self.seen + row in self.flip:
                logits[row, logits[row].argmax()] = logits[row].min() - 1
        self.seen += len(batch)
        return logits.astype(np.float32)


def _fake_artifacts(tmp_path, count=20):
    from PIL import Image

    from visionzoo.deploy.engines import Artifacts

    rng = np.random.default_rng(0)
    folder = tmp_path / "calib"
    folder.mkdir()
    paths = []
    for i in range(count):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(paths[-1])
    return Artifacts(visionzoo.create_model("resnet18", num_classes=5), img_size=16, calibration=paths,
                     folder=tmp_path / "work")


def test_auto_picks_the_fastest_engine(tmp_path):
    from visionzoo.deploy.engines import choose_engine

    artifacts = _fake_artifacts(tmp_path)
    slow, fast = FakeEngine("slow-fp32", "fp32", 0.02), FakeEngine("fast-fp32", "fp32", 0.001)
    choice = choose_engine(artifacts, [slow, fast], seconds=0.2)
    assert choice.chosen == "fast-fp32"
    assert choice.engine("slow-fp32").latency_ms["p50"] > 10 > choice.engine("fast-fp32").latency_ms["p50"]
    choice = choose_engine(artifacts, [fast, slow], seconds=0.2)  # the order of the candidates does not matter
    assert choice.chosen == "fast-fp32"


def test_auto_rejects_reduced_precision_engines_that_break_the_rule(tmp_path):
    """On 20 unlabelled calibration images: a bf16 engine that changes one top-1 (95% agreement) and an
    int8 engine that changes one (a 5-point drop against fp32's answers) are left out, however fast;
    an int8 engine that changes none is kept and, being faster than fp32, chosen."""
    from visionzoo.deploy.engines import choose_engine

    artifacts = _fake_artifacts(tmp_path)
    engines = [FakeEngine("ref-fp32", "fp32", 0.02), FakeEngine("bad-bf16", "bf16", 0.0, flip=[3]),
               FakeEngine("bad-int8", "int8", 0.0, flip=[7]), FakeEngine("good-int8", "int8", 0.005)]
    choice = choose_engine(artifacts, engines, seconds=0.2)
    assert choice.chosen == "good-int8"
    bad_bf16, bad_int8 = choice.engine("bad-bf16"), choice.engine("bad-int8")
    assert not bad_bf16.eligible and bad_bf16.accuracy["agreement"] == pytest.approx(0.95)
    assert "95.00%" in bad_bf16.reason and "99.5" in bad_bf16.reason
    assert not bad_int8.eligible and bad_int8.accuracy["drop"] == pytest.approx(0.05) and "5.00 points" in bad_int8.reason
    assert choice.engine("good-int8").accuracy == {**choice.engine("good-int8").accuracy, "agreement": 1.0,
                                                   "drop": 0.0, "passed": True, "labelled": False}
    assert "calibration images" in choice.accuracy_images


def test_accuracy_rule_thresholds_and_labelled_drop(tmp_path):
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.engines import evaluate_engines, passes_accuracy_rule
    from visionzoo.deploy.runtimes import preprocess_image

    assert passes_accuracy_rule("bf16", 0.995, 0.0) and not passes_accuracy_rule("bf16", 0.994, 0.0)
    assert passes_accuracy_rule("int8", 0.9, 0.01) and not passes_accuracy_rule("int8", 1.0, 0.0101)
    assert passes_accuracy_rule("fp32", 0.0, 1.0)
    # labelled: fp32 gets 18 of 20 right; an int8 engine that breaks one of fp32's right answers loses 5 points,
    # one that only changes a wrong answer (to another wrong one or the right one) loses none
    artifacts = _fake_artifacts(tmp_path)
    files = artifacts.calibration_images()
    fp32 = FakeEngine("fp32", "fp32", 0.0)
    fp32.load()
    x = np.stack([preprocess_image(decode_image(f), artifacts.preprocessing) for f in files])
    answers = fp32.run(x).argmax(1)
    labels = answers.copy()
    labels[[0, 1]] = (answers[[0, 1]] + 1) % 5  # fp32 is wrong on images 0 and 1
    fp32.seen = 0
    figures = evaluate_engines([fp32, FakeEngine("breaks", "int8", 0.0, flip=[5]),
                                FakeEngine("harmless", "int8", 0.0, flip=[0])], files, list(labels),
                               artifacts.preprocessing)
    assert figures["fp32"]["top1"] == pytest.approx(0.9)
    assert figures["breaks"]["drop"] == pytest.approx(0.05) and not figures["breaks"]["passed"]
    assert figures["harmless"]["drop"] <= 0 and figures["harmless"]["passed"]
    assert figures["harmless"]["agreement"] == pytest.approx(0.95) and figures["harmless"]["labelled"]


def test_measure_engine_latency_is_cached_per_engine_and_batch(monkeypatch):
    from visionzoo.deploy.engines import measure_engine_latency

    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine: the figures may be reused

    model = visionzoo.create_model("resnet18", num_classes=5).eval()
    first = measure_engine_latency(model, "eager", 2, img_size=32, seconds=0.1)
    assert not first["cached"] and 0 < first["p50"] <= first["p99"] and first["precision"] == "fp32"
    assert first["throughput"] == pytest.approx(2e3 / first["p50"])
    again = measure_engine_latency(model, "eager", 2, img_size=32, seconds=0.1)
    assert again["cached"] and again["p50"] == first["p50"] and again["cache_note"].startswith("cached ")
    assert again["measured_at"] == first["measured_at"] and again["load_1min"] == 0.0
    assert not measure_engine_latency(model, "eager", 1, img_size=32, seconds=0.1)["cached"]
    with pytest.raises(ValueError, match="unknown engine 'openvino-fp23'; did you mean 'openvino-fp32'"):
        measure_engine_latency(model, "openvino-fp23", 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (os.cpu_count() + 1.5, 0.0, 0.0))
    busy = measure_engine_latency(model, "eager", 3, img_size=32, seconds=0.1)  # measured while the machine is busy
    redone = measure_engine_latency(model, "eager", 3, img_size=32, seconds=0.1)
    assert not redone["cached"] and redone["cache_note"].startswith("measured again: cached under load")
    assert busy["load_1min"] == os.cpu_count() + 1.5


def test_missing_openvino_is_one_line_naming_the_install(tmp_path, monkeypatch, capsys):
    import visionzoo.deploy.runtimes.openvino as runtime
    from visionzoo.cli import main

    monkeypatch.setattr(runtime, "_core", None)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'visionzoo\[openvino\]'"):
        runtime.openvino_core()
    code = main(["export", "resnet18", "--pretrained", "none", "--img-size", "32", "--format", "openvino",
                 "--out", str(tmp_path / "m.xml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'visionzoo[openvino]'" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


# --- the command line ------------------------------------------------------------------------


def test_cli_export_openvino_with_nncf_int8(tmp_path, capsys):
    from visionzoo.cli import main
    from visionzoo.deploy.runtimes.openvino import OpenVinoClassifier

    data = _write_class_folders(tmp_path / "data", per_class=4, size=40)
    out = tmp_path / "r18.xml"
    code = main(["export", "resnet18", "--pretrained", "none", "--img-size", "32", "--format", "openvino",
                 "--int8", "--calib", str(data), "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "openvino" and report["verified"] and report["max_relative_difference"] <= 1e-4
    assert report["int8_scheme"] == "int8-nncf" and report["int8_path"].endswith("r18.int8.xml")
    int8 = OpenVinoClassifier(report["int8_path"])
    assert int8.quantization == "int8-nncf" and int8.name == "resnet18"
    assert "FakeQuantize" in {op.get_type_name() for op in int8.compiled.get_runtime_model().get_ordered_ops()} or \
        (tmp_path / "r18.int8.bin").stat().st_size < 0.5 * (tmp_path / "r18.bin").stat().st_size
    code = main(["export", "resnet18", "--pretrained", "none", "--format", "openvino", "--out", str(tmp_path / "x.onnx")])
    assert code == 2 and ".xml" in capsys.readouterr().err


def test_cli_benchmark_engines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine: the figures may be reused
    from visionzoo.cli import main

    code = main(["benchmark", "resnet18", "--img-size", "32", "--batch-sizes", "1,2", "--engine",
                 "eager,openvino-fp32", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert [row["engine"] for row in result["engines"]] == ["eager", "openvino-fp32"]
    for row in result["engines"]:
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
        assert set(row["throughput"]) == {"1", "2"} and row["throughput"]["2"] > 0
    code = main(["benchmark", "resnet18", "--img-size", "32", "--batch-sizes", "1", "--engine",
                 "openvino-fp32,eager", "--json"])  # from the cache this time
    assert code == 0
    again = json.loads(capsys.readouterr().out)["results"][0]["engines"]
    assert [row["engine"] for row in again] == ["openvino-fp32", "eager"] and all(row["cached"] for row in again)
    assert again[1]["latency_ms"] == result["engines"][0]["latency_ms"]
    code = main(["benchmark", "resnet18", "--img-size", "32", "--batch-sizes", "1", "--engine", "eager"])
    assert code == 0 and "p99 ms" in capsys.readouterr().out  # the table
    code = main(["benchmark", "resnet18", "--engine", "openvino-fp33"])
    assert code == 2 and "did you mean 'openvino-fp32'" in capsys.readouterr().err


def test_export_engine_bf16_records_its_precision(tmp_path):
    if not bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    from visionzoo.deploy.engines import export_engine
    from visionzoo.deploy.runtimes import open_exported

    model, _ = _small_model("resnet18")
    result = export_engine(model, tmp_path / "m", engine="openvino-bf16", img_size=32)
    assert result["path"].endswith("m.bf16.xml") and result["choice"] is None
    assert open_exported(result["path"]).precision == "bf16"  # predict and serve run it as chosen
    assert open_exported(result["path"], "openvino").precision == "bf16"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    actual = open_exported(result["path"]).logits(x)
    assert 0 < np.abs(actual - expected).max() / np.abs(expected).max() < 5e-2


@pytest.mark.parametrize("kind", ["xml", "onnx"])
def test_torch_free_predict_with_openvino(kind, tmp_path):
    """`visionzoo predict` on an IR, and on an ONNX file through OpenVINO, with PyTorch unimportable."""
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.export import export_model
    from visionzoo.deploy.export.onnx import model_preprocessing
    from visionzoo.deploy.runtimes import preprocess_image

    images = _write_class_folders(tmp_path / "imgs", classes=("red",), per_class=1, size=50)
    (images / "red" / "broken.jpg").write_bytes(b"not an image")
    model, size = _small_model("resnet18")
    path = tmp_path / f"m.{kind}"
    export_model(model, path, format="openvino" if kind == "xml" else "onnx", img_size=size, verify=False)
    extra = [] if kind == "xml" else ["--runtime", "openvino"]
    result = subprocess.run([sys.executable, "-c", TORCH_BLOCKER, str(path), str(images / "red" / "0.png"),
                             str(images / "red" / "broken.jpg"), *extra],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # the broken image makes the exit code non-zero
    rows = json.loads(result.stdout)
    assert rows[1]["path"].endswith("broken.jpg") and "error" in rows[1]
    x = torch.from_numpy(preprocess_image(decode_image(images / "red" / "0.png"), model_preprocessing(model, size)))
    with torch.no_grad():
        probs = model(x[None]).softmax(-1)[0]
    assert rows[0]["predictions"][0]["index"] == int(probs.argmax())
    assert rows[0]["predictions"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-4)


def test_openvino_model_serves(tmp_path):
    from visionzoo.deploy.export import export_model
    from visionzoo.serve import load_classifier

    model, size = _small_model("resnet18")
    export_model(model, tmp_path / "m.xml", format="openvino", img_size=size, verify=False)
    classifier = load_classifier(str(tmp_path / "m.xml"))
    assert classifier.card["format"] == "openvino" and classifier.card["runtime"] == "openvino-fp32"
    from PIL import Image

    probs = classifier(np.stack([classifier.prepare(Image.new("RGB", (40, 30), (200, 10, 10)))]))
    assert probs.shape == (1, 10)
    with pytest.raises(ValueError, match="onnxruntime runs .onnx files"):
        load_classifier(str(tmp_path / "m.xml"), runtime="onnxruntime")
