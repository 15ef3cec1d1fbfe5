"""Evaluation: top-1, top-5, balanced accuracy, per-class precision / recall / F1, calibration (ECE),
confusion matrix and per-class recall plot (classes ordered by their training images when known).

    import visionzoo.evaluation as ev
    result = ev.evaluate("runs/resnet18-shapes/best", "builtin:shapes")
    result["top1"], result["per_class"]["circle"]["f1"], result["ece"]

`evaluate` accepts a model folder (a run's best/ or last/, or any `save_model` folder), a run
folder (its best/ is used), a registered model name (with `pretrained=`), or a model object.
Data is resolved like training data; a tree without val/ or test/ counts wholly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from visionzoo.data.datasets import ImageDataset, collate_skipping, crop_shifted
from visionzoo.data.resize import check_resize_mode
from visionzoo.data.sources import resolve_data
from visionzoo.data.transforms import eval_transform
from visionzoo.errors import DataError, SettingError
from visionzoo.factory import channels_last, find_spec
from visionzoo.factory import data_config as model_data_config
from visionzoo.metrics.calibration import head_of
from visionzoo.metrics.classification import classification_metrics, plot_confusion_matrix, plot_per_class_recall
from visionzoo.resolve import resolve_model
from visionzoo.runtime import tune_allocator

__all__ = ["predict_logits", "tta_logits", "evaluate"]


def tta_logits(model: nn.Module, images: torch.Tensor, *, flip: bool = False, shift: int = 0,
               scales: Sequence[float] = ()) -> torch.Tensor:
    """`model`'s logits for a batch, averaged over test-time views: the image and, with `flip`, its
    mirror. Each of `scales` (above 1) adds, with equal weight, the same views zoomed in by that factor
    (resized, then centre-cropped back to the input's size, so fixed-size models take them). With
    `shift`, half the weight goes to the same views moved by `shift` pixels towards the top left and
    towards the bottom right (reflect-padded), the weighting airbench evaluates with."""
    def over_flips(x: torch.Tensor) -> torch.Tensor:
        logits = model(x).float()
        return (logits + model(x.flip(-1)).float()) / 2 if flip else logits

    def over_scales(x: torch.Tensor) -> torch.Tensor:
        logits = over_flips(x)
        for scale in scales:
            logits = logits + over_flips(zoomed(x, scale))
        return logits / (1 + len(scales))

    def zoomed(x: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 1:
            raise SettingError(f"a test-time scale zooms in, so it must be above 1, got {scale}")
        height, width = x.shape[-2:]
        big = torch.nn.functional.interpolate(x, size=(round(height * scale), round(width * scale)),
                                              mode="bilinear", align_corners=False, antialias=False)
        top, left = (big.shape[-2] - height) // 2, (big.shape[-1] - width) // 2
        return big[..., top:top + height, left:left + width]

    over_flips_and_scales = over_scales if scales else over_flips
    logits = over_flips_and_scales(images)
    if shift:
        top_left = crop_shifted(images, 0, 0, False, shift)
        bottom_right = crop_shifted(images, 2 * shift, 2 * shift, False, shift)
        logits = (logits + (over_flips_and_scales(top_left) + over_flips_and_scales(bottom_right)) / 2) / 2
    return logits


@torch.no_grad()
def predict_logits(model: nn.Module, loader, *, device: torch.device | str = "cpu", tta_flip: bool = False,
                   tta_shift: int = 0, autocast_dtype: torch.dtype | None = None, channels_last: bool = False):
    """Run `model` over a loader of `collate_skipping` batches; returns logits, labels, dataset indices, skipped.
    `tta_flip` and `tta_shift` choose the test-time views (see `tta_logits`)."""
    model.eval()
    device = torch.device(device)
    all_logits, all_labels, all_indices, skipped = [], [], [], []
    for images, labels, indices, bad in loader:
        skipped.extend(bad)
        if len(labels) == 0:
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = tta_logits(model, images, flip=tta_flip, shift=tta_shift)
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
        all_indices.append(indices)
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_indices), skipped


def evaluate(model_or_path: nn.Module | str | Path, data: str | Path, *, pretrained: bool | str | None = None,
             batch_size: int = 128, workers: int = 0, device: str | None = None, image_size: int | None = None,
             tta_flip: bool = False, tta_shift: int = 0, out: str | Path | None = None,
             ood: str | Path | None = None, max_unpack_gb: float | None = None, resize_mode: str | None = None,
             train_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Evaluate a model on a dataset; with `out`, also writes metrics.json, confusion_matrix.png and
    per_class_recall.png there (classes ordered by `train_counts`, training images per class; by
    default those a run folder's config.json recorded). `resize_mode` (crop, squash, letterbox)
    overrides the model's own (`visionzoo.data.resize`).
    `tta_flip` / `tta_shift` average the logits over mirrored / shifted views (see `tta_logits`).

    Multi-label models and data (see `visionzoo.metrics.multilabel`) give mAP, per-class AP / F1 at the saved
    thresholds, micro / macro F1 and exact match instead of top-k, and per_class_ap.png. Every result has
    `calibration` (ECE and NLL before and after the saved temperature; reliability.png). `ood`, a folder
    of images of none of the classes, adds `ood`: AUROC and FPR at 95% TPR of the OOD scores."""
    tune_allocator()
    import json

    model = resolve_model(model_or_path, pretrained, default_pretrained=False)
    made = find_spec(model)
    model_classes = list(made.class_names) if made and made.class_names else None
    data_config = model_data_config(model)
    if resize_mode is not None:
        data_config = {**data_config, "resize_mode": check_resize_mode(resize_mode)}
    head = head_of(model) or {}
    splits = resolve_data(data, split="eval", task="multilabel" if head.get("task") == "multilabel" else None,
                          max_unpack_gb=max_unpack_gb)
    if head.get("task", splits.task) != splits.task:
        raise DataError(f"the model is {head.get('task')} but {splits.description} is {splits.task} data")
    if model_classes:
        missing = [c for c in splits.classes if c not in model_classes]
        if missing:
            raise SettingError(f"the data has classes the model does not know: {missing[:5]}; "
                             f"the model's classes are {model_classes[:10]}...")
        remap = torch.tensor([model_classes.index(c) for c in splits.classes])
        class_names = list(model_classes)
    else:
        if getattr(model, "num_classes", len(splits.classes)) != len(splits.classes):
            raise SettingError(f"the model has {model.num_classes} outputs but the data has {len(splits.classes)} "
                             "classes, and the model carries no class names to match them by")
        remap, class_names = None, splits.classes
    dataset = ImageDataset(splits.val, eval_transform(data_config, image_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_skipping)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    channels_last(model.to(device))  # the layout train's validation ran it in: one number
    logits, labels, _, skipped = predict_logits(model, loader, device=device, tta_flip=tta_flip, tta_shift=tta_shift)
    task = splits.task
    if remap is not None and task == "multilabel":  # the data's columns moved to the model's class order
        moved = torch.zeros(len(labels), len(class_names), dtype=labels.dtype)
        moved[:, remap] = labels
        labels = moved
    elif remap is not None:
        labels = remap[labels]
    from visionzoo.metrics.calibration import calibration_report, plot_reliability

    temperature = float(head.get("temperature") or 1.0)
    if task == "multilabel":
        from visionzoo.heads import probabilities
        from visionzoo.metrics.multilabel import multilabel_metrics, plot_per_class_ap

        result = multilabel_metrics(probabilities(logits.numpy(), {**head, "task": task}), labels.numpy(), head.get("thresholds"),
                                    class_names)
    else:
        result = classification_metrics(logits, labels, class_names)
    result["task"] = task
    result["calibration"] = calibration_report(logits, labels, temperature, task)
    if ood is not None:
        result["ood"] = _ood_report(model, ood, logits, head, data_config, image_size, batch_size, workers, device,
                                    tta_flip, tta_shift)
    result["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    result["data"] = splits.description
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        if task == "multilabel":
            plot_per_class_ap(result["per_class"], out / "per_class_ap.png", f"mAP {result['mAP']:.2%}")
            result["per_class_ap_png"] = str(out / "per_class_ap.png")
        else:
            plot_confusion_matrix(result["confusion_matrix"], class_names, out / "confusion_matrix.png",
                                  f"top-1 {result['top1']:.2%}")
            result["confusion_matrix_png"] = str(out / "confusion_matrix.png")
            counts = train_counts if train_counts is not None else _recorded_train_counts(model_or_path)
            plot_per_class_recall(result["per_class"], out / "per_class_recall.png", counts,
                                  f"balanced accuracy {result['balanced_accuracy']:.2%}")
            result["per_class_recall_png"] = str(out / "per_class_recall.png")
        plot_reliability(logits, labels, temperature, out / "reliability.png", task=task)
        result["reliability_png"] = str(out / "reliability.png")
    return result


def _recorded_train_counts(model_or_path: Any) -> dict[str, int] | None:
    """The training images per class a run's config.json recorded: for a run folder, or its best/ or last/."""
    import json

    if not isinstance(model_or_path, (str, Path)) or not Path(model_or_path).is_dir():
        return None
    for folder in (Path(model_or_path), Path(model_or_path).parent):
        try:
            counts = json.loads((folder / "config.json").read_text()).get("train_class_counts")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(counts, dict):
            return counts
    return None


def _ood_report(model, folder, in_logits, head, data_config, image_size, batch_size, workers, device,
                tta_flip, tta_shift) -> dict[str, Any]:
    """AUROC and FPR@95%TPR of the in-distribution evaluation images against the images in `folder`."""

    from visionzoo.data.datasets import ImageDataset, collate_skipping
    from visionzoo.data.samples import FileSamples, expand_image_paths
    from visionzoo.data.transforms import eval_transform
    from visionzoo.heads import ood_score, task_of
    from visionzoo.metrics.calibration import DEFAULT_OOD_SCORE, summarise_ood

    if task_of(head) == "multilabel":
        raise SettingError("--ood applies to single-label models (a multi-label model answers 'no label' when no "
                         "class passes its threshold)")
    if not Path(folder).is_dir():
        raise DataError(f"--ood {folder} is not a folder of images")
    paths = expand_image_paths([folder])
    if not paths:
        raise DataError(f"--ood {folder} holds no images (.jpg, .png, ...)")
    dataset = ImageDataset(FileSamples(paths, np.zeros(len(paths), dtype=np.int64)), eval_transform(data_config, image_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_skipping)
    out_logits, _, _, skipped = predict_logits(model, loader, device=device, tta_flip=tta_flip, tta_shift=tta_shift)
    if len(out_logits) == 0:
        raise DataError(f"none of the {len(paths)} images in {folder} could be read")
    temperature = float(head.get("temperature") or 1.0)
    rule = head.get("ood") or {}
    chosen = rule.get("score", DEFAULT_OOD_SCORE)
    scores = summarise_ood(in_logits, out_logits, temperature)
    report = {"score": chosen, "images": len(out_logits), "skipped": len(skipped), **scores[chosen], "scores": scores}
    if rule:
        threshold = float(rule["threshold"])
        report["threshold"] = threshold
        report["rejected"] = float((ood_score(out_logits.numpy(), chosen, temperature) < threshold).mean())
        report["rejected_in_distribution"] = float((ood_score(in_logits.numpy(), chosen, temperature) < threshold).mean())
    return report
