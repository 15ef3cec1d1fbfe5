"""The phone and microcontroller formats behind `export_model`: LiteRT (.tflite), ExecuTorch (.pte) and
Core ML (.mlpackage), each written with the ONNX file's metadata and checked against eager PyTorch.

A float file is run in its own runtime (LiteRT's interpreter, ExecuTorch's runtime) on random and
real images and must match the eager model within `TOLERANCE` (fp32) or `FP16_TOLERANCE` (fp16
weights) of its largest output. An int8 file is not expected to match elementwise; its check is
top-1 on images (`visionzoo.deploy.verify`). A Core ML package cannot run off Apple systems: on
Linux its structure is checked instead (an RGB image input of the model's size, a classifier
output, one label per class, the metadata).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.export.images import image_files
from visionzoo.deploy.export.onnx import (
    ExportResult,
    check_against_model,
    model_class_names,
    model_preprocessing,
    verification_inputs,
)
from visionzoo.errors import SettingError
from visionzoo.factory import model_name

__all__ = ["EDGE_FORMATS", "EDGE_SUFFIXES", "DEFAULT_PRECISION", "FP16_TOLERANCE", "file_metadata", "export_edge",
           "write_edge", "check_edge", "check_coreml_structure"]

EDGE_FORMATS = ("litert", "executorch", "coreml")
EDGE_SUFFIXES = {"litert": ".tflite", "executorch": ".pte", "coreml": ".mlpackage"}
DEFAULT_PRECISION = {"litert": "fp32", "executorch": "fp32", "coreml": "fp16"}
FP16_TOLERANCE = 1e-2  # fp16 weights: about 3 decimal digits each, a little more error summed through the net


def file_metadata(model: nn.Module, img_size: int | None = None) -> dict[str, str]:
    """The `visionzoo.*` metadata an exported file carries (what `export_onnx` writes into ONNX files)."""
    from visionzoo.metrics.calibration import head_of

    metadata = {"visionzoo.model": model_name(model),
                "visionzoo.preprocessing": json.dumps(model_preprocessing(model, img_size))}
    names = model_class_names(model)
    if names is not None:
        metadata["visionzoo.class_names"] = json.dumps(names)
    head = head_of(model)
    if head:
        metadata["visionzoo.head"] = json.dumps(head)
    return metadata


def write_edge(model: nn.Module, out: Path, format: str, precision: str, *, img_size: int | None,
           calibration: list[np.ndarray] | None = None, int8_input: str = "int8",
           float_file: Path | None = None) -> ExportResult:
    """Write `model` to `out` in `format` and `precision` with its metadata (no checks: `check_edge`)."""
    metadata = file_metadata(model, img_size)
    if format == "litert":
        from visionzoo.deploy.export.litert import export_litert

        return export_litert(model, out, metadata, img_size=img_size, precision=precision, calibration=calibration,
                             int8_input=int8_input, float_file=float_file)
    if format == "executorch":
        from visionzoo.deploy.export.executorch import export_executorch

        return export_executorch(model, out, metadata, img_size=img_size, precision=precision,
                                 calibration=calibration)
    from visionzoo.deploy.export.coreml import export_coreml

    return export_coreml(model, out, metadata, img_size=img_size, precision=precision)


def check_coreml_structure(result: ExportResult, model: nn.Module, img_size: int | None = None) -> ExportResult:
    """What can be checked of a Core ML package on any system: raise when its declared structure is wrong."""
    from visionzoo.deploy.export.coreml import coreml_structure

    structure = coreml_structure(result.path)
    _, height, width = model_preprocessing(model, img_size)["input_size"]
    names = model_class_names(model) or [str(i) for i in range(int(getattr(model, "num_classes", 0)))]
    problems = []
    image = structure["inputs"][0] if structure["inputs"] else {}
    if (image.get("type"), image.get("width"), image.get("height"), image.get("color_space")) != \
            ("imageType", width, height, "RGB"):
        problems.append(f"input is {image}, not an RGB image of {width} x {height}")
    if structure["labels"] != names:
        problems.append(f"labels {structure['labels'][:5]}... are not the model's {names[:5]}...")
    if structure["predicted_feature"] != "classLabel" or "classify" not in structure["operations"]:
        problems.append("no classifier output (classLabel, classify op)")
    if "visionzoo.preprocessing" not in structure["metadata"]:
        problems.append("no visionzoo.preprocessing metadata")
    result.checks = [{"input": "structure", **{k: v for k, v in structure.items() if k != "metadata"}}]
    result.verified = not problems
    if problems:
        raise RuntimeError(f"Core ML package {result.path} is malformed: " + "; ".join(problems))
    return result


def check_edge(result: ExportResult, reference: nn.Module, precision: str, img_size: int | None,
           real: list[torch.Tensor] | None = None) -> ExportResult:
    """Raise unless the float file at `result.path` computes `reference`'s function (Core ML: by structure)."""
    if result.format == "coreml":
        return check_coreml_structure(result, reference, img_size)
    from visionzoo.deploy.runtimes import open_exported

    classifier = open_exported(result.path)

    def run(x: torch.Tensor) -> np.ndarray:
        return classifier.predict_logits(x.numpy())

    tolerance = FP16_TOLERANCE if precision == "fp16" else None
    return check_against_model(result, reference.eval(), run, verification_inputs(reference, img_size, real, (1,)),
                               tolerance=tolerance)


