"""What every torch-free predictor shares: the preprocessing written into an exported file's
metadata, applied with Pillow and numpy as the PyTorch eval transform applies it, and the
classifier base class that batches, predicts and reports unreadable files the same way for every
runtime (onnxruntime, OpenVINO). Imports only numpy and Pillow (and `onnx` or onnxruntime,
lazily, to read an ONNX file's metadata).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionzoo.data import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.data.decode import ImageDecodeError, decode_image
from visionzoo.data.resize import fit_image, resize_mode_of
from visionzoo.errors import require_extra
from visionzoo.heads import error_record, probabilities, result_record, softmax

__all__ = ["ExportedClassifier", "onnx_metadata", "preprocess_image"]


def preprocess_image(image: Image.Image, preprocessing: dict[str, Any]) -> np.ndarray:
    """Fit the photo to the input by the metadata's resize mode (`visionzoo.data.resize`: crop, the
    default, resizes the shorter side to size / crop_pct and centre-crops; squash stretches; letterbox
    keeps the aspect ratio and pads with the mean colour), scale to [0, 1] and normalise.

    The one preprocessing of every torch-free runtime (ONNX, OpenVINO and those added later): the
    geometry is `data.resize.fit_image`, the Pillow code the PyTorch eval transform runs on decoded
    photos in squash and letterbox mode (in crop mode it mirrors torchvision's Resize + CenterCrop:
    same sizes, same rounding, same filter). Returns a float32 array (C, H, W).
    """
    _, height, width = preprocessing["input_size"]
    mean = preprocessing.get("mean", IMAGENET_MEAN)
    image = fit_image(image, resize_mode_of(preprocessing), int(height), int(width),
                      crop_pct=float(preprocessing.get("crop_pct", 1.0)), mean=mean,
                      interpolation=preprocessing.get("interpolation", "bilinear"))
    array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, C)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(preprocessing.get("std", IMAGENET_STD), dtype=np.float32)
    return ((array - mean) / std).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


class ExportedClassifier:
    """An exported visionzoo model with its own preprocessing and labels, run by some runtime.

    A subclass sets `path`, `name`, `preprocessing`, `class_names` (`read_metadata`) and `max_batch`, and
    implements `logits(batch)`; prediction, batching and bad-file handling are shared here.
    """

    path: Path
    name: str
    preprocessing: dict[str, Any]
    class_names: list[str] | None
    head: dict[str, Any] | None = None  # temperature, thresholds, OOD rule (metadata `visionzoo.head`)
    max_batch: int = 32

    def read_metadata(self, path: Path, metadata: dict[str, str]) -> None:
        """Take the file's own description (the `visionzoo.*` keys every export writes, whatever its format)."""
        self.path = path
        self.metadata = metadata
        self.name = metadata.get("visionzoo.model", path.stem)
        self.preprocessing = json.loads(metadata["visionzoo.preprocessing"])
        self.class_names = json.loads(metadata.get("visionzoo.class_names", "null"))
        self.head = json.loads(metadata.get("visionzoo.head", "null"))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) for a preprocessed float32 batch no larger than `max_batch`."""
        raise NotImplementedError

    def label(self, index: int) -> str:
        if self.class_names is not None and index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def predict_logits(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """The graph's raw logits (N, num_classes) for a preprocessed float32 batch (N, C, H, W); with `tta`,
        the mean of the image's and its mirror's, run as one batch (as `evaluation.tta_logits` with flip)."""
        if tta:
            both = self.predict_logits(np.concatenate([batch, batch[..., ::-1]]))
            return (both[:len(batch)] + both[len(batch):]) / 2
        outputs = []
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start:start + self.max_batch], dtype=np.float32)
            outputs.append(self.logits(chunk))
        return np.concatenate(outputs).astype(np.float32)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for a preprocessed float32 batch (N, C, H, W), with the head's
        temperature (sigmoid for a multi-label model)."""
        logits = self.predict_logits(batch)
        return softmax(logits) if self.head is None else probabilities(logits, self.head)

    def predict_files(self, paths: list[str | Path], *, topk: int = 5, batch_size: int = 16,
                      reject: bool = True, tta: bool = False) -> list[dict[str, Any]]:
        """One result per path, in order; unreadable images get `{"path", "error"}`, the rest predictions.
        `reject=False` leaves out the head's unknown rule; `tta` averages each image with its mirror."""
        results: list[dict[str, Any]] = [{} for _ in paths]
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            logits = self.predict_logits(np.stack([array for _, array in pending]), tta=tta)
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
