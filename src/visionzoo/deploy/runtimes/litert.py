"""Classify images with an exported LiteRT (TFLite) model, without PyTorch.

Imports only numpy, Pillow, flatbuffers and `ai-edge-litert` (its interpreter, with the XNNPACK
delegate on the CPU), so a phone-class Linux device runs it with `pip install 'visionzoo[litert]'`
minus the converter. The preprocessing and class names are the `visionzoo.*` entries that
`visionzoo export --format litert` wrote into the flatbuffer's `metadata` table (the same keys
and JSON values as in an ONNX file). A full-integer model (int8 or uint8 input and output) is
fed by quantising the float preprocessed image with the input tensor's scale and zero point,
and its output dequantised with the output's, so every caller sees float logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visionzoo.deploy.runtimes.exported import ExportedClassifier
from visionzoo.errors import SettingError, require_extra

__all__ = ["LiteRTClassifier", "tflite_metadata", "quantize_input", "dequantize_output", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'visionzoo[litert]'"


def tflite_metadata(path: str | Path) -> dict[str, str]:
    """The `visionzoo.*` entries of a .tflite file's metadata table (name -> UTF-8 text)."""
    schema = require_extra("ai_edge_litert.schema_py_generated", "litert", f"reading the metadata of {path}")
    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    entries = {}
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        name = entry.Name().decode()
        if name.startswith("visionzoo."):
            buffer = model.Buffers(entry.Buffer())
            entries[name] = buffer.DataAsNumpy().tobytes().decode() if buffer.DataLength() else ""
    return entries


def quantize_input(batch: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A float batch in the input tensor's integer type (scale, zero point from `detail`); float stays float."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return batch.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(batch / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize_output(output: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.issubdtype(output.dtype, np.floating):
        return output.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((output.astype(np.float32) - zero_point) * scale).astype(np.float32)


class LiteRTClassifier(ExportedClassifier):
    """An exported visionzoo .tflite model run by LiteRT's interpreter (XNNPACK on the CPU)."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        interpreter = require_extra("ai_edge_litert.interpreter", "litert", "running a .tflite model")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LiteRT model {path} does not exist")
        metadata = tflite_metadata(path)
        if "visionzoo.preprocessing" not in metadata:
            raise SettingError(f"{path} has no visionzoo preprocessing metadata; export it with "
                               "`visionzoo export --format litert`")
        try:
            self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise SettingError(f"{path} is not a loadable LiteRT model: {str(error).splitlines()[0]}") from None
        self.read_metadata(path, metadata)
        self.precision = metadata.get("visionzoo.precision", "fp32")
        self.input_detail = self.interpreter.get_input_details()[0]
        self.output_detail = self.interpreter.get_output_details()[0]
        self.max_batch = int(self.input_detail["shape"][0])  # exported with a fixed batch (1): phones run one image

    def logits(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for start in range(0, len(batch), self.max_batch):  # the last chunk padded to the fixed batch
            chunk = batch[start:start + self.max_batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.max_batch - len(chunk), axis=0)])
            self.interpreter.set_tensor(self.input_detail["index"], quantize_input(padded, self.input_detail))
            self.interpreter.invoke()
            output = self.interpreter.get_tensor(self.output_detail["index"])
            rows.append(dequantize_output(output, self.output_detail)[:len(chunk)])
        return np.concatenate(rows)
