"""Post-training static int8 quantisation of an exported ONNX model, with onnxruntime's tools.

Calibration images are preprocessed exactly as the deployed model will see them (the
torch-free preprocessing of `visionzoo.onnx_predict`), so the activation ranges measured
are the ranges met in deployment. Weights are quantised per output channel (int8),
activations per tensor (uint8), in QDQ format, which onnxruntime fuses into integer kernels.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["quantize_int8", "calibration_batches"]


def calibration_batches(image_paths: list[Path], preprocessing: dict, batch_size: int = 8) -> list[np.ndarray]:
    from visionzoo.data.decode import ImageDecodeError, decode_image
    from visionzoo.onnx_predict import preprocess_image

    arrays = []
    for path in image_paths:
        try:
            arrays.append(preprocess_image(decode_image(path), preprocessing))
        except (ImageDecodeError, OSError):
            continue  # a bad calibration file is skipped, not fatal
    if not arrays:
        raise ValueError(f"none of the {len(image_paths)} calibration images could be read")
    return [np.stack(arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size)]


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration_images: list[Path], *,
                  calibration_method: str = "percentile") -> Path:
    """Quantise `onnx_path` to int8 using `calibration_images`; metadata is carried over."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = onnx.load(str(onnx_path))
    metadata = {entry.key: entry.value for entry in source.metadata_props}
    preprocessing = json.loads(metadata["visionzoo.preprocessing"])
    input_name = source.graph.input[0].name
    batches = calibration_batches(list(calibration_images), preprocessing)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._iter = iter(batches)

        def get_next(self):
            batch = next(self._iter, None)
            return None if batch is None else {input_name: batch}

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibration_method not in methods:
        raise ValueError(f"calibration_method must be one of {sorted(methods)}, got {calibration_method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "quantized.onnx"
        def run(method: str) -> None:
            extra = {"CalibPercentile": 99.999} if method == "percentile" else {}
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
        result = onnx.load(str(quantized))
    del result.metadata_props[:]
    for key, value in {**metadata, "visionzoo.quantization": "int8-static-qdq"}.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    onnx.save(result, str(tmp_out))
    tmp_out.replace(out_path)
    return out_path
