"""Export to OpenVINO IR (.xml + .bin) with the ONNX export's metadata, verify, and quantise with NNCF.

The IR is converted from visionzoo's own ONNX export (so both formats compute the same graph),
its weights kept in fp32 (`compress_to_fp16=False`: OpenVINO's default would halve them), and
the ONNX metadata (`visionzoo.model`, `visionzoo.preprocessing`, `visionzoo.class_names`, ...)
copied into the model's rt_info under `visionzoo`, where `visionzoo.deploy.runtimes.openvino` reads it.

int8 is NNCF's post-training quantisation of the IR, calibrated on the same images as the
onnxruntime int8 export (preprocessed by the torch-free deployment preprocessing). Networks whose
multiply-adds are mostly matrix products are quantised with NNCF's transformer scheme (LayerNorm,
softmax and GELU stay in float), the others with its default CNN scheme.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.export.onnx import (
    DEFAULT_OPSET,
    ExportResult,
    check_against_model,
    export_onnx,
    verification_inputs,
)
from visionzoo.deploy.runtimes import onnx_metadata
from visionzoo.deploy.runtimes.openvino import compile_config, ir_metadata, openvino_core, set_ir_metadata
from visionzoo.errors import SettingError, require_extra

__all__ = ["export_openvino", "ir_from_onnx", "verify_openvino", "quantize_openvino_int8", "multiply_adds_by_kind_ir",
           "save_ir", "BF16_TOLERANCE"]

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per value); errors add up over a
# network's depth. Measured on the smallest model of each family at 32-96 px: at most about 2e-2.
BF16_TOLERANCE = 5e-2


def _openvino():
    return require_extra("openvino", "openvino", "OpenVINO export")


def ir_from_onnx(onnx_path: str | Path, xml_path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Convert a visionzoo ONNX file to IR, weights in fp32, with the ONNX file's metadata in rt_info."""
    ov = _openvino()
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if xml_path.suffix != ".xml":
        raise SettingError(f"an OpenVINO IR file name ends in .xml, got {xml_path}")
    model = ov.convert_model(str(onnx_path))
    metadata = {key: value for key, value in onnx_metadata(onnx_path).items() if key.startswith("visionzoo.")}
    set_ir_metadata(model, {**metadata, **(extra_metadata or {})})
    save_ir(model, xml_path)
    return xml_path


def save_ir(model, xml_path: str | Path) -> None:
    """Write an OpenVINO model as XML_PATH (.xml) and its .bin, weights in fp32; both under temporary
    names first, so a crash never leaves a half-written pair."""
    ov = _openvino()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_xml = xml_path.with_name(xml_path.stem + ".tmp.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
    tmp_xml.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    tmp_xml.replace(xml_path)


def export_openvino(model: nn.Module, path: str | Path, *, img_size: int | None = None, dynamic_batch: bool = True,
                    opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> ExportResult:
    """Write `model` as OpenVINO IR (`path` ends in .xml; the .bin goes beside it), through ONNX."""
    path = Path(path)
    _openvino()  # fail before exporting when OpenVINO is missing
    with tempfile.TemporaryDirectory(prefix="vz-ov-") as tmp:
        onnx_result = export_onnx(model, Path(tmp) / "model.onnx", img_size=img_size, dynamic_batch=dynamic_batch,
                                  opset=opset, exporter=exporter)
        ir_from_onnx(onnx_result.path, path)
    return ExportResult(path=path, format="openvino")


def verify_openvino(result: ExportResult, model: nn.Module, *, img_size: int | None = None,
                    real_images: list[torch.Tensor] | None = None, batch_sizes: tuple[int, ...] = (1, 3),
                    precision: str = "fp32", tolerance: float | None = None) -> ExportResult:
    """Run the IR with OpenVINO on random and real inputs at two batch sizes; compare with eager PyTorch.

    fp32 is held to the ONNX export's tolerance; bf16 (where the CPU has it) to `BF16_TOLERANCE`.
    """
    core = openvino_core()
    compiled = core.compile_model(core.read_model(str(result.path)), "CPU", compile_config(precision))
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> np.ndarray:
        return np.array(request.infer([x.numpy()])[0], dtype=np.float32, copy=True)

    if tolerance is None:
        tolerance = BF16_TOLERANCE if precision == "bf16" else None
    return check_against_model(result, model.eval(), run,
                               verification_inputs(model, img_size, real_images, batch_sizes), tolerance=tolerance)


def multiply_adds_by_kind_ir(model) -> dict[str, int]:
    """Multiply-adds per image of an OpenVINO model's convolutions and matrix products (batch taken as 1)."""
    def dims(partial_shape) -> list[int]:
        return [d.get_length() if d.is_static else 1 for d in partial_shape]

    totals = {"conv": 0, "matmul": 0}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        out = dims(op.get_output_partial_shape(0))
        if kind == "Convolution":  # weight (out, in, kh, kw)
            totals["conv"] += int(np.prod(out[1:])) * int(np.prod(dims(op.get_input_partial_shape(1))[1:]))
        elif kind == "GroupConvolution":  # weight (groups, out / groups, in / groups, kh, kw)
            totals["conv"] += int(np.prod(out[1:])) * int(np.prod(dims(op.get_input_partial_shape(1))[2:]))
        else:
            a = dims(op.get_input_partial_shape(0))
            transposed = op.get_attributes().get("transpose_a", False)
            inner = a[-2] if transposed and len(a) > 1 else a[-1]
            totals["matmul"] += int(np.prod(out[1:] if len(out) > 2 else out[-1:])) * int(inner)
    return totals


def quantize_openvino_int8(xml_path: str | Path, out_path: str | Path, calibration_images: list[Path]) -> Path:
    """NNCF post-training int8 quantisation of an IR, calibrated on `calibration_images`; metadata kept."""
    _openvino()
    nncf = require_extra("nncf", "openvino", "OpenVINO int8 quantisation")
    from visionzoo.deploy.export.quantize import calibration_batches

    xml_path, out_path = Path(xml_path), Path(out_path)
    if not calibration_images:
        raise SettingError(f"OpenVINO int8 quantisation of {xml_path} needs calibration images (--calib DIR: a folder "
                         "of a few dozen images like the ones the model will see)")
    model = openvino_core().read_model(str(xml_path))
    metadata = ir_metadata(model)
    samples = calibration_batches(list(calibration_images), json.loads(metadata["visionzoo.preprocessing"]),
                                  batch_size=1)
    totals = multiply_adds_by_kind_ir(model)
    transformer = totals["matmul"] > totals["conv"]
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout, which is the report's
        quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                  model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    kind = "int8-nncf-transformer" if transformer else "int8-nncf"
    set_ir_metadata(quantized, {**metadata, "visionzoo.quantization": kind})
    save_ir(quantized, out_path)
    return out_path

