"""Classify image files with a model: the library side of `visionzoo predict`.

    results = predict("resnet50", ["cat.jpg", "photos/"], topk=5)     # default weights
    print(format_table(results))

Each result is `{"path", "predictions": [{"index", "label", "prob"}]}`, or `{"path", "error"}`
for a file that cannot be read (the others are still predicted). `prediction_record` builds
one result from class probabilities, so other back ends (ONNX) format theirs the same way.
A model trained by visionzoo applies its head facts (`visionzoo.heads.result_record`): the
saved temperature; `"unknown": true` below its OOD threshold (unless `reject=False`); for
multi-label models sigmoid probabilities and `"labels"`, the classes over their thresholds.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn as nn

from visionzoo.data.decode import ImageDecodeError, decode_image
from visionzoo.data.resize import check_resize_mode
from visionzoo.data.samples import expand_image_paths
from visionzoo.data.transforms import eval_transform
from visionzoo.errors import SettingError
from visionzoo.evaluation import tta_logits
from visionzoo.factory import channels_last, class_names, data_config, transforms
from visionzoo.heads import error_record, result_record, task_of
from visionzoo.metrics.calibration import head_of
from visionzoo.resolve import resolve_model

__all__ = ["predict", "predict_images", "classify_images"]


@torch.inference_mode()
def predict_images(model: nn.Module, paths: Sequence[str], *, topk: int = 5, batch_size: int = 16,
                   labels: Sequence[str] | None = None, reject: bool = True,
                   resize_mode: str | None = None, tta: bool = False,
                   tta_scales: Sequence[float] = ()) -> list[dict[str, Any]]:
    """Results for `paths` in order; unreadable files give error records. `resize_mode` (crop, squash,
    letterbox) overrides the model's own (`visionzoo.data.resize`). `tta` averages the logits of each
    image and its mirror, `tta_scales` adds zoomed-in views (`evaluation.tta_logits`, as eval's)."""

    if topk < 1:
        raise SettingError(f"topk must be at least 1, got {topk}")
    transform = transforms(model) if resize_mode is None else eval_transform(
        {**data_config(model), "resize_mode": check_resize_mode(resize_mode)})
    labels = labels if labels is not None else class_names(model)
    channels_last(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    head = head_of(model)
    results: list[dict[str, Any] | None] = [None] * len(paths)
    batch, where = [], []

    def flush() -> None:
        if not batch:
            return
        logits = tta_logits(model, torch.stack(batch).to(device), flip=tta, scales=tta_scales).cpu().numpy()
        for row, index in zip(logits, where):
            results[index] = result_record(paths[index], row, labels, topk, head, reject=reject)
        batch.clear()
        where.clear()

    for index, path in enumerate(paths):
        try:
            image = decode_image(path)
        except ImageDecodeError as error:
            results[index] = error_record(path, error.reason)
            continue
        except OSError as error:
            results[index] = error_record(path, error.strerror or str(error))
            continue
        batch.append(transform(image))
        where.append(index)
        if len(batch) == batch_size:
            flush()
    flush()
    return [r for r in results if r is not None]


def predict(model: str | os.PathLike | nn.Module, images: Sequence[str | os.PathLike], *, topk: int = 5,
            pretrained: bool | str | None = None, batch_size: int = 16, reject: bool = True,
            resize_mode: str | None = None, tta: bool = False, tta_scales: Sequence[float] = ()) -> list[dict[str, Any]]:
    """Top-k predictions for image files, folders and globs (see the module docstring)."""
    paths = expand_image_paths(images)
    if not paths:
        raise SettingError("no images given")
    return predict_images(resolve_model(model, pretrained), paths, topk=topk, batch_size=batch_size,
                          reject=reject, resize_mode=resize_mode, tta=tta, tta_scales=tta_scales)


@torch.no_grad()
def classify_images(classifier: nn.Module, paths: Sequence[str], top_k: int = 3, batch_size: int = 32
                    ) -> list[dict]:
    """Top-k class names and probabilities for each image file: the softmax of the logits, or for a
    multi-label head (a SigLIP zero-shot classifier) each logit's sigmoid, independent of the others."""
    transform = eval_transform(data_config(classifier))
    independent = task_of(head_of(classifier)) == "multilabel"
    names = class_names(classifier) or [str(i) for i in range(classifier.num_classes)]
    device = next(channels_last(classifier).parameters()).device
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        images = torch.stack([transform(decode_image(path)) for path in chunk]).to(device)
        logits = classifier(images)
        probabilities = logits.sigmoid() if independent else logits.softmax(dim=-1)
        values, indices = probabilities.topk(min(top_k, len(names)), dim=-1)
        for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            results.append({"image": str(path),
                            "top": [{"label": names[i], "probability": v} for i, v in zip(row_indices, row_values)]})
    return results
