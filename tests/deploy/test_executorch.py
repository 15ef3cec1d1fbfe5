"""ExecuTorch (.pte, XNNPACK): fp32 and PT2E int8 programs with the metadata as a constant method, run by
ExecuTorch's runtime against eager, `--verify DATA`, the predictor and the engines. One export serves all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from test_export import _write_class_folders  # noqa: E402
from test_verify import CLASSES, colour_classifier  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from visionzoo.deploy.verify import export

    root = tmp_path_factory.mktemp("executorch")
    data = _write_class_folders(root / "data")
    model = colour_classifier(data, layers=(1, 1, 1, 1))  # XNNPACK lowers each block: half the blocks, half the time
    report = export(model, root / "out" / "m.pte", format="executorch", img_size=32, int8=True, calib_dir=data,
                    calib_count=8, verify_data=data)
    return model, report, data


def test_programs_match_eager_and_pass_verification(exported):
    from visionzoo.deploy.runtimes import open_exported
    from visionzoo.deploy.runtimes.executorch import ExecuTorchClassifier

    model, report, data = exported
    assert report.verified and report.max_relative_difference <= 1e-4
    assert report.int8_path.name == "m.int8.pte" and report.int8_path.stat().st_size < report.path.stat().st_size
    fp32, int8 = open_exported(report.path), open_exported(report.int8_path)
    assert isinstance(fp32, ExecuTorchClassifier) and fp32.class_names == CLASSES and fp32.max_batch == 1
    assert fp32.preprocessing["input_size"] == [3, 32, 32] and int8.precision == "int8"
    assert int8.metadata["visionzoo.quantization"] == "int8-pt2e-xnnpack"
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)  # 3: past the fixed batch
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(fp32.predict_logits(x) - expected).max() <= 1e-4 * np.abs(expected).max()
    assert 0 < np.abs(int8.predict_logits(x) - expected).max() <= 0.2 * np.abs(expected).max()
    entries = {entry["file"]: entry for entry in report.verification}
    assert set(entries) == {"m.pte", "m.int8.pte"}
    assert all(e["runtime"] == "executorch" and e["top1_file"] == 1.0 and e["passed"] for e in entries.values())
    assert set(json.loads((report.path.parent / "verify.json").read_text())) == {"m.pte", "m.int8.pte"}
    results = fp32.predict_files(sorted(data.rglob("*.png"))[:2], topk=1)
    assert [r["predictions"][0]["label"] for r in results] == ["blue", "blue"]


def test_engines_run_the_programs(exported):
    from visionzoo.deploy.engines import Artifacts, create_engine

    model, report, _ = exported
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for path, name, limit in ((report.path, "executorch-fp32", 1e-4), (report.int8_path, "executorch-int8", 0.5)):
        engine = create_engine(name, Artifacts.from_file(path))
        assert engine.unavailable() is None
        engine.load()
        assert np.abs(engine.run(x) - expected).max() / np.abs(expected).max() <= limit


def test_a_program_without_metadata_is_refused(tmp_path):
    from visionzoo.deploy.runtimes import open_exported
    from visionzoo.errors import SettingError

    (tmp_path / "x.pte").write_bytes(b"not a program")
    with pytest.raises(SettingError, match="not a loadable ExecuTorch program"):
        open_exported(tmp_path / "x.pte")
    with pytest.raises(SettingError, match="runs only with --runtime executorch"):
        open_exported(tmp_path / "x.pte", "onnxruntime")
