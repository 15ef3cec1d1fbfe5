"""`visionzoo explain`: where a model looks, as class activation maps from `pytorch_grad_cam`.

    results = visionzoo.explain("runs/shapes/best", ["cat.jpg"], method="gradcam", out="explained")

The CAM itself is the grad-cam package's (Grad-CAM, Selvaraju et al., 2017; Grad-CAM++,
Chattopadhay et al., 2018; Eigen-CAM, Muhammad and Yeasin, 2020). What is ours is the choice,
per family, of the layer to explain and of how its output becomes a (N, C, h, w) map, so that
nobody has to name a layer or write a reshape function:

- convolutional networks: the last feature map before global pooling, already (N, C, h, w);
- ViT, DeiT, DINOv2, CLIP, EVA-02: the last block's first norm, (N, prefix + h*w, C): the prefix
  (class, distillation, register) tokens are dropped and the patch tokens laid out on their grid
  (the layer pytorch-grad-cam's own ViT tutorial uses: its output feeds the class token's attention,
  so gradients reach every patch token even when the head reads the class token only);
- Swin: the last stage's output, (N, h, w, C) channels-last, permuted.

The table is kept here, keyed by family, rather than on the model cards while the cards are being
reworked (issue 18); moving each entry to its family file is one line per family.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from visionzoo.errors import SettingError, require_extra

__all__ = ["CAM_TARGETS", "METHODS", "cam_maps", "explain", "explain_images", "overlay", "overlay_png", "target_layer"]

METHODS = ("gradcam", "gradcam++", "eigencam")


@dataclass(frozen=True)
class CamTarget:
    """Where to take the map in one family: a dotted module path (`-1` indexes a sequence) and its layout."""

    layer: str
    layout: str = "nchw"  # nchw | nhwc (channels-last maps) | tokens (prefix tokens then a patch grid)


CAM_TARGETS: dict[str, CamTarget] = {
    "alexnet": CamTarget("features.-2"),  # the last ReLU, before the final max-pool halves the map
    "vgg": CamTarget("features.-2"),  # likewise
    "resnet": CamTarget("layer4"),
    "densenet": CamTarget("features"),  # ends with the final norm and activation
    "googlenet": CamTarget("inception5b"),
    "inception_v3": CamTarget("Mixed_7c"),
    "mobilenetv3": CamTarget("blocks"),  # MobileNetV3's head convolution comes after the pooling
    "efficientnet": CamTarget("bn2"),  # conv_head -> bn2 (with its activation): the last map
    "efficientnet_lite": CamTarget("bn2"),
    "convnext": CamTarget("stages.-1"),
    "efficientvit_mit": CamTarget("stages.-1"),
    "efficientvit_msra": CamTarget("stages.-1"),
    "maxvit": CamTarget("stages.-1"),  # stages keep (N, C, H, W) between the window and grid attention
    "swin": CamTarget("layers.-1", "nhwc"),
    "vit": CamTarget("blocks.-1.norm1", "tokens"),
    "deit": CamTarget("blocks.-1.norm1", "tokens"),
    "dinov2": CamTarget("blocks.-1.norm1", "tokens"),
    "clip": CamTarget("blocks.-1.norm1", "tokens"),
    "eva02": CamTarget("blocks.-1.norm1", "tokens"),
}


def _family(model: nn.Module) -> str:
    from visionzoo.factory import registered_name

    name = registered_name(model)
    if not name:
        raise SettingError(f"explain needs a visionzoo model to know where to look; {type(model).__name__} is not "
                         "one (pass target_layer= and reshape= for a model of your own)")
    from visionzoo.registry import get_card

    return get_card(name).family


def _module_at(model: nn.Module, path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


def target_layer(model: nn.Module, image_size: tuple[int, int]) -> tuple[nn.Module, Callable | None]:
    """The module to explain and the reshape of its output to (N, C, h, w), from the family's entry."""
    family = _family(model)
    if family not in CAM_TARGETS:
        raise SettingError(f"no CAM target declared for the family {family!r}; add it to visionzoo.diagnose.explanation.CAM_TARGETS")
    entry = CAM_TARGETS[family]
    layer = _module_at(model, entry.layer)
    if entry.layout == "nhwc":
        return layer, lambda x: x.permute(0, 3, 1, 2)  # (N, h, w, C) -> (N, C, h, w)
    if entry.layout == "tokens":
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        height, width = image_size

        def tokens_to_map(x: torch.Tensor) -> torch.Tensor:
            patches = x[:, prefix:]  # (N, prefix + h*w, C) -> (N, h*w, C)
            rows = max(1, round(math.sqrt(patches.shape[1] * height / width)))
            cols = patches.shape[1] // rows
            return patches.reshape(x.shape[0], rows, cols, x.shape[-1]).permute(0, 3, 1, 2)  # -> (N, C, h, w)

        return layer, tokens_to_map
    return layer, None


def _cam_class(method: str):
    if method not in METHODS:
        raise SettingError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    grad_cam = require_extra("pytorch_grad_cam", "audit", "visionzoo explain")
    classes = {"gradcam": grad_cam.GradCAM, "gradcam++": grad_cam.GradCAMPlusPlus, "eigencam": grad_cam.EigenCAM}
    if method not in classes:
        raise SettingError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    return classes[method]


