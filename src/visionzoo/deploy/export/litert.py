"""Export to LiteRT (TFLite): a `.tflite` flatbuffer for Android, iOS and microcontrollers.

`litert-torch` lowers the eval model (through torch.export) to a float32 flatbuffer with a fixed
batch of one; Google's `ai-edge-quantizer` then makes the reduced-precision files from it:
fp16 weights (float casting: half the size, float arithmetic), or full-integer int8 (weights int8
per channel, activations int8 with ranges measured on calibration images preprocessed exactly as
deployment preprocesses them, input and output int8; `int8_input='uint8'` rewrites the input to
uint8 with one requantising op in front, for camera pipelines that hand over uint8). The
preprocessing, class names and head facts go into the flatbuffer's `metadata` table under the
ONNX file's keys (`visionzoo.preprocessing`, ...), read back by `visionzoo.deploy.runtimes.litert`.

Calibration ranges are each tensor's minimum and maximum over all calibration images
(`calibration_ranges`), as TFLite's own converter takes them. ai-edge-quantizer's default keeps an
exponential moving average (weight 0.95) of each image's extremes instead: the last twenty or so
images decide the ranges, and `image_files` lists calibration images class by class, so the
ranges were those of the last class or two (the first images' weight after 64: 0.95^63 = 4%).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.export.onnx import ExportResult, model_preprocessing
from visionzoo.errors import SettingError, require_extra

__all__ = ["export_litert", "write_tflite_metadata", "calibration_ranges", "PRECISIONS", "INT8_INPUTS"]

PRECISIONS = ("fp32", "fp16", "int8")
INT8_INPUTS = ("int8", "uint8")


@contextlib.contextmanager
def _quiet():
    """The converter's progress lines and the quantizer's size report are not for our users."""
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def _convert_fp32(model: nn.Module, img_size: int | None, out: Path) -> None:
    litert_torch = require_extra("litert_torch", "litert", "LiteRT export")
    channels, height, width = model_preprocessing(model, img_size)["input_size"]
    example = torch.randn(1, channels, height, width)
    with _quiet(), torch.no_grad():
        litert_torch.convert(model.eval(), (example,)).export(str(out))


def _quantize(fp32: Path, out: Path, precision: str, calibration: list[np.ndarray] | None) -> None:
    """fp16 weights (float casting) or static full-integer int8 of a float .tflite file."""
    require_extra("ai_edge_quantizer", "litert", f"{precision} LiteRT export")
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    with _quiet():
        tool = quantizer.Quantizer(str(fp32))
        if precision == "fp16":
            tool.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                        num_bits=16, granularity=qtyping.QuantGranularity.TENSORWISE,
                                        algorithm_key=AlgorithmName.FLOAT_CASTING)
            result = tool.quantize()
        else:
            tool.load_quantization_recipe(recipe.static_wi8_ai8())
            result = tool.quantize(calibration_ranges(fp32, calibration))
        result.export_model(str(out), overwrite=True)


def _widest(seen: dict, new: dict) -> dict:
    """ai-edge-quantizer's QSV update: the running minimum and maximum (not a moving average)."""
    if not seen:
        return new
    return {**new, "min": np.minimum(seen["min"], new["min"]), "max": np.maximum(seen["max"], new["max"])}


