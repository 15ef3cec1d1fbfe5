"""Post-training int8 quantisation of an exported ONNX model, with onnxruntime's tools.

Two schemes, chosen per model by where its multiply-adds are (`int8_scheme`):

- static, for convolutional networks: weights per output channel (int8), activations per
  tensor (uint8) with ranges measured on calibration images, in QDQ format, which
  onnxruntime fuses into integer kernels (QLinearConv) end to end. Calibration images are
  preprocessed exactly as the deployed model will see them (the torch-free preprocessing of
  `visionzoo.deploy.runtimes`), so the ranges measured are the ranges met in deployment.
- dynamic, for networks whose work is mostly matrix products (ViT, Swin, ConvNeXt's MLPs):
  MatMul/Gemm weights int8 per output channel, activations quantised on the fly per tensor.
  No calibration, and on this kind of model faster than static QDQ on a CPU: LayerNorm,
  GELU and softmax stay in float instead of paying a dequantise/quantise pair each.
  Measured on a 2-core AMD EPYC (batch 1, `benchmarks/cpu_deploy.py`): vit_small 0.37x timm
  eager against 0.47x static; convnext_tiny 0.35x against 0.48x.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from visionzoo.errors import SettingError

__all__ = ["quantize_int8", "calibration_batches", "int8_scheme", "multiply_adds_by_kind", "quantization_kind", "SCHEMES"]

SCHEMES = ("auto", "static", "dynamic")


def calibration_batches(image_paths: list[Path], preprocessing: dict, batch_size: int = 8) -> list[np.ndarray]:
    from visionzoo.data.decode import ImageDecodeError, decode_image
    from visionzoo.deploy.runtimes import preprocess_image

    arrays = []
    for path in image_paths:
        try:
            arrays.append(preprocess_image(decode_image(path), preprocessing))
        except (ImageDecodeError, OSError):
            continue  # a bad calibration file is skipped, not fatal
    if not arrays:
        raise SettingError(f"none of the {len(image_paths)} calibration images could be read")
    # Batches of one size: onnxruntime's histogram calibrators stack every batch's activations into one array,
    # so a smaller last batch breaks them. The largest size up to `batch_size` that divides the count keeps
    # every image (9 images: 3 batches of 3).
    batch_size = max(size for size in range(1, batch_size + 1) if len(arrays) % size == 0)
    return [np.stack(arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size)]


def multiply_adds_by_kind(model) -> dict[str, int]:
    """Multiply-adds per image of an ONNX model's convolutions and of its matrix products (MatMul,
    Gemm), from the shapes ONNX shape inference gives (batch taken as 1)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    totals = {"conv": 0, "matmul": 0}
    for node in inferred.graph.node:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type == "Conv" and node.input[1] in shapes:
            weight = shapes[node.input[1]]  # (out, in / groups, kh, kw): each output element costs in/g*kh*kw
            totals["conv"] += int(np.prod(out[1:])) * int(np.prod(weight[1:]))
        elif node.op_type in ("MatMul", "Gemm") and node.input[1] in shapes and node.input[0] in shapes:
            a = shapes[node.input[0]]
            transposed = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
            inner = a[-2] if transposed else a[-1]
            totals["matmul"] += int(np.prod(out[1:] if len(out) > 2 else out[-1:])) * int(inner)
    return totals


def int8_scheme(model) -> str:
    """'dynamic' where matrix products carry most of the multiply-adds, else 'static'."""
    totals = multiply_adds_by_kind(model)
    return "dynamic" if totals["matmul"] > totals["conv"] else "static"


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration_images: list[Path] | None = None, *,
                  calibration_method: str = "percentile", scheme: str = "auto") -> Path:
    """Quantise `onnx_path` to int8; metadata is carried over (with the scheme used).

    `scheme`: 'static' (calibrated on `calibration_images`), 'dynamic' (no calibration), or
    'auto' (`int8_scheme` picks by where the model's multiply-adds are).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if scheme not in SCHEMES:
        raise SettingError(f"int8 scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = onnx.load(str(onnx_path))
    if scheme == "auto":
        scheme = int8_scheme(source)
    if scheme == "static" and not calibration_images:
        raise SettingError(f"static int8 quantisation of {onnx_path} needs calibration images (--calib DIR: a folder "
                         "of a few dozen images like the ones the model will see)")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibration_method not in methods:
        raise SettingError(f"calibration_method must be one of {sorted(methods)}, got {calibration_method!r}")
    metadata = {entry.key: entry.value for entry in source.metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        if scheme == "dynamic":
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
            return _save_with_metadata(onnx.load(str(quantized)), metadata, "int8-dynamic", out_path)

        input_name = source.graph.input[0].name
        batches = calibration_batches(list(calibration_images), json.loads(metadata["visionzoo.preprocessing"]))

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._iter = iter(batches)

            def get_next(self):
                batch = next(self._iter, None)
                return None if batch is None else {input_name: batch}

        def run(method: str) -> None:
            extra = {"CalibPercentile": 99.999} if method == "percentile" else {}
            # onnxruntime's calibrators print their settings on stdout ("Number of tensors : 52",
            # "Collecting tensor data and making histogram ..."): stdout is for our output (`--json`
            # there is one JSON document) and the user needs none of it, so it goes nowhere
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                                 activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                 calibrate_method=methods[method], extra_options=extra)

        try:
            run(calibration_method)
        except ValueError as error:
            # onnxruntime's histogram calibrators fail on a tensor of (almost) constant value
            # ("Too many bins for data range"); min-max calibration has no histogram to fail.
            if calibration_method == "minmax" or "bins" not in str(error):
                raise
            run("minmax")
        return _save_with_metadata(onnx.load(str(quantized)), metadata, "int8-static-qdq", out_path)


def quantization_kind(path: str | Path) -> str | None:
    """The `visionzoo.quantization` metadata of an ONNX file (None for a float model)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}.get("visionzoo.quantization")


def _save_with_metadata(result, metadata: dict[str, str], kind: str, out_path: Path) -> Path:
    import onnx

    del result.metadata_props[:]
    for key, value in {**metadata, "visionzoo.quantization": kind}.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    onnx.save(result, str(tmp_out))
    tmp_out.replace(out_path)
    return out_path