def cam_maps(model: nn.Module, batch: torch.Tensor, *, method: str = "gradcam", target_classes: Sequence[int] | None = None,
             target_layer_and_reshape: tuple[nn.Module, Callable | None] | None = None
             ) -> tuple[np.ndarray, torch.Tensor]:
    """(CAMs (N, H, W) in [0, 1] at the input's size, class probabilities (N, classes)) for a preprocessed batch.

    `target_classes` default: each image's predicted class.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_type = _cam_class(method)
    model = model.eval()
    with torch.no_grad():
        probabilities = model(batch).float().softmax(-1)
    classes = list(target_classes) if target_classes is not None else probabilities.argmax(-1).tolist()
    layer, reshape = target_layer_and_reshape or target_layer(model, tuple(batch.shape[-2:]))
    # grad-cam needs gradients w.r.t. the layer's output even when the weights are frozen
    with cam_type(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return np.nan_to_num(maps.astype(np.float32)), probabilities


# --- pictures ------------------------------------------------------------------------------


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """`image` (H, W, 3) in [0, 1] blended with the jet-coloured `cam` (H, W) in [0, 1]."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image + alpha * heat, 0, 1)


def overlay_png(image: np.ndarray, cam: np.ndarray, caption: str) -> bytes:
    """A PNG of three panels: the image, the heat map, and the overlay, titled `caption`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for axis, picture, title in zip(axes, (image, cam, overlay(image, cam)), ("image", "heat map", "overlay")):
        axis.imshow(picture, cmap="jet" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.suptitle(caption, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def heatmap_png(image: np.ndarray, cam: np.ndarray) -> bytes:
    """The overlay alone as a PNG at the model's input size (for the serving API)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((overlay(image, cam) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def unnormalise(batch: torch.Tensor, data_config: dict[str, Any]) -> np.ndarray:
    """(N, 3, H, W) normalised input back to (N, H, W, 3) pixels in [0, 1] for display."""
    mean = torch.tensor(data_config.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(data_config.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    return (batch.detach().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def serving_explainer(model: nn.Module, transform: Callable, data_config: dict[str, Any],
                      names: Sequence[str] | None) -> Callable[[Any], dict[str, Any]] | None:
    """For `visionzoo serve`'s /v1/explain: image -> {index, label, prob, png} of the top class, or
    None when the model's family declares no CAM target. Runs on a private copy of the model behind a
    lock, so grad-cam's hooks never see the batcher's forward passes."""
    import copy
    import threading

    try:
        _family(model)
        require_extra("pytorch_grad_cam", "audit", "visionzoo explain")
    except (SettingError, KeyError, ImportError):  # not a visionzoo family, or no grad-cam: /v1/explain says 501
        return None
    private, lock = None, threading.Lock()

    def explain_image(image) -> dict[str, Any]:
        nonlocal private
        with lock:
            if private is None:
                private = copy.deepcopy(model).eval()
            batch = transform(image).unsqueeze(0)
            maps, probabilities = cam_maps(private, batch)
        index = int(probabilities[0].argmax())
        label = names[index] if names and index < len(names) else str(index)
        return {"index": index, "label": label, "prob": float(probabilities[0, index]),
                "png": heatmap_png(unnormalise(batch, data_config)[0], maps[0])}

    return explain_image


# --- the entry point -----------------------------------------------------------------------


def _load(model: Any, pretrained: Any) -> nn.Module:
    from visionzoo.resolve import resolve_model

    return resolve_model(model, pretrained)  # a name, a saved model, a run folder (its best/) or a module


def _class_index(target: int | str | None, names: list[str] | None) -> int | None:
    if target is None:
        return None
    if isinstance(target, int) or str(target).lstrip("-").isdigit():
        return int(target)
    if names and target in names:
        return names.index(target)
    raise SettingError(f"unknown target class {target!r}; give an index or one of the model's classes "
                     f"({', '.join((names or [])[:10])}{', ...' if names and len(names) > 10 else ''})")


def explain(model: Any, images: Sequence[str | os.PathLike], *, method: str = "gradcam",
            target_class: int | str | None = None, out: str | os.PathLike | None = "explained",
            pretrained: Any = None) -> list[dict[str, Any]]:
    """Class activation maps of `images` (files, folders or globs) under `model` (a registered name,
    a saved model folder, a run folder, or a module). Writes OUT/<image>.<method>.png (image, heat
    map, overlay, with the class and its probability) unless `out` is None.

    Returns one record per image: {path, class, label, probability, predicted, png, cam (H, W)} or
    {path, error}.
    """
    from visionzoo.data.decode import ImageDecodeError, decode_image
    from visionzoo.data.samples import expand_image_paths
    from visionzoo.factory import class_names, data_config, transforms

    _cam_class(method)  # an unknown method or a missing package fails before any loading
    paths = expand_image_paths(images)
    if not paths:
        raise SettingError("no images given")
    net = _load(model, pretrained)
    transform, config, names = transforms(net), dict(data_config(net)), class_names(net)
    target = _class_index(target_class, names)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        try:
            image = decode_image(path)
        except (ImageDecodeError, OSError) as error:
            results.append({"path": path, "error": getattr(error, "reason", None) or str(error)})
            continue
        batch = transform(image).unsqueeze(0)
        maps, probabilities = cam_maps(net, batch, method=method,
                                       target_classes=None if target is None else [target])
        predicted = int(probabilities[0].argmax())
        shown = predicted if target is None else target
        label = names[shown] if names and shown < len(names) else str(shown)
        record = {"path": path, "class": shown, "label": label, "probability": float(probabilities[0, shown]),
                  "predicted": predicted, "method": method, "cam": maps[0]}
        if out_dir is not None:
            caption = (f"{Path(path).name}: {method} for {label} ({record['probability']:.1%})"
                       + ("" if shown == predicted else f"; predicted {names[predicted] if names else predicted}"))
            target_file = out_dir / f"{Path(path).stem}.{method}.png"
            target_file.write_bytes(overlay_png(unnormalise(batch, config)[0], maps[0], caption))
            record["png"] = str(target_file)
        results.append(record)
    return results


explain_images = explain
