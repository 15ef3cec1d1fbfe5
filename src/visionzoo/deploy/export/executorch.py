"""Export to ExecuTorch: a `.pte` program lowered to the XNNPACK backend, for Android and iOS apps.

The eval model is captured with torch.export (a fixed batch of one), lowered with the XNNPACK
partitioner (every supported op runs in XNNPACK's kernels), and serialised. int8 is PyTorch's
PT2E post-training quantisation with ExecuTorch's XNNPACK quantizer (symmetric, weights per
channel), its observers fed the calibration images preprocessed exactly as deployment does.
The metadata (the ONNX file's keys, as one JSON object) is a constant method of the program,
`visionzoo_metadata`, returning its UTF-8 bytes, read back by `visionzoo.deploy.runtimes.executorch`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.export.onnx import ExportResult, model_preprocessing
from visionzoo.deploy.runtimes.executorch import METADATA_METHOD
from visionzoo.errors import SettingError, require_extra

__all__ = ["export_executorch", "PRECISIONS"]

PRECISIONS = ("fp32", "int8")


def _quantized(model: nn.Module, example: torch.Tensor, calibration: list[np.ndarray]) -> nn.Module:
    """PT2E int8 with the XNNPACK quantizer, observers calibrated on `calibration`, one image at a time."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    with torch.no_grad():
        for chunk in calibration:
            for image in chunk:
                prepared(torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)))
    return convert_pt2e(prepared)


def export_executorch(model: nn.Module, path: str | Path, metadata: dict[str, str], *, img_size: int | None = None,
                      precision: str = "fp32", calibration: list[np.ndarray] | None = None) -> ExportResult:
    """Write `model` as an XNNPACK-lowered .pte program in `precision` ('fp32', or 'int8' calibrated on
    `calibration`, batches preprocessed as deployed), with `metadata` as its `visionzoo_metadata` method."""
    require_extra("executorch", "executorch", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision not in PRECISIONS:
        raise SettingError(f"ExecuTorch precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and not calibration:
        raise SettingError("int8 ExecuTorch export needs calibration images (--calib DIR)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels, height, width = model_preprocessing(model, img_size)["input_size"]
    example = torch.randn(1, channels, height, width)
    extra = {"visionzoo.precision": precision}
    if precision == "int8":
        extra["visionzoo.quantization"] = "int8-pt2e-xnnpack"
    encoded = json.dumps({**metadata, **extra}).encode()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.export's and the lowering's deprecation chatter
        model = model.eval()
        if precision == "int8":
            model = _quantized(model, example, calibration)
        program = to_edge_transform_and_lower(
            torch.export.export(model, (example,)), partitioner=[XnnpackPartitioner()],
            constant_methods={METADATA_METHOD: torch.frombuffer(bytearray(encoded), dtype=torch.uint8)},
        ).to_executorch()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(program.buffer)
    tmp.replace(path)
    return ExportResult(path=path, format="executorch")
