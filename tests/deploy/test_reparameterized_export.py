"""Re-parameterisation in deployment: `export` and the engines fuse RepViT's (MobileOne's, FastViT's) training
branches by default, the file is verified against the unfused eager model (so a wrong fusion fails),
and `--no-reparameterize` / `reparameterize=False` keeps the branches.

A parallel branch in an ONNX graph is an Add of two Convs reading the same tensor (RepViT's 3x3 and
1x1 depthwise convolutions; MobileOne's and FastViT's kxk and 1x1 branches) or of a Conv and the very tensor it
reads (the identity branch). A fused network has none left and fewer Conv nodes.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_export import _small_model

import visionzoo
from visionzoo.factory import is_reparameterizable, reparameterized

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPARAMETERIZABLE = ["repvit_m0_9", *(
    pytest.param(name, marks=pytest.mark.skipif(name not in visionzoo.list_models(),
                                                reason=f"{name} is not registered yet (models/{file} is being written)"))
    for name, file in (("mobileone_s0", "mobileone.py"), ("fastvit_t8", "fastvit.py")))]


def conv_count(path) -> int:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)["Conv"]


def parallel_branches(path) -> int:
    """Adds of Conv(a) + Conv(a) or Conv(a) + a: branches of one input summed, as RepVGG-style blocks train."""
    nodes = onnx.load(str(path)).graph.node
    conv_input = {node.output[0]: node.input[0] for node in nodes if node.op_type == "Conv"}
    count = 0
    for node in nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        left, right = node.input
        reads = [conv_input.get(left), conv_input.get(right)]
        if (reads[0] is not None and reads[0] in (reads[1], right)) or (reads[1] is not None and reads[1] == left):
            count += 1
    return count


def onnx_logits(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", REPARAMETERIZABLE)
def test_reparameterized_export_has_no_parallel_branches_and_matches_eager(name, tmp_path):
    from visionzoo.deploy.export import export_model

    model, size = _small_model(name)  # batch norms given statistics, so the fusion has work to do
    fused = export_model(model, tmp_path / "fused.onnx", img_size=size, exporter="torchscript")
    unfused = export_model(model, tmp_path / "unfused.onnx", img_size=size, exporter="torchscript",
                           reparameterize=False)
    assert fused.reparameterized and fused.verified and not unfused.reparameterized and unfused.verified
    assert conv_count(fused.path) < conv_count(unfused.path)
    assert parallel_branches(unfused.path) > 0
    assert parallel_branches(fused.path) == 0
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x).numpy()  # the model as given, branches and batch norms intact
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # export left the user's model unfused
    for path in (fused.path, unfused.path):
        actual = onnx_logits(path, x)
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_a_wrong_fusion_fails_verification(tmp_path, monkeypatch):
    """Verification compares with the unfused model, so a fusion that drops a branch is caught."""
    from visionzoo.deploy.export import export_model
    from visionzoo.models.repvit import RepVggDw

    fuse = RepVggDw.fuse

    @torch.no_grad()
    def fuse_without_the_1x1_branch(self):
        conv = fuse(self)
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        centre = conv.kernel_size[0] // 2
        conv.weight[:, :, centre, centre] -= self.conv1.weight[:, :, 0, 0] * scale[:, None]
        return conv

    monkeypatch.setattr(RepVggDw, "fuse", fuse_without_the_1x1_branch)
    model, size = _small_model("repvit_m0_9")
    with pytest.raises(RuntimeError, match="does not match PyTorch"):
        export_model(model, tmp_path / "wrong.onnx", img_size=size, exporter="torchscript")
    assert not (tmp_path / "wrong.onnx").exists()


def test_cli_export_fuses_by_default_and_no_reparameterize_keeps_the_branches(tmp_path, capsys):
    from visionzoo.cli import main

    common = ["export", "repvit_m0_9", "--pretrained", "none", "--image-size", "64", "--exporter", "torchscript",
              "--json"]
    assert main([*common, "--out", str(tmp_path / "fused.onnx")]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert main([*common, "--no-reparameterize", "--out", str(tmp_path / "kept.onnx")]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert fused["reparameterized"] and fused["verified"] and not kept["reparameterized"] and kept["verified"]
    assert parallel_branches(tmp_path / "fused.onnx") == 0 < parallel_branches(tmp_path / "kept.onnx")
    assert conv_count(tmp_path / "fused.onnx") < conv_count(tmp_path / "kept.onnx")


def test_reparameterized_is_a_fused_copy_and_other_models_pass_through():
    model, size = _small_model("repvit_m0_9")
    fused = reparameterized(model)
    assert fused is not model and not fused.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the given model is untouched
    assert visionzoo.spec_of(fused).name == "repvit_m0_9"  # the spec travels with the copy
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), rtol=0, atol=1e-4 * model(x).abs().max().item())
    resnet = visionzoo.create_model("resnet18", num_classes=3)
    assert reparameterized(resnet) is resnet and not is_reparameterizable(resnet)
    assert is_reparameterizable("repvit_m0_9") and not is_reparameterizable("resnet18")


def test_engines_run_the_fused_model_unless_told_not_to(tmp_path):
    """The PyTorch engines run the fused copy; the ONNX file the other engines run is fused too and
    verified against the unfused model; reparameterize=False keeps the branches everywhere."""
    from visionzoo.deploy.engines import Artifacts, create_engine

    model, size = _small_model("repvit_m0_9")
    artifacts = Artifacts(model, img_size=size, folder=tmp_path / "fused")
    assert artifacts.unfused is model and not any(isinstance(m, nn.BatchNorm2d) for m in artifacts.model.modules())
    kept = Artifacts(model, img_size=size, folder=tmp_path / "kept", reparameterize=False)
    assert kept.model is model
    x = np.random.default_rng(0).standard_normal((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for engine_name in ("eager", "onnxruntime-fp32"):
        engine = create_engine(engine_name, artifacts)
        engine.load()
        assert np.abs(engine.run(x) - expected).max() <= 1e-4 * np.abs(expected).max()
    assert parallel_branches(artifacts.onnx()) == 0 < parallel_branches(kept.onnx())
