"""Validation during a run: `validate` (metrics of a model on the validation loader),
`validate_beside_ema` (the EMA and the raw weights, the better kept) and `epoch_report` (the epoch's
record, its line and the metrics CSV's columns)."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from visionzoo.data.datasets import Skipped
from visionzoo.data.loaders import Loaders
from visionzoo.evaluation import predict_logits
from visionzoo.metrics.classification import reports_top_k
from visionzoo.training.heads import validation_metrics
from visionzoo.training.settings import TrainSettings
from visionzoo.training.timing import MeasuringTimer

__all__ = ["validate", "validate_beside_ema", "epoch_report"]


def validate(model: nn.Module, loaders: Loaders, *, classes: list[str], task: str, settings: TrainSettings,
             device, autocast_dtype=None) -> tuple[dict[str, Any] | None, list[Skipped]]:
    """(metrics of `model` on the validation data with "_logits", "_labels" and "_indices", the files
    skipped); the metrics are None without validation data."""
    if loaders.val is None:
        return None, []
    if loaders.normalize is not None:
        model = nn.Sequential(loaders.normalize, model)
    logits, labels, indices, skipped = predict_logits(model, loaders.val, device=device, tta_flip=settings.tta_flip,
                                                      tta_shift=settings.tta_shift, autocast_dtype=autocast_dtype,
                                                      channels_last=settings.channels_last)
    if len(labels) == 0:
        return None, skipped
    metrics = validation_metrics(logits, labels, classes, task)
    metrics["_logits"], metrics["_labels"], metrics["_indices"] = logits, labels, indices
    return metrics, skipped


def validate_beside_ema(validate: Callable[[nn.Module], dict[str, Any] | None], model: nn.Module,
                        ema: nn.Module | None, key: str) -> tuple[dict[str, Any] | None, nn.Module]:
    """(metrics, the module they are of). With an EMA of the weights, both the EMA and the raw weights are
    validated and the better (on `key`; the EMA on a tie) is returned, its metrics saying which
    ("weights": "ema" or "raw") and what each scored ("ema_<key>", "raw_<key>"): early in a short
    fine-tune the average still lags behind the weights, later it is usually ahead."""
    if ema is None:
        return validate(model), model
    averaged = validate(ema)
    raw = validate(model)
    if averaged is None or raw is None:
        return averaged, ema
    chosen, module, which = (averaged, ema, "ema") if averaged[key] >= raw[key] else (raw, model, "raw")
    return {**chosen, "weights": which, f"ema_{key}": averaged[key], f"raw_{key}": raw[key]}, module


def epoch_report(record: dict[str, Any], metrics: dict[str, Any] | None, *, epochs: int, task: str,
                 num_classes: int, has_val: bool, improved: bool,
                 phases: dict[str, float], ema: bool = False) -> tuple[dict[str, Any], str, list[str]]:
    """`record` (epoch, step, train_loss, lr, img_per_s) with the validation's numbers added, the epoch's
    line, and the CSV's columns (the same every epoch: an unvalidated epoch leaves its val_ cells empty).
    With `ema`, the record also says which weights validated better and what each scored
    (`validate_beside_ema`)."""
    multilabel = task == "multilabel"
    key = "mAP" if multilabel else "top1"
    ema_columns = ["weights", f"val_{key.lower()}_ema", f"val_{key.lower()}_raw"] if ema and has_val else []
    if metrics is not None and "weights" in metrics:
        record.update({"weights": metrics["weights"], ema_columns[1]: round(metrics[f"ema_{key}"], 6),
                       ema_columns[2]: round(metrics[f"raw_{key}"], 6)})
    if metrics is not None:
        if multilabel:
            record.update(val_loss=round(metrics["loss"], 6), val_map=round(metrics["mAP"], 6),
                          val_micro_f1=round(metrics["micro_f1"], 6), val_macro_f1=round(metrics["macro_f1"], 6))
        else:
            record.update(val_loss=round(metrics["loss"], 6), val_top1=round(metrics["top1"], 6),
                          **({"val_top5": round(metrics["top5"], 6)} if "top5" in metrics else {}),
                          val_ece=round(metrics["ece"], 6))
    if metrics is None:
        shown = ""
    elif multilabel:
        shown = (f"val loss {record['val_loss']:.4f}  val mAP {record['val_map']:.2%}  "
                 f"micro F1 {record['val_micro_f1']:.2%}  ")
    else:
        shown = (f"val loss {record['val_loss']:.4f}  val top-1 {record['val_top1']:.2%}  "
                 + (f"top-5 {record['val_top5']:.2%}  " if "val_top5" in record else ""))
    line = (f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f}  " + shown
            + (f"({record['weights']} weights; EMA {record[ema_columns[1]]:.2%}, raw {record[ema_columns[2]]:.2%})  "
               if "weights" in record else "")
            + f"{record['img_per_s']:.0f} img/s" + ("  *best*" if improved else "") + "  " + MeasuringTimer.line(phases))
    columns = ["epoch", "step", "train_loss", "lr", "img_per_s"]
    if has_val:
        columns += (["val_loss", "val_map", "val_micro_f1", "val_macro_f1"] if multilabel else
                    ["val_loss", "val_top1", *(["val_top5"] if reports_top_k(num_classes) else []), "val_ece"])
    return record, line, columns + ema_columns
