"""Model soups (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time"): `soup(runs, method="greedy")`.

Runs fine-tuned from the same pretrained weights (a tuner's trials, or runs with other seeds or
settings) lie in one basin of the loss, so the average of their weights is itself a good model,
often better than each. The *uniform* soup averages every ingredient; the *greedy* soup sorts them
by validation score and adds each in turn only when the average with it validates no worse, so it
is never worse on validation than its best ingredient.

Every ingredient is scored on the same validation images (the first run's validation split, or
`data`'s), at the models' evaluation view. The soup is written as a run folder that every command
loads: `best/` (the averaged model, with its head facts, temperature and unknown threshold, fitted
again on the soup's own validation logits), `config.json` (what went in) and `summary.json`.
Refused, with the reason: models of other architectures, classes, shapes or starting weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from visionzoo.data.datasets import ImageDataset, collate_skipping
from visionzoo.data.sources import resolve_data
from visionzoo.data.transforms import eval_transform
from visionzoo.errors import SettingError
from visionzoo.evaluation import predict_logits
from visionzoo.factory import data_config as model_data_config
from visionzoo.factory import find_spec, load_model, save_model
from visionzoo.metrics.calibration import head_of, with_head
from visionzoo.training.heads import fit_run_head, validation_metrics
from visionzoo.training.run_folder import check_out_folder
from visionzoo.training.settings import TrainSettings

__all__ = ["SOUP_METHODS", "SoupResult", "soup", "average_weights", "greedy_soup"]

SOUP_METHODS = ("greedy", "uniform")


@dataclass
class SoupResult:
    run_dir: Path
    method: str
    metric: str  # val_top1, or val_map for multi-label models
    score: float  # the soup's validation score
    ingredients: dict[str, float] = field(default_factory=dict)  # each run's validation score
    chosen: list[str] = field(default_factory=list)  # the runs averaged, in the order added


@dataclass
class _Ingredient:
    source: str  # the folder given
    model_dir: Path  # its saved model (a run's best/)
    run_config: dict[str, Any] | None  # the run's config.json, when it is a run folder
    model: nn.Module


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of floating-point tensors (BatchNorm's running statistics too, as the paper's soups);
    integer buffers (BatchNorm's step count) are the first state's."""
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            averaged[key] = torch.stack([state[key].float() for state in states]).mean(0).to(first.dtype)
        else:
            averaged[key] = first.clone()
    return averaged


def greedy_soup(names: list[str], scores: dict[str, float], score_of) -> tuple[list[str], float]:
    """Wortsman et al.'s greedy soup: `names` sorted by `scores`, best first; each is kept when the soup
    with it scores no lower (`score_of(chosen names) -> score`). Returns (chosen, their soup's score)."""
    ranked = sorted(names, key=lambda name: -scores[name])
    chosen, best = [ranked[0]], scores[ranked[0]]
    for name in ranked[1:]:
        score = score_of(chosen + [name])
        if score >= best:
            chosen, best = chosen + [name], score
    return chosen, best


def soup(runs: list[str | Path], data: Any = None, *, method: str = "greedy", out: str | Path | None = None,
         overwrite: bool = False, device: str | None = None, batch_size: int = 64) -> SoupResult:
    """Average the weights of runs fine-tuned from the same weights, judged on validation.

    Args:
        runs: run folders (their best/) or saved-model folders, at least two.
        data: the data whose validation images judge the soup (default: the first run's, with its
            validation split).
        method: greedy (default; never worse on validation than the best run) or uniform.
        out: the soup's run folder (default: runs/soup-<method>-<first run's name>); refused when it
            is not empty, unless `overwrite`.
    """
    if method not in SOUP_METHODS:
        raise SettingError(f"unknown soup method {method!r}; choose one of {', '.join(SOUP_METHODS)}")
    if len(runs) < 2:
        raise SettingError(f"a soup needs at least two runs, got {len(runs)}")
    ingredients = [_ingredient(run) for run in runs]
    _check_compatible(ingredients)
    first = ingredients[0]
    out = Path(out) if out is not None else Path("runs") / f"soup-{method}-{Path(first.source).name}"
    check_out_folder(out, overwrite)
    settings = _run_settings(first)
    task = (head_of(first.model) or {}).get("task", "multiclass")
    if not find_spec(first.model).class_names:
        raise SettingError(f"{first.source} carries no class names, so its outputs cannot be matched to the data's "
                           "classes; soup the run folders that visionzoo train wrote")
    classes = list(find_spec(first.model).class_names)
    loader = _validation_loader(first, data, task, classes, batch_size)
    run_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    metric = "mAP" if task == "multilabel" else "top1"
    states = {item.source: {k: v.detach().clone() for k, v in item.model.state_dict().items()} for item in ingredients}
    model = first.model.to(run_device)

    def validate(names: list[str]) -> dict[str, Any]:
        model.load_state_dict(average_weights([states[name] for name in names]))
        logits, labels, _, _ = predict_logits(model, loader, device=run_device)
        metrics = validation_metrics(logits, labels, classes, task)
        metrics["_logits"], metrics["_labels"] = logits, labels
        return metrics

    scores = {name: float(validate([name])[metric]) for name in states}
    if method == "greedy":
        chosen, _ = greedy_soup(list(states), scores, lambda names: float(validate(names)[metric]))
    else:
        chosen = list(states)
    final = validate(chosen)  # leaves the soup's weights in `model`
    with_head(model, fit_run_head(final, task, settings))
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "best", classes=classes, preprocessing=model_data_config(model))
    key = "val_map" if task == "multilabel" else "val_top1"
    result = SoupResult(out, method, key, float(final[metric]), scores, chosen)
    _write_run_files(result, first, data)
    return result


