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


def _relu6_net() -> torch.nn.Module:
    """conv -> BN -> ReLU6 twice, then a linear head; BN scales spread the pre-activations over about +-40,
    so most of a conv output's range is what ReLU6 clips away (as in MobileNet and EfficientNet-Lite)."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[1].weight.fill_(12.0)
        net[4].weight.fill_(12.0)
    return net


def test_relu6_outputs_are_quantised_on_their_own_range():
    """XNNPACK's quantizer gives a hardtanh (ReLU6) the quantisation of its input, the raw convolution
    output; ours fuses conv -> ReLU6, so every ReLU6 output is quantised over about [0, 6]."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from visionzoo.deploy.export.executorch import xnnpack_quantizer

    net = _relu6_net()
    x = torch.randn(8, 3, 16, 16)
    prepared = prepare_pt2e(torch.export.export(net, (x[:1],)).module(), xnnpack_quantizer())
    with torch.no_grad():
        for image in x:
            prepared(image[None])
    converted = convert_pt2e(prepared)
    clamps = [n for n in converted.graph.nodes if n.op == "call_function" and "hardtanh" in str(n.target)]
    assert len(clamps) == 2
    for clamp in clamps:
        assert "conv" in str(clamp.args[0].target)  # no quantise/dequantise pair between conv and clamp
        (quantize,) = clamp.users
        assert "quantize_per_tensor" in str(quantize.target) and quantize.args[1] <= 6.0 / 255 * 1.01


def test_int8_program_of_a_relu6_network_stays_close_to_eager(tmp_path):
    """The lowered int8 program fuses the clamp into the convolution and computes what the annotation says:
    with the ReLU6 outputs quantised on the conv's range this network's logits were off by about a third."""
    from visionzoo.deploy.export.executorch import export_executorch
    from visionzoo.deploy.export.onnx import model_preprocessing
    from visionzoo.deploy.runtimes import open_exported

    net = _relu6_net()
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((16, 3, 16, 16)).astype(np.float32)]
    metadata = {"visionzoo.preprocessing": json.dumps(model_preprocessing(net, 16))}
    result = export_executorch(net, tmp_path / "n.int8.pte", metadata, img_size=16, precision="int8",
                               calibration=calibration)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    error = np.abs(open_exported(result.path).predict_logits(x) - expected).max() / np.abs(expected).max()
    assert error <= 0.05, error


def _relative_error(model, program, x) -> float:
    """max |program - eager| over max |eager| of the logits of `x`, the program run by ExecuTorch's runtime."""
    from visionzoo.deploy.runtimes import open_exported

    x = x.astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    return float(np.abs(open_exported(program).predict_logits(x) - expected).max() / np.abs(expected).max())


def test_a_global_max_pool_lowers_to_xnnpack(tmp_path):
    """airbench's head pools with a max over the map: `AdaptiveMaxPool2d` is outside the core ATen set that
    ExecuTorch's edge dialect accepts (the export matrix's failing cell), an amax is inside it."""
    import visionzoo
    from visionzoo.deploy.verify import export

    torch.manual_seed(0)
    model = visionzoo.create_model("airbench_cifar_w32", num_classes=10).eval()
    report = export(model, tmp_path / "airbench.pte", format="executorch")
    assert _relative_error(model, report.path, np.random.default_rng(2).standard_normal((1, 3, 32, 32))) <= 1e-4


def test_tanh_gelu_keeps_its_approximation(tmp_path):
    """XNNPACK's lowering computes the exact GELU for GELU(approximate='tanh') too (4e-5 of the largest output
    off per layer; MaxViT's logits 3e-4 off, which failed the export matrix); the export writes the
    approximation out, so a network of them matches eager as closely as the exact GELU does."""
    import visionzoo
    from visionzoo.deploy.verify import export

    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=10, layers=(1, 1, 1, 1)).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, torch.nn.GELU(approximate="tanh"))
    path = export(model, tmp_path / "gelu.pte", format="executorch", img_size=32).path
    assert _relative_error(model, path, 3 * np.random.default_rng(3).standard_normal((1, 3, 32, 32))) <= 2e-6
