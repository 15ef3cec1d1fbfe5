"""Core ML (.mlpackage): the fp16 and int8-weight packages, checked by structure (an RGB image input of
the model's size, a classifier output with one label per class, the program's operations, the metadata).
Core ML runs only on Apple systems: on Linux nothing here runs the model, and `--verify DATA` records
that it was not run (a macOS run of `coreml_probabilities` is not covered by this suite)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("coremltools")

from test_export import _write_class_folders  # noqa: E402
from test_verify import CLASSES, colour_classifier  # noqa: E402


@pytest.mark.slow
def test_packages_declare_an_image_classifier_and_verify_says_what_ran(tmp_path):
    from visionzoo.deploy.export.coreml import NOT_RUN_REASON, coreml_runs_here, coreml_structure
    from visionzoo.deploy.export.edge import check_coreml_structure
    from visionzoo.deploy.export.onnx import ExportResult
    from visionzoo.deploy.verify import export

    data = _write_class_folders(tmp_path / "data")
    model = colour_classifier(data)
    report = export(model, tmp_path / "m.mlpackage", format="coreml", img_size=32, int8=True, verify_data=data)
    assert report.verified and report.path.is_dir() and report.int8_path.name == "m.int8.mlpackage"
    assert report.notes["precision"] == "fp16"
    fp16, int8 = coreml_structure(report.path), coreml_structure(report.int8_path)
    for structure in (fp16, int8):
        assert structure["type"] == "mlProgram"
        assert structure["inputs"] == [{"name": "image", "type": "imageType", "width": 32, "height": 32,
                                        "color_space": "RGB"}]
        assert structure["outputs"] == ["classLabel", "classLabel_probs"] and structure["labels"] == CLASSES
        assert {"conv", "classify", "softmax"} <= set(structure["operations"])
        assert json.loads(structure["metadata"]["visionzoo.class_names"]) == CLASSES
    assert fp16["metadata"]["visionzoo.precision"] == "fp16" and int8["metadata"]["visionzoo.precision"] == "int8"
    assert any("dequantize" in op for op in int8["operations"])  # int8 weights, expanded at load
    assert not any("dequantize" in op for op in fp16["operations"])
    # a package whose labels are not the model's classes is refused
    import visionzoo

    renamed = visionzoo.with_spec(colour_classifier(data), class_names=["cyan", "magenta"])
    with pytest.raises(RuntimeError, match="labels"):
        check_coreml_structure(ExportResult(report.path, "coreml"), renamed, img_size=32)
    if not coreml_runs_here():  # say plainly what was not run
        assert report.notes["coreml"] == NOT_RUN_REASON
        assert all(entry["run"] is False and entry["passed"] is None for entry in report.verification)
        saved = json.loads((tmp_path / "verify.json").read_text())
        assert saved["m.mlpackage"]["reason"] == NOT_RUN_REASON


@pytest.mark.parametrize("name, size, overrides", [("convnextv2_atto", 32, {"depths": (1, 1, 1, 1)}),
                                                   ("efficientvit_m0", 224, {"depth": (1, 1, 1)})])
def test_ops_coremltools_lacks_are_spelled_out(tmp_path, name, size, overrides):
    """ConvNeXt-V2's GRN adds with one fused addcmul, and EfficientViT's (as Swin's) crop of its windows back to
    a map that needed no padding exports as an alias; coremltools has a converter for neither (the export
    matrix's failing cells): the export writes both in ops it has."""
    import visionzoo
    from visionzoo.deploy.export.coreml import coreml_structure
    from visionzoo.deploy.verify import export

    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=3, **overrides).eval()
    if name.startswith("efficientvit"):
        with torch.no_grad():
            program = torch.export.export(model, (torch.rand(1, 3, size, size),)).run_decompositions({})
        assert any("alias" in str(node.target) for node in program.graph.nodes)  # the case this is about
    report = export(model, tmp_path / "m.mlpackage", format="coreml", img_size=size)
    assert coreml_structure(report.path)["outputs"] == ["classLabel", "classLabel_probs"]