def _ingredient(run: str | Path) -> _Ingredient:
    path = Path(run)
    if not path.is_dir():
        raise FileNotFoundError(f"no such run or model folder: {path}")
    run_config = None
    model_dir = path
    if (path / "best" / "config.json").exists():
        model_dir = path / "best"
        if (path / "config.json").exists():
            run_config = json.loads((path / "config.json").read_text())
    elif not (path / "config.json").exists():
        raise SettingError(f"{path} is neither a run folder (with best/) nor a saved model (with config.json)")
    return _Ingredient(str(run), model_dir, run_config, load_model(model_dir))


def _describe(item: _Ingredient) -> str:
    spec = find_spec(item.model)
    classes = len(spec.class_names) if spec and spec.class_names else "?"
    return f"{item.source} ({spec.name if spec else type(item.model).__name__}, {classes} classes)"


def _check_compatible(ingredients: list[_Ingredient]) -> None:
    """Refuse models that cannot be averaged: another architecture, classes, tensor shapes, or runs
    started from other weights (their average is not in one basin: Wortsman et al., section 4)."""
    first = ingredients[0]
    spec = find_spec(first.model)
    shapes = {k: tuple(v.shape) for k, v in first.model.state_dict().items()}
    for item in ingredients[1:]:
        other = find_spec(item.model)
        why = None
        if spec is None or other is None or spec.name != other.name:
            why = "they are different architectures"
        elif spec.class_names != other.class_names:
            why = "their classes differ"
        elif {k: tuple(v.shape) for k, v in item.model.state_dict().items()} != shapes:
            why = "their weights have different names or shapes (other sizes or adapters)"
        elif first.run_config and item.run_config and \
                first.run_config.get("pretrained") != item.run_config.get("pretrained"):
            why = (f"they were fine-tuned from different weights ({first.run_config.get('pretrained')!r} and "
                   f"{item.run_config.get('pretrained')!r}); soups average runs from the same start")
        if why:
            raise SettingError(f"cannot soup {_describe(first)} with {_describe(item)}: {why}")


def _run_settings(item: _Ingredient) -> TrainSettings:
    """The first run's head settings (calibration, unknowns), refitted on the soup; defaults for a bare model."""
    if item.run_config and "resolved" in item.run_config:
        known = {f for f in TrainSettings.__dataclass_fields__}
        return TrainSettings(**{k: v for k, v in item.run_config["resolved"].items() if k in known and k != "sources"})
    return TrainSettings()


def _validation_loader(first: _Ingredient, data: Any, task: str, classes: list[str], batch_size: int):
    config = first.run_config or {}
    if data is None:
        if not config.get("data") or config.get("data_in_memory"):
            raise SettingError(f"{first.source} does not name data a soup can be judged on; pass the data (--data)")
        requested = config.get("requested", {})
        splits = resolve_data(config["data"], val_fraction=requested.get("val_fraction", 0.1),
                              seed=requested.get("seed", 0), task=task)
    else:
        splits = resolve_data(data, split="eval", task=task)
    if splits.val is None or len(splits.val) == 0:
        raise SettingError(f"{splits.description} has no validation images to judge the soup on")
    if list(splits.classes) != classes:
        raise SettingError(f"the data's classes {splits.classes[:5]} are not the models' {classes[:5]}; judge the "
                           "soup on the data the runs were trained on")
    data_config = model_data_config(first.model)
    dataset = ImageDataset(splits.val, eval_transform(data_config, int(data_config["input_size"][-1])))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skipping)


def _write_run_files(result: SoupResult, first: _Ingredient, data: Any) -> None:
    config = first.run_config or {}
    soup_config = {
        "soup": {"method": result.method, "ingredients": list(result.ingredients), "chosen": result.chosen,
                 "paper": "Wortsman et al. 2022, Model soups"},
        "model": config.get("model") or find_spec(first.model).name,
        "data": str(data) if data is not None else config.get("data"),
        "pretrained": config.get("pretrained"),
        "classes": list(find_spec(first.model).class_names),
    }
    (result.run_dir / "config.json").write_text(json.dumps(soup_config, indent=2, default=str))
    best_single = max(result.ingredients.values())
    summary = {f"best_{result.metric}": result.score, "best_metric": result.metric,
               "soup": {"method": result.method, "chosen": result.chosen, "ingredients": result.ingredients,
                        "best_ingredient": best_single, "gain": result.score - best_single}}
    (result.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
