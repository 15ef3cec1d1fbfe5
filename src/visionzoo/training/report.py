"""PNG plots of a run: loss and accuracy curves, the validation confusion matrix, the worst mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionzoo.data import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.metrics.classification import plot_confusion_matrix

__all__ = ["write_plots"]


def write_plots(run_dir: Path, history: list[dict[str, Any]], val_metrics: dict[str, Any] | None,
                classes: list[str], val_set, data_config: dict[str, Any], worst: int = 16, model=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if history:
        epochs = [record["epoch"] for record in history]
        figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
        loss_axis.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
        validated = [r for r in history if "val_loss" in r]  # --val-every N leaves epochs without validation
        if validated:
            val_epochs = [r["epoch"] for r in validated]
            loss_axis.plot(val_epochs, [r["val_loss"] for r in validated], marker="o", label="validation")
            accuracy_axis.plot(val_epochs, [100 * r["val_top1"] for r in validated], marker="o", label="top-1")
            if all("val_top5" in r for r in validated):  # only recorded with more than 5 classes
                accuracy_axis.plot(val_epochs, [100 * r["val_top5"] for r in validated], marker="o", label="top-5")
            accuracy_axis.legend()
        loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
        accuracy_axis.set(xlabel="epoch", ylabel="%", title="validation accuracy")
        loss_axis.legend()
        figure.tight_layout()
        figure.savefig(run_dir / "curves.png", dpi=100)
        plt.close(figure)
    if val_metrics is None:
        return
    plot_confusion_matrix(val_metrics["confusion_matrix"], classes, run_dir / "confusion_matrix.png",
                          f"validation, top-1 {val_metrics['top1']:.2%}")
    logits, labels, indices = val_metrics["_logits"], val_metrics["_labels"], val_metrics["_indices"]
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    wrong = (logits.argmax(1) != labels).nonzero().flatten()
    if len(wrong) == 0 or val_set is None:
        return
    order = wrong[losses[wrong].argsort(descending=True)][:worst]
    mean = torch.tensor(data_config.get("mean", IMAGENET_MEAN)).view(3, 1, 1)
    std = torch.tensor(data_config.get("std", IMAGENET_STD)).view(3, 1, 1)
    probabilities = logits.softmax(1)
    tiles, captions = [], []
    for position in order.tolist():
        item = val_set[int(indices[position])]
        if not isinstance(item, tuple):
            continue
        pixels = item[0]
        pixels = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels * std + mean
        tiles.append(pixels.clamp(0, 1).permute(1, 2, 0).numpy())
        predicted = int(logits[position].argmax())
        captions.append(f"true {classes[labels[position]]}\npredicted {classes[predicted]} "
                        f"({probabilities[position, predicted]:.0%})")
    if not tiles:
        return
    tiles = _with_heat_maps(model, tiles, mean, std)
    # One image axis holding a mosaic, captions as text: a fraction of the time of one axis per image.
    columns = min(4, len(tiles))
    rows = -(-len(tiles) // columns)
    height, width = tiles[0].shape[:2]
    gap, caption = max(2, width // 8), max(8, height * 2 // 5)  # pixels between tiles, above each for its caption
    cell_h, cell_w = height + caption + gap, width + gap
    mosaic = np.ones((rows * cell_h, columns * cell_w - gap, 3))
    figure, axis = plt.subplots(figsize=(3 * columns, 3.3 * rows + 0.4))
    for i, (tile, text) in enumerate(zip(tiles, captions)):
        top, left = (i // columns) * cell_h + caption, (i % columns) * cell_w
        mosaic[top:top + tile.shape[0], left:left + tile.shape[1]] = tile[:height, :width]
        axis.text(left + width / 2, top - 0.5, text, ha="center", va="bottom", fontsize=8)
    axis.imshow(mosaic, interpolation="nearest")
    axis.axis("off")
    axis.set_title("validation images with the highest loss")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / (3.3 * rows + 0.4))
    figure.savefig(run_dir / "worst_mistakes.png", dpi=100)
    plt.close(figure)


def _with_heat_maps(model, tiles: list[np.ndarray], mean: torch.Tensor, std: torch.Tensor) -> list[np.ndarray]:
    """The tiles overlaid with the Grad-CAM of their predicted class (visionzoo.diagnose.explanation), when the
    model's family declares where to look; the plain tiles otherwise (one batch: cheap)."""
    if model is None:
        return tiles
    try:
        from visionzoo.diagnose.explanation import overlay

        batch = (torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() - mean) / std
        maps = _cams_of_any_recipe(model, batch.to(next(model.parameters()).device))
    except (ImportError, ValueError, KeyError, RuntimeError):  # no grad-cam, a model of one's own, odd shapes
        return tiles
    return [overlay(tile, cam, alpha=0.35) for tile, cam in zip(tiles, maps)]


def _cams_of_any_recipe(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    """Grad-CAM needs the gradient of the class score at the layer it reads. A run that froze what lies
    below that layer (a linear probe, --adapt freeze, LoRA) leaves no parameter there asking for one, so
    the input asks instead: the graph then reaches the layer whatever is frozen, and no parameter's
    `requires_grad` changes. The model's mode and its parameters' gradients are as they were after."""
    from visionzoo.diagnose.explanation import cam_maps

    gradients = [(parameter, parameter.grad) for parameter in model.parameters()]
    training = model.training
    try:
        with torch.enable_grad():
            maps, _ = cam_maps(model.eval(), batch.detach().requires_grad_(True))
    finally:
        for parameter, gradient in gradients:
            parameter.grad = gradient
        model.train(training)
    return maps
