"""Classify images with an exported ONNX model, without PyTorch.

This module imports only numpy, Pillow and onnxruntime (and visionzoo's own torch-free image
decoder), so an edge device can run it with no PyTorch installed; `open_exported` also opens
files for OpenVINO (`visionzoo.deploy.runtimes.openvino`, equally torch-free) through
`visionzoo.deploy.runtimes.open_exported`. Preprocessing and class
names come from the metadata `visionzoo export` embedded in the file, and so do a trained model's
head facts (`visionzoo.head`: temperature, multi-label thresholds, OOD rule), applied to the
graph's logits as the PyTorch predictor applies them; the result format is the PyTorch
predictor's: per image `{"path", "predictions": [{"index", "label", "prob"}]}` (plus `"labels"`
or `"unknown"`; see `visionzoo.heads`), or `{"path", "error"}` for an image that cannot be read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visionzoo.deploy.runtimes.exported import ExportedClassifier
from visionzoo.errors import SettingError, require_extra

__all__ = ["OnnxClassifier"]


class OnnxClassifier(ExportedClassifier):
    """An exported visionzoo model run by onnxruntime, with its own preprocessing and labels."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        ort = require_extra("onnxruntime", "edge", "running an exported .onnx model")

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads sleep instead of spinning: in a process that also runs PyTorch (serve, export
        # verification) a spinning pool would take the cores PyTorch's threads need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise SettingError(f"{path} is not a loadable ONNX model: {error}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "visionzoo.preprocessing" not in metadata:
            raise SettingError(f"{path} has no visionzoo preprocessing metadata; export it with `visionzoo export`")
        self.read_metadata(path, metadata)
        self.input_name = self.session.get_inputs()[0].name
        fixed_batch = self.session.get_inputs()[0].shape[0]
        self.max_batch = fixed_batch if isinstance(fixed_batch, int) else 32

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]
