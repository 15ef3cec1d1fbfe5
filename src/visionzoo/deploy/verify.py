"""`--verify DATA`: an exported file run in its own runtime on images, against the eager model.

Each image is decoded once and preprocessed twice: as the file's metadata says (what a deployment
does) and as the PyTorch model's own data config says (what the eager model was evaluated with),
so a file that carries the wrong preprocessing fails here as it would on a phone. The file runs in
its runtime (onnxruntime, OpenVINO, LiteRT's interpreter, ExecuTorch's runtime; Core ML only on
macOS), the model in eager PyTorch. On class folders named by the model's classes the report gives
top-1 of both, their agreement and the drop (eager minus file, in points); on other images the
agreement, with the eager answers as the truth (so the drop is the share of disagreements).
The result is stored beside the file in `verify.json` (one entry per file name).

`export` is `visionzoo.export`: `export_model`, then this check for every file it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.export import ExportReport, export_model
from visionzoo.deploy.export.onnx import model_class_names, model_preprocessing
from visionzoo.errors import DataError, SettingError
from visionzoo.files import atomic_write_json

__all__ = ["verify_export", "export", "DEFAULT_MAX_DROP", "VERIFY_FILE"]

DEFAULT_MAX_DROP = 1.0  # points of top-1 a file may lose against eager
VERIFY_FILE = "verify.json"


def _decoded(files: list[Path]) -> tuple[list, list[int]]:
    from visionzoo.data.decode import ImageDecodeError, decode_image

    images, kept = [], []
    for index, path in enumerate(files):
        try:
            images.append(decode_image(path))
            kept.append(index)
        except (ImageDecodeError, OSError):
            continue  # an unreadable file is left out of both counts alike
    if not images:
        raise DataError(f"none of the {len(files)} images for --verify could be read")
    return images, kept


def _eager_logits(model: nn.Module, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(batch[i:i + batch_size])).float().numpy()
                               for i in range(0, len(batch), batch_size)])


class _File:
    """An exported file opened in its own runtime: its metadata's preprocessing and `outputs(images)`;
    `probabilities`: Core ML's classifier gives probabilities, the others logits."""

    def __init__(self, path: Path):
        from visionzoo.deploy.runtimes import open_exported

        self.path, self.probabilities = path, path.suffix == ".mlpackage"
        if self.probabilities:
            from visionzoo.deploy.export.coreml import coreml_structure

            self.runtime = "coreml"
            self.preprocessing = json.loads(coreml_structure(path)["metadata"]["visionzoo.preprocessing"])
        else:
            self.classifier = open_exported(path)
            self.preprocessing = self.classifier.preprocessing
            self.runtime = type(self.classifier).__name__.removesuffix("Classifier").lower()

    def outputs(self, images: list) -> np.ndarray:
        from visionzoo.deploy.runtimes import preprocess_image

        arrays = np.stack([preprocess_image(image, self.preprocessing) for image in images])
        if self.probabilities:
            from visionzoo.deploy.export.coreml import coreml_probabilities

            return coreml_probabilities(self.path, arrays, self.preprocessing)
        return self.classifier.predict_logits(arrays)


def _record(path: Path, record: dict[str, Any]) -> None:
    """Store `record` under the file's name in `verify.json` beside it (other files' entries kept)."""
    target = path.parent / VERIFY_FILE
    try:
        entries = json.loads(target.read_text())
    except (OSError, ValueError):
        entries = {}
    entries[path.name] = record
    atomic_write_json(target, entries)


def verify_export(path: str | Path, model: nn.Module, data: str | Path, *, max_drop: float = DEFAULT_MAX_DROP,
                  limit: int | None = None, img_size: int | None = None, save: bool = True) -> dict[str, Any]:
    """Run the exported file at `path` and eager `model` on the images of `data`; `passed` is whether
    the file loses at most `max_drop` points of top-1 (of agreement, on unlabelled images).

    Returns (and with `save`, writes to `verify.json` beside the file): file, images, labelled,
    top1_file, top1_eager, agreement, drop, max_drop (points), passed, max_abs_difference (of the
    outputs, logits; probabilities for Core ML), runtime; for Core ML off macOS, `run: False`,
    `passed: None` and the reason. The eager model runs on its own preprocessing at `img_size`
    (default: the size the file was exported at).
    """
    from visionzoo.deploy.engines.accuracy import labelled_images
    from visionzoo.deploy.runtimes import preprocess_image

    path, model = Path(path), model.eval()
    if not path.exists():
        raise FileNotFoundError(f"exported model {path} does not exist")
    record: dict[str, Any] = {"file": path.name, "data": str(data), "max_drop": max_drop}
    if path.suffix == ".mlpackage":
        from visionzoo.deploy.export.coreml import NOT_RUN_REASON, coreml_runs_here

        if not coreml_runs_here():
            record.update(run=False, passed=None, reason=NOT_RUN_REASON, runtime="coreml")
            if save:
                _record(path, record)
            return record
    file = _File(path)
    if img_size is None:  # the size the file was exported at, a choice; the rest is the model's own
        _, height, width = file.preprocessing["input_size"]
        img_size = height if height == width else None
    files, labels = labelled_images(data, model_class_names(model), limit)
    images, kept = _decoded(files)
    eager_batch = np.stack([preprocess_image(image, model_preprocessing(model, img_size)) for image in images])
    eager = _eager_logits(model, eager_batch)
    outputs, runtime, probabilities = file.outputs(images), file.runtime, file.probabilities
    if outputs.shape != eager.shape:
        raise SettingError(f"{path} gives outputs of shape {outputs.shape}, the model {eager.shape}: not its export")
    reference = torch.from_numpy(eager).softmax(-1).numpy() if probabilities else eager
    file_answers, eager_answers = outputs.argmax(1), eager.argmax(1)
    truth = np.asarray([labels[i] for i in kept]) if labels is not None else eager_answers
    top1_file, top1_eager = float((file_answers == truth).mean()), float((eager_answers == truth).mean())
    drop = 100 * (top1_eager - top1_file)
    record.update(run=True, runtime=runtime, images=len(kept), labelled=labels is not None,
                  top1_file=top1_file, top1_eager=top1_eager,
                  agreement=float((file_answers == eager_answers).mean()), drop=drop,
                  passed=bool(drop <= max_drop + 1e-9), max_abs_difference=float(np.abs(outputs - reference).max()))
    if save:
        _record(path, record)
    return record


def export(model: nn.Module | str, out: str | Path, *, format: str = "onnx", verify_data: str | Path | None = None,
           max_drop: float = DEFAULT_MAX_DROP, verify_limit: int | None = None, **options: Any) -> ExportReport:
    """Export `model` (a model, or a registered name built with its default weights) to `out` in `format`
    (onnx, openvino, torchscript, litert, executorch, coreml; `options` as `export_model` takes them),
    and with `verify_data` run every written file in its own runtime on those images against eager
    (`verify_export`; `report.verification`, and `verify.json` beside the files). A file that drops
    more than `max_drop` points of top-1 has `passed: False`; the CLI exits non-zero on it."""
    if isinstance(model, str):
        from visionzoo.factory import create_model

        model = create_model(model, pretrained=True)
    report = export_model(model, out, format=format, **options)
    if verify_data is not None:
        if format == "torchscript":
            raise SettingError("--verify DATA runs the file in its own runtime; TorchScript has none but PyTorch")
        files = [report.path] + ([report.int8_path] if report.int8_path else [])
        report.verification = [verify_export(file, model, verify_data, max_drop=max_drop, limit=verify_limit,
                                             img_size=options.get("img_size")) for file in files]
    return report