def calibration_ranges(fp32: Path, calibration: list[np.ndarray]) -> dict:
    """Each tensor's range (ai-edge-quantizer's QSVs: min, max) for full-integer int8 of the float file
    `fp32`: its minimum and maximum over every image of `calibration`, so the order of the images
    does not matter."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, recipe, recipe_manager

    signature, names = next(iter(Interpreter(model_path=str(fp32)).get_signature_list().items()))
    samples = [{names["inputs"][0]: image[None]} for chunk in calibration for image in chunk]
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe.static_wi8_ai8())
    with _quiet():
        ranges = calibrator.Calibrator(str(fp32), num_threads=os.cpu_count() or 1, qsv_update_func=_widest)
        ranges.calibrate({signature: samples}, manager)
    return ranges.get_model_qsvs()


def _uint8_input(model) -> None:
    """Make the (int8) input tensor uint8, requantised to int8 by a QUANTIZE op in front of the graph:
    the same real values (uint8 zero point = int8 zero point + 128, same scale)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = model.subgraphs[0]
    old_input = graph.inputs[0]
    tensor = graph.tensors[old_input]
    if tensor.type != schema.TensorType.INT8:
        raise SettingError("uint8 input needs a full-integer int8 model")
    new = schema.TensorT()
    new.shape, new.shapeSignature, new.type = tensor.shape, tensor.shapeSignature, schema.TensorType.UINT8
    new.name = (tensor.name or b"input") + b"_uint8"
    new.buffer = 0  # the empty buffer: an activation
    new.quantization = schema.QuantizationParametersT()
    new.quantization.scale = list(tensor.quantization.scale)
    new.quantization.zeroPoint = [int(z) + 128 for z in tensor.quantization.zeroPoint]
    graph.tensors.append(new)
    code = next((i for i, c in enumerate(model.operatorCodes)
                 if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.QUANTIZE), None)
    if code is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 2  # uint8 -> int8 requantisation
        model.operatorCodes.append(code)
        code = len(model.operatorCodes) - 1
    operator = schema.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = code, [len(graph.tensors) - 1], [old_input]
    graph.operators.insert(0, operator)
    graph.inputs[0] = len(graph.tensors) - 1
    for signature in model.signatureDefs or []:
        for item in signature.inputs:
            if item.tensorIndex == old_input:
                item.tensorIndex = len(graph.tensors) - 1


def write_tflite_metadata(path: Path, metadata: dict[str, str], *, uint8_input: bool = False) -> None:
    """Add `metadata` (name -> text) to the .tflite file's metadata table, as buffers of UTF-8 bytes."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(path.read_bytes())
    if uint8_input:
        _uint8_input(model)
    model.metadata = [entry for entry in (model.metadata or []) if not entry.name.decode().startswith("visionzoo.")]
    for name, value in metadata.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode(), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
        model.metadata.append(entry)
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def export_litert(model: nn.Module, path: str | Path, metadata: dict[str, str], *, img_size: int | None = None,
                  precision: str = "fp32", calibration: list[np.ndarray] | None = None,
                  int8_input: str = "int8", float_file: Path | None = None) -> ExportResult:
    """Write `model` as a .tflite file in `precision` ('fp32', 'fp16', 'int8': full-integer, calibrated
    on `calibration`, batches preprocessed as deployed), with `metadata` in its metadata table.
    `float_file`: an fp32 .tflite of this model already written, quantised instead of converting again."""
    if precision not in PRECISIONS:
        raise SettingError(f"LiteRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if int8_input not in INT8_INPUTS:
        raise SettingError(f"int8 input type must be int8 or uint8, got {int8_input!r}")
    if precision == "int8" and not calibration:
        raise SettingError("int8 LiteRT export needs calibration images (--calib DIR)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vz-litert-") as folder:
        fp32 = Path(folder) / "fp32.tflite"
        if float_file is not None and precision != "fp32":
            shutil.copy(float_file, fp32)
        else:
            _convert_fp32(model, img_size, fp32)
        made = fp32
        if precision != "fp32":
            made = Path(folder) / f"{precision}.tflite"
            _quantize(fp32, made, precision, calibration)
        extra = {"visionzoo.precision": precision}
        if precision == "int8":
            extra["visionzoo.quantization"] = f"int8-static-full-integer-{int8_input}-input"
        write_tflite_metadata(made, {**metadata, **extra}, uint8_input=precision == "int8" and int8_input == "uint8")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(made.read_bytes())
        tmp.replace(path)
    return ExportResult(path=path, format="litert")
