"""LiteRT (.tflite): export in fp32 and full-integer int8 with the metadata, checked in LiteRT's own
interpreter against eager, `--verify DATA`, uint8 input, the torch-free predictor and the engines.
One export (fp32 + int8 of a 32 px resnet18 fitted to two colours) serves every test here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_quantizer")

from test_export import _write_class_folders  # noqa: E402
from test_verify import colour_classifier  # noqa: E402

CLASSES = ["blue", "red"]
# The predictor with PyTorch made unimportable: what a phone-class device without torch runs
TORCH_FREE = """
import sys, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from visionzoo.deploy.runtimes import open_exported
print(json.dumps(open_exported(sys.argv[1]).predict_files(sys.argv[2:], topk=1)))
assert "torch" not in sys.modules
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from visionzoo.deploy.verify import export

    root = tmp_path_factory.mktemp("litert")
    data = _write_class_folders(root / "data")
    model = colour_classifier(data)
    report = export(model, root / "out" / "m.tflite", format="litert", img_size=32, int8=True, calib_dir=data,
                    calib_count=8, verify_data=data)
    return model, report, data


def _eager(model, files):
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.export.onnx import model_preprocessing
    from visionzoo.deploy.runtimes import preprocess_image

    x = np.stack([preprocess_image(decode_image(f), model_preprocessing(model, 32)) for f in files])
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_fp32_and_int8_files_carry_metadata_and_pass_verification(exported):
    from visionzoo.deploy.runtimes.litert import LiteRTClassifier, tflite_metadata

    model, report, data = exported
    assert report.verified and report.max_relative_difference <= 1e-4
    assert report.int8_path.name == "m.int8.tflite" and report.int8_path.stat().st_size < report.path.stat().st_size
    metadata = tflite_metadata(report.path)
    assert json.loads(metadata["visionzoo.class_names"]) == CLASSES
    assert json.loads(metadata["visionzoo.preprocessing"])["input_size"] == [3, 32, 32]
    assert metadata["visionzoo.precision"] == "fp32" and tflite_metadata(report.int8_path)["visionzoo.precision"] == "int8"
    int8 = LiteRTClassifier(report.int8_path)
    assert int8.input_detail["dtype"] == np.int8 and int8.output_detail["dtype"] == np.int8  # full-integer
    # --verify DATA: both files in LiteRT on the labelled folders, against eager, recorded beside them
    entries = {entry["file"]: entry for entry in report.verification}
    assert set(entries) == {"m.tflite", "m.int8.tflite"}
    for entry in entries.values():
        assert entry["run"] and entry["runtime"] == "litert" and entry["labelled"] and entry["images"] == 12
        assert entry["top1_eager"] == 1.0 and entry["top1_file"] == 1.0 and entry["passed"]
    assert entries["m.tflite"]["max_abs_difference"] < 1e-3 < entries["m.int8.tflite"]["max_abs_difference"]
    saved = json.loads((report.path.parent / "verify.json").read_text())
    assert set(saved) == {"m.tflite", "m.int8.tflite"} and saved["m.tflite"]["drop"] == 0.0


def test_predictor_matches_eager_and_runs_without_torch(exported, tmp_path):
    from visionzoo.deploy.runtimes import open_exported

    model, report, data = exported
    files = sorted(data.rglob("*.png"))[::3]
    expected = _eager(model, files)
    classifier = open_exported(report.path)
    results = classifier.predict_files(files, topk=1)
    assert [r["predictions"][0]["label"] for r in results] == [CLASSES[i] for i in expected.argmax(1)]
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.runtimes import preprocess_image

    batch = np.stack([preprocess_image(decode_image(f), classifier.preprocessing) for f in files])
    assert np.abs(classifier.predict_logits(batch) - expected).max() <= 1e-4 * np.abs(expected).max()
    (data / "broken.jpg").write_bytes(b"not an image")
    try:
        result = subprocess.run([sys.executable, "-c", TORCH_FREE, str(report.path), str(files[0]),
                                 str(data / "broken.jpg")], capture_output=True, text=True, timeout=300)
    finally:
        (data / "broken.jpg").unlink()
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert rows[0]["predictions"][0]["label"] == CLASSES[int(expected[0].argmax())] and "error" in rows[1]


