"""Classify images with an exported ONNX model, without PyTorch.

This module imports only numpy, Pillow and onnxruntime (and visionzoo's own torch-free image
decoder), so an edge device can run it with no PyTorch installed; `open_exported` also opens
files for OpenVINO (`visionzoo.openvino_predict`, equally torch-free). Preprocessing and class
names come from the metadata `visionzoo export` embedded in the file, and so do a trained model's
head facts (`visionzoo.head`: temperature, multi-label thresholds, OOD rule), applied to the
graph's logits as the PyTorch predictor applies them; the result format is the PyTorch
predictor's: per image `{"path", "predictions": [{"index", "label", "prob"}]}` (plus `"labels"`
or `"unknown"`; see `visionzoo.outputs`), or `{"path", "error"}` for an image that cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionzoo.data.decode import ImageDecodeError, decode_image
from visionzoo.errors import SettingError, require_extra
from visionzoo.outputs import probabilities, result_record
from visionzoo.results import error_record

__all__ = ["ExportedClassifier", "OnnxClassifier", "open_exported", "onnx_metadata", "preprocess_image", "RUNTIMES"]

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def preprocess_image(image: Image.Image, preprocessing: dict[str, Any]) -> np.ndarray:
    """Resize the shorter side to size / crop_pct, centre-crop, scale to [0, 1] and normalise.

    Mirrors the PyTorch eval transform (torchvision's Resize + CenterCrop on a PIL image,
    which also resizes with Pillow): same sizes, same rounding, same filter.
    Returns a float32 array (C, H, W).
    """
    _, height, width = preprocessing["input_size"]
    crop_pct = float(preprocessing.get("crop_pct", 1.0))
    resample = _RESAMPLE[preprocessing.get("interpolation", "bilinear")]
    scale_size = int(height / crop_pct) if height == width else None
    w, h = image.size
    if scale_size is not None:  # shorter side to scale_size, aspect kept, as torchvision truncates
        new_w, new_h = (scale_size, int(scale_size * h / w)) if w <= h else (int(scale_size * w / h), scale_size)
    else:
        new_w, new_h = int(width / crop_pct), int(height / crop_pct)
    image = image.resize((new_w, new_h), resample)
    left, top = int(round((new_w - width) / 2.0)), int(round((new_h - height) / 2.0))
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, C)
    mean = np.asarray(preprocessing.get("mean", (0.485, 0.456, 0.406)), dtype=np.float32)
    std = np.asarray(preprocessing.get("std", (0.229, 0.224, 0.225)), dtype=np.float32)
    return ((array - mean) / std).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class ExportedClassifier:
    """An exported visionzoo model with its own preprocessing and labels, run by some runtime.

    A subclass sets `path`, `name`, `preprocessing`, `class_names` and `max_batch`, and
    implements `logits(batch)`; prediction, batching and bad-file handling are shared here.
    """

    path: Path
    name: str
    preprocessing: dict[str, Any]
    class_names: list[str] | None
    head: dict[str, Any] | None = None  # temperature, thresholds, OOD rule (metadata `visionzoo.head`)
    max_batch: int = 32

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) for a preprocessed float32 batch no larger than `max_batch`."""
        raise NotImplementedError

    def label(self, index: int) -> str:
        if self.class_names is not None and index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """The graph's raw logits (N, num_classes) for a preprocessed float32 batch (N, C, H, W)."""
        outputs = []
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start:start + self.max_batch], dtype=np.float32)
            outputs.append(self.logits(chunk))
        return np.concatenate(outputs).astype(np.float32)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for a preprocessed float32 batch (N, C, H, W), with the head's
        temperature (sigmoid for a multi-label model)."""
        logits = self.predict_logits(batch)
        return _softmax(logits) if self.head is None else probabilities(logits, self.head)

    def predict_files(self, paths: list[str | Path], *, topk: int = 5, batch_size: int = 16,
                      reject: bool = True) -> list[dict[str, Any]]:
        """One result per path, in order; unreadable images get `{"path", "error"}`, the rest predictions.
        `reject=False` leaves out the head's unknown rule."""
        results: list[dict[str, Any]] = [{} for _ in paths]
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            logits = self.predict_logits(np.stack([array for _, array in pending]))
            for (index, _), row in zip(pending, logits):
                results[index] = result_record(str(paths[index]), row, self.class_names, topk, self.head,
                                               reject=reject)
            pending.clear()

        for index, path in enumerate(paths):
            try:
                pending.append((index, preprocess_image(decode_image(path), self.preprocessing)))
            except (ImageDecodeError, OSError) as error:
                results[index] = error_record(str(path), str(error))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
        return results


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an ONNX file (read with the `onnx` package when present, else onnxruntime)."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        model = onnx.load(str(path), load_external_data=False)
        return {entry.key: entry.value for entry in model.metadata_props}
    ort = require_extra("onnxruntime", "edge", f"reading the metadata of {path}")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


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
        self.path = path
        self.name = metadata.get("visionzoo.model", path.stem)
        self.preprocessing: dict[str, Any] = json.loads(metadata["visionzoo.preprocessing"])
        self.class_names: list[str] | None = json.loads(metadata.get("visionzoo.class_names", "null"))
        self.head: dict[str, Any] | None = json.loads(metadata.get("visionzoo.head", "null"))
        self.input_name = self.session.get_inputs()[0].name
        fixed_batch = self.session.get_inputs()[0].shape[0]
        self.max_batch = fixed_batch if isinstance(fixed_batch, int) else 32

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")
EXPORTED_SUFFIXES = (".onnx", ".xml")


def open_exported(path: str | Path, runtime: str | None = None, *, threads: int | None = None) -> ExportedClassifier:
    """An exported file as a classifier, torch-free: an .onnx file by onnxruntime (default) or OpenVINO,
    an OpenVINO IR (.xml) by OpenVINO. `runtime`: 'onnxruntime', 'openvino' (fp32, or the precision
    the export recorded) or 'openvino-bf16'."""
    path = Path(path)
    if path.suffix not in EXPORTED_SUFFIXES:
        raise SettingError(f"{path} is not an exported model (.onnx or OpenVINO .xml)")
    if runtime is not None and runtime not in RUNTIMES:
        raise SettingError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    runtime = runtime or ("openvino" if path.suffix == ".xml" else "onnxruntime")
    if runtime == "onnxruntime":
        if path.suffix == ".xml":
            raise SettingError(f"{path} is an OpenVINO IR; onnxruntime runs .onnx files (use --runtime openvino)")
        return OnnxClassifier(path, threads=threads)
    from visionzoo.openvino_predict import OpenVinoClassifier

    return OpenVinoClassifier(path, precision="bf16" if runtime == "openvino-bf16" else None, threads=threads)