def export_edge(model: nn.Module, out: Path, *, format: str, reference: nn.Module, precision: str | None = None,
                img_size: int | None = None, int8: bool = False, int8_input: str = "int8",
                calib_dir: Path | None = None, calib_count: int = 64, verify: bool = True,
                real: list[torch.Tensor] | None = None) -> tuple[ExportResult, Path | None, dict[str, Any]]:
    """Write `model` to `out` in `format` and `precision` (default: fp32, Core ML fp16), and with `int8`
    also `NAME.int8.SUFFIX`, calibrated on `calib_count` images of `calib_dir` (the images `--int8`
    calibrates on for ONNX and OpenVINO). Float files are verified against `reference` (the model as
    given), a Core ML package by structure. Returns (result, int8 path or None, notes)."""
    if format not in EDGE_FORMATS:
        raise SettingError(f"format must be one of {', '.join(EDGE_FORMATS)}, got {format!r}")
    suffix = EDGE_SUFFIXES[format]
    if out.suffix != suffix:
        raise SettingError(f"a {format} export is written as NAME{suffix}, got {out}")
    precision = precision or DEFAULT_PRECISION[format]
    if precision == "int8":
        raise SettingError("int8 is asked for with --int8 (written beside the float file), not as the precision")
    if int8 and format != "coreml" and calib_dir is None:
        raise SettingError(f"{format} --int8 needs --calib DIR (a folder of calibration images)")
    calibration = None
    if int8 and format != "coreml":
        from visionzoo.deploy.export.quantize import calibration_batches

        calibration = calibration_batches(image_files(calib_dir, calib_count), model_preprocessing(model, img_size))
    result = write_edge(model, out, format, precision, img_size=img_size, calibration=None, int8_input=int8_input)
    if verify:
        result = check_edge(result, reference, precision, img_size, real)
    notes: dict[str, Any] = {"precision": precision, "tolerance": FP16_TOLERANCE if precision == "fp16" else 1e-4}
    if format == "coreml":
        from visionzoo.deploy.export.coreml import NOT_RUN_REASON, coreml_runs_here

        notes["coreml"] = ("checked by structure; --verify DATA runs it in Core ML" if coreml_runs_here()
                           else NOT_RUN_REASON)
    int8_path = None
    if int8:
        int8_path = out.with_name(out.name.removesuffix(suffix) + ".int8" + suffix)
        written = write_edge(model, int8_path, format, "int8", img_size=img_size, calibration=calibration,
                             int8_input=int8_input, float_file=result.path if precision == "fp32" else None)
        if verify and format == "coreml":
            check_coreml_structure(written, reference, img_size)
        notes["int8"] = {"litert": f"full-integer, {int8_input} input and int8 output",
                         "executorch": "PT2E, XNNPACK quantizer (weights per channel, activations per tensor, "
                                       "conv -> ReLU6 fused)",
                         "coreml": "int8 weights (linear, symmetric), fp16 activations"}[format]
    return result, int8_path, notes
