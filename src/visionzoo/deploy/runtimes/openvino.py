"""Classify images with an exported model run by OpenVINO, without PyTorch.

Like `visionzoo.deploy.runtimes.onnx`, this module imports only numpy, Pillow and openvino (and
visionzoo's torch-free decoder), so an edge device runs it with no PyTorch installed. It takes
an OpenVINO IR (`model.xml` beside `model.bin`, written by `visionzoo export --format openvino`)
or an ONNX file (OpenVINO reads ONNX directly; the metadata is then read with `onnx` or
onnxruntime). Preprocessing and class names come from the export's metadata: in an IR they
are the same keys as in the ONNX file, stored in the model's rt_info under `visionzoo`.

Precision: OpenVINO's CPU plugin defaults to bf16 on a CPU with bf16 instructions, which
changes the outputs; here fp32 is the default, and bf16 is used only when asked
(`precision="bf16"`) or when the export recorded that it was chosen (`visionzoo.precision`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visionzoo.deploy.runtimes.exported import ExportedClassifier, onnx_metadata
from visionzoo.errors import MissingExtraError, SettingError, require_extra

__all__ = ["OpenVinoClassifier", "openvino_core", "ir_metadata", "set_ir_metadata", "bf16_supported",
           "compile_config", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'visionzoo[openvino]'"
_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
_core = None


def openvino_core():
    """The process's one `openvino.Core` (made on first use); a clear one-line error when missing."""
    global _core
    if _core is None:
        _core = require_extra("openvino", "openvino", "running a model with OpenVINO").Core()
    return _core


def bf16_supported() -> bool:
    """Whether this machine's CPU runs bf16 arithmetic natively (AVX512_BF16 or AMX), per OpenVINO."""
    try:
        return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except MissingExtraError:
        return False


def ir_metadata(model) -> dict[str, str]:
    """An OpenVINO model's visionzoo metadata, with the ONNX file's key names (`visionzoo.preprocessing`, ...)."""
    info = model.get_rt_info()
    if "visionzoo" not in info:
        return {}
    section = info["visionzoo"]  # a dict of str -> OVAny
    return {f"visionzoo.{key}": str(value.astype(str)) for key, value in section.items()}


def set_ir_metadata(model, metadata: dict[str, str]) -> None:
    """Store `metadata` ({'visionzoo.KEY': str}) in the model's rt_info as visionzoo/KEY."""
    for key, value in metadata.items():
        if not key.startswith("visionzoo."):
            raise ValueError(f"metadata key {key!r} must start with 'visionzoo.'")
        model.set_rt_info(str(value), ["visionzoo", key.removeprefix("visionzoo.")])


def compile_config(precision: str = "fp32", threads: int | None = None, hint: str = "LATENCY") -> dict[str, Any]:
    """The CPU plugin settings every visionzoo OpenVINO run uses: the precision always explicit."""
    if precision not in _PRECISIONS:
        raise SettingError(f"OpenVINO precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and not bf16_supported():
        raise SettingError("bf16 was asked for but this CPU has no bf16 instructions (OpenVINO's "
                         "OPTIMIZATION_CAPABILITIES lacks BF16); use fp32")
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": _PRECISIONS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def read_exported(path: str | Path):
    """(openvino model, visionzoo metadata) of an IR (.xml) or ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path} has no weights file {path.with_suffix('.bin')} beside it")
    core = openvino_core()
    try:
        model = core.read_model(str(path))
    except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own for bad files
        raise SettingError(f"{path} is not a model OpenVINO can read: {str(error).splitlines()[0]}") from None
    metadata = onnx_metadata(path) if path.suffix == ".onnx" else ir_metadata(model)
    if "visionzoo.preprocessing" not in metadata:
        raise SettingError(f"{path} has no visionzoo preprocessing metadata; export it with `visionzoo export`")
    return model, metadata


class OpenVinoClassifier(ExportedClassifier):
    """An exported visionzoo model (IR or ONNX) run by OpenVINO on the CPU.

    `precision`: 'fp32', 'bf16', or None for what the export recorded (fp32 when nothing was).
    """

    def __init__(self, path: str | Path, *, precision: str | None = None, threads: int | None = None,
                 hint: str = "LATENCY"):
        path = Path(path)
        model, metadata = read_exported(path)
        self.read_metadata(path, metadata)
        self.quantization = metadata.get("visionzoo.quantization")
        self.precision = precision or metadata.get("visionzoo.precision", "fp32")
        self.compiled = openvino_core().compile_model(model, "CPU", compile_config(self.precision, threads, hint))
        self.request = self.compiled.create_infer_request()
        batch = model.inputs[0].get_partial_shape()[0]
        self.max_batch = batch.get_length() if batch.is_static else 32

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer([batch])[0], dtype=np.float32, copy=True)
