"""Deployment: export to ONNX, OpenVINO IR, TorchScript, LiteRT (.tflite), ExecuTorch (.pte) or Core ML
(.mlpackage; the last three in `edge`), BN folding, int8 quantisation, and verification.

`export_model` is what `visionzoo export` runs: build or load the model, fuse a re-parameterisable
network's training branches (RepViT, MobileOne, FastViT; `reparameterize=False` keeps them),
optionally fold its batch norms, export, verify the file against the eager model as given (unfused,
unmerged: a wrong fusion fails here) on random and real images at two batch sizes, and optionally
quantise to int8 (onnxruntime's tools for ONNX, NNCF for OpenVINO) and measure top-1 before and after.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from visionzoo.deploy.export.edge import EDGE_FORMATS, export_edge
from visionzoo.deploy.export.fold_bn import fold_batchnorm
from visionzoo.deploy.export.images import image_files, synthetic_photos
from visionzoo.deploy.export.onnx import (
    ExportResult,
    export_onnx,
    export_torchscript,
    model_preprocessing,
    verify_onnx,
    verify_torchscript,
)
from visionzoo.deploy.export.openvino import export_openvino, quantize_openvino_int8, verify_openvino
from visionzoo.deploy.export.quantize import quantization_kind, quantize_int8
from visionzoo.errors import SettingError, require_extra
from visionzoo.factory import is_reparameterizable, model_name, reparameterized, with_spec
from visionzoo.weights.lora import is_lora, merge_lora

__all__ = ["export_model", "fold_batchnorm", "export_onnx", "export_torchscript", "export_openvino", "verify_onnx",
           "verify_torchscript", "verify_openvino", "quantize_int8", "ExportReport", "onnx_top1", "classifier_top1",
           "exported_top1", "FORMATS", "SUFFIXES"]

FORMATS = ("onnx", "openvino", "torchscript", "litert", "executorch", "coreml")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt", "litert": ".tflite", "executorch": ".pte",
            "coreml": ".mlpackage"}


@dataclass
class ExportReport:
    model: str
    path: Path
    format: str
    verified: bool | None  # None when verification was switched off
    max_relative_difference: float | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    int8_path: Path | None = None
    top1_fp32: float | None = None
    top1_int8: float | None = None
    int8_scheme: str | None = None  # 'int8-static-qdq', 'int8-dynamic' or 'int8-nncf[-transformer]', from the file
    merged_adapter: bool = False  # a LoRA adapter was merged first; `checks` compare with the unmerged model
    reparameterized: bool = False  # training branches were fused first; `checks` compare with the unfused model
    notes: dict[str, Any] = field(default_factory=dict)  # litert, executorch, coreml: precision, int8 kind, what ran
    verification: list[dict[str, Any]] = field(default_factory=list)  # `visionzoo.deploy.verify` on labelled images

    def as_dict(self) -> dict[str, Any]:
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in self.__dict__.items()}


def _real_inputs(model: nn.Module, img_size: int | None, folder: Path | None) -> list[torch.Tensor]:
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.runtimes import preprocess_image

    preprocessing = model_preprocessing(model, img_size)
    images = [decode_image(p) for p in image_files(folder, 4)] if folder else synthetic_photos()
    return [torch.from_numpy(preprocess_image(image, preprocessing)) for image in images]


def onnx_top1(onnx_path: Path, data_dir: Path, limit: int | None = None) -> float:
    """Top-1 accuracy of an ONNX model on a class-per-folder tree whose folder names are its class names."""
    from visionzoo.deploy.runtimes import OnnxClassifier

    return classifier_top1(OnnxClassifier(onnx_path), data_dir, limit)


def exported_top1(path: Path, data_dir: Path, limit: int | None = None) -> float:
    """Top-1 of an exported file (.onnx by onnxruntime, .xml by OpenVINO in fp32) on a class-per-folder tree."""
    if Path(path).suffix == ".xml":
        from visionzoo.deploy.runtimes.openvino import OpenVinoClassifier

        return classifier_top1(OpenVinoClassifier(path, precision="fp32"), data_dir, limit)
    return onnx_top1(path, data_dir, limit)


def classifier_top1(classifier, data_dir: Path, limit: int | None = None) -> float:
    """Top-1 of an `ExportedClassifier` on a class-per-folder tree whose folder names are its class names."""
    data_dir = Path(data_dir)
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    names = classifier.class_names or classes
    missing = [c for c in classes if c not in names]
    if missing:
        raise SettingError(f"folders {missing[:5]} of {data_dir} are not classes of the model ({names[:5]}...)")
    files = image_files(data_dir, limit)
    results = classifier.predict_files(files, topk=1, batch_size=32)
    scored = [(r, f) for r, f in zip(results, files) if "predictions" in r]
    correct = sum(r["predictions"][0]["index"] == names.index(f.relative_to(data_dir).parts[0]) for r, f in scored)
    return correct / max(len(scored), 1)


def _export_onnx_checked(model: nn.Module, out: Path, exporter: str, verify: bool, *, real, batch_sizes,
                         reference: nn.Module | None = None, target: str = "onnx", **options: Any) -> ExportResult:
    """Export with `exporter`; 'auto' tries PyTorch's tracing exporter (fast), then, if it fails or its
    file does not compute the model's function, the torch.export-based one. Each attempt is verified
    (an OpenVINO IR, made from the ONNX export, by OpenVINO in fp32; against `reference` when given:
    the model as given, before a LoRA adapter was merged or its branches fused)."""
    if target == "openvino":
        from visionzoo.deploy.runtimes.openvino import openvino_core

        openvino_core()  # a missing OpenVINO is one clear line, not a failure per exporter
        export, check = export_openvino, verify_openvino
    else:
        export, check = export_onnx, verify_onnx
    attempts = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    failures = []
    for attempt in attempts:
        try:
            result = export(model, out, exporter=attempt, **options)
            if verify:
                result = check(result, model if reference is None else reference, img_size=options.get("img_size"),
                               real_images=real, batch_sizes=batch_sizes)
            return result
        except Exception as error:  # the exporters raise many types; each failure is reported below
            failures.append(f"{attempt} exporter: {str(error).splitlines()[0][:500]}")
    out.unlink(missing_ok=True)
    if target == "openvino":
        out.with_suffix(".bin").unlink(missing_ok=True)
    raise RuntimeError(f"could not export {model_name(model)} to "
                       f"{'OpenVINO IR' if target == 'openvino' else 'ONNX'}: " + "; ".join(failures))


def export_model(model: nn.Module, out: str | Path, *, format: str = "onnx", img_size: int | None = None,
                 dynamic_batch: bool = True, opset: int = 18, exporter: str = "auto", fold_bn: bool = False,
                 int8: bool = False, int8_scheme: str = "auto",
                 calib_dir: str | Path | None = None, calib_count: int = 64, eval_dir: str | Path | None = None,
                 eval_limit: int | None = None, verify: bool = True, reparameterize: bool = True,
                 resize_mode: str | None = None, precision: str | None = None,
                 int8_input: str = "int8") -> ExportReport:
    """`precision` (litert: fp32 or fp16; executorch: fp32; coreml: fp16) and `int8_input` (litert --int8:
    int8 or uint8) apply to the phone formats only (`visionzoo.deploy.export.edge`)."""
    out = Path(out)
    name = model_name(model)
    if resize_mode is not None:  # into the model's spec, whence the file's metadata and every runtime read it
        from visionzoo.data.resize import check_resize_mode
        from visionzoo.factory import data_config

        model = with_spec(model, data_config={**data_config(model), "resize_mode": check_resize_mode(resize_mode)})
    model = model.eval()
    # A LoRA model is exported with its adapter merged into the base weights, and a re-parameterisable
    # one with its training branches fused; the file is verified against the model as given, so the
    # merge and the fusion are checked with everything else.
    reference, merged, fused = model, False, False
    if is_lora(model):
        model, merged = merge_lora(copy.deepcopy(model)).eval(), True
        with_spec(model, adapter=None)
    if reparameterize and is_reparameterizable(model):
        model, fused = reparameterized(model), True
    calib_dir = Path(calib_dir) if calib_dir else None
    if format not in FORMATS:
        raise SettingError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if int8 and format == "torchscript":
        raise SettingError("--int8 needs --format onnx, openvino, litert, executorch or coreml")
    if int8 and (int8_scheme == "static" or format == "openvino") and calib_dir is None:
        raise SettingError(f"{'OpenVINO' if format == 'openvino' else 'static'} --int8 needs --calib DIR "
                           "(a folder of calibration images)")
    if fold_bn:
        channels, height, width = model_preprocessing(model, img_size)["input_size"]
        model = fold_batchnorm(model, torch.randn(1, channels, height, width))
    if format in ("onnx", "openvino"):  # before any work: one line naming the pip install when one is missing
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require_extra(module, "export", "ONNX export")
    if format == "openvino":
        from visionzoo.deploy.runtimes.openvino import openvino_core

        openvino_core()
    real = _real_inputs(model, img_size, calib_dir) if verify else None
    if format in EDGE_FORMATS:
        result, int8_path, notes = export_edge(model, out, format=format, reference=reference, precision=precision,
                                               img_size=img_size, int8=int8, int8_input=int8_input,
                                               calib_dir=calib_dir, calib_count=calib_count, verify=verify, real=real)
        return ExportReport(model=name, path=result.path, format=format, verified=result.verified if verify else None,
                            max_relative_difference=result.max_relative_difference, checks=result.checks or [],
                            int8_path=int8_path, int8_scheme=notes.get("int8"), merged_adapter=merged,
                            reparameterized=fused, notes=notes)
    batch_sizes = (1, 3) if format == "torchscript" or dynamic_batch else (1,)
    if format in ("onnx", "openvino"):
        result = _export_onnx_checked(model, out, exporter, verify, img_size=img_size, dynamic_batch=dynamic_batch,
                                      opset=opset, real=real, batch_sizes=batch_sizes, reference=reference,
                                      target=format)
    else:
        result = export_torchscript(model, out, img_size=img_size)
        if verify:
            result = verify_torchscript(result, reference, img_size=img_size, real_images=real,
                                        batch_sizes=batch_sizes)
    report = ExportReport(model=name, path=result.path, format=format, verified=result.verified if verify else None,
                          max_relative_difference=result.max_relative_difference, checks=result.checks or [],
                          merged_adapter=merged, reparameterized=fused)
    if int8:
        report.int8_path = out.with_name(out.stem + ".int8" + out.suffix)
        calibration = image_files(calib_dir, calib_count) if calib_dir is not None else None
        if format == "openvino":
            from visionzoo.deploy.runtimes.openvino import ir_metadata, openvino_core

            quantize_openvino_int8(out, report.int8_path, calibration)
            report.int8_scheme = ir_metadata(openvino_core().read_model(str(report.int8_path)))["visionzoo.quantization"]
        else:
            quantize_int8(out, report.int8_path, calibration, scheme=int8_scheme)
            report.int8_scheme = quantization_kind(report.int8_path)
    if eval_dir is not None and format in ("onnx", "openvino"):
        report.top1_fp32 = exported_top1(out, Path(eval_dir), eval_limit)
        if report.int8_path:
            report.top1_int8 = exported_top1(report.int8_path, Path(eval_dir), eval_limit)
    return report