def test_uint8_input_computes_what_the_int8_file_does(exported, tmp_path):
    from visionzoo.deploy.export.litert import write_tflite_metadata
    from visionzoo.deploy.runtimes.litert import LiteRTClassifier, tflite_metadata

    _, report, data = exported
    uint8 = tmp_path / "m.uint8.tflite"
    shutil.copy(report.int8_path, uint8)
    write_tflite_metadata(uint8, tflite_metadata(report.int8_path), uint8_input=True)
    int8, converted = LiteRTClassifier(report.int8_path), LiteRTClassifier(uint8)
    assert converted.input_detail["dtype"] == np.uint8
    assert converted.input_detail["quantization"][1] == int8.input_detail["quantization"][1] + 128
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.abs(converted.predict_logits(x) - int8.predict_logits(x)).max() <= 1e-6
    assert converted.class_names == CLASSES  # the metadata survived the rewrite


def test_engines_run_the_files(exported):
    from visionzoo.deploy.engines import Artifacts, create_engine

    model, report, _ = exported
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for path, name, limit in ((report.path, "litert-fp32", 1e-4), (report.int8_path, "litert-int8", 0.5)):
        artifacts = Artifacts.from_file(path)
        assert create_engine("litert-int8" if name == "litert-fp32" else "litert-fp32", artifacts).unavailable()
        engine = create_engine(name, artifacts)
        assert engine.unavailable() is None
        engine.load()
        out = engine.run(x)
        assert out.shape == (2, 2) and np.abs(out - expected).max() / np.abs(expected).max() <= limit


def test_verify_fails_a_tflite_whose_metadata_normalises_wrongly(exported, tmp_path):
    from visionzoo.deploy.export.litert import write_tflite_metadata
    from visionzoo.deploy.runtimes.litert import tflite_metadata
    from visionzoo.deploy.verify import verify_export

    model, report, data = exported
    broken = tmp_path / "broken.tflite"
    shutil.copy(report.path, broken)
    metadata = tflite_metadata(report.path)
    preprocessing = {**json.loads(metadata["visionzoo.preprocessing"]), "mean": [0.485 + 0.8, 0.456, 0.406 - 0.8]}
    write_tflite_metadata(broken, {**metadata, "visionzoo.preprocessing": json.dumps(preprocessing)})
    record = verify_export(broken, model, data)
    assert record["runtime"] == "litert" and record["top1_eager"] == 1.0 and not record["passed"]
    assert json.loads((tmp_path / "verify.json").read_text())["broken.tflite"]["passed"] is False


def test_cli_predict_and_serve_loader_take_tflite(exported, capsys):
    from visionzoo.cli import main
    from visionzoo.serve.classifier import load_classifier

    _, report, data = exported
    image = sorted((data / "red").glob("*.png"))[0]
    assert main(["predict", str(report.int8_path), str(image), "--topk", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["label"] == "red"
    assert main(["predict", str(report.path), str(image), "--runtime", "onnxruntime"]) == 2
    assert "--runtime litert" in capsys.readouterr().err
    classifier = load_classifier(str(report.int8_path))
    assert (classifier.card["format"], classifier.card["runtime"]) == ("litert", "litert-int8")
    assert classifier.card["classes"] == CLASSES


def test_int8_ranges_cover_every_calibration_image_in_any_order(tmp_path):
    """Ranges are the extremes over all calibration images. ai-edge-quantizer's default, a moving average
    of each image's extremes, forgets the first images (weight 0.95 per later image): calibrated here on
    one image in [-10, 10] and fifteen in [-1, 1], its input range was +-5.2 with the wide image first
    and +-1.4 with it last."""
    from ai_edge_litert.interpreter import Interpreter
    from torch import nn

    from visionzoo.deploy.export.litert import export_litert
    from visionzoo.deploy.export.onnx import model_preprocessing

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 2)).eval()
    rng = np.random.default_rng(0)
    narrow = rng.uniform(-1, 1, (15, 3, 16, 16)).astype(np.float32)
    wide = np.full((1, 3, 16, 16), -10.0, dtype=np.float32)
    wide[..., ::2] = 10.0
    metadata = {"visionzoo.preprocessing": json.dumps(model_preprocessing(net, 16))}
    ranges = []
    for name, calibration in (("first", [np.concatenate([wide, narrow])]), ("last", [np.concatenate([narrow, wide])])):
        path = export_litert(net, tmp_path / f"{name}.tflite", metadata, img_size=16, precision="int8",
                             calibration=calibration).path
        scale, zero_point = Interpreter(model_path=str(path)).get_input_details()[0]["quantization"]
        ranges.append(((-128 - zero_point) * scale, (127 - zero_point) * scale))
    for low, high in ranges:
        assert low <= -9.9 and high >= 9.9, ranges
    assert np.allclose(ranges[0], ranges[1])
