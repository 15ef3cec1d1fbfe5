"""`visionzoo explain`: where a model looks, as class activation maps from `pytorch_grad_cam`.

    results = visionzoo.explain("runs/shapes/best", ["cat.jpg"], method="gradcam", out="explained")

The CAM itself is the grad-cam package's (Grad-CAM, Selvaraju et al., 2017; Grad-CAM++,
Chattopadhay et al., 2018; Eigen-CAM, Muhammad and Yeasin, 2020). The layer to explain, and how
its output becomes a (N, C, h, w) map, are facts of each family, registered in its model file
(`visionzoo.registry.CamLayer`, read through `family_facts`), so nobody has to name a layer or
write a reshape function:

- convolutional networks: the last feature map before global pooling, already (N, C, h, w);
- ViT, DeiT, DINOv2, CLIP, EVA-02: the last block's first norm, (N, prefix + h*w, C), whose prefix
  tokens are dropped and patch tokens laid out on their grid;
- Swin: the last stage's output, (N, h, w, C) channels-last, permuted.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from visionzoo import heads
from visionzoo.data import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.errors import SettingError, require_extra
from visionzoo.factory import channels_last
from visionzoo.registry import family_facts, get_card

__all__ = ["METHODS", "cam_maps", "explain", "explain_images", "head_probabilities", "overlay", "overlay_png",
           "target_layer"]

METHODS = ("gradcam", "gradcam++", "eigencam")


def _family(model: nn.Module) -> str:
    from visionzoo.factory import registered_name

    name = registered_name(model)
    if not name:
        raise SettingError(f"explain needs a visionzoo model to know where to look; {type(model).__name__} is not "
                         "one (pass target_layer= and reshape= for a model of your own)")
    return get_card(name).family


def _module_at(model: nn.Module, path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


def target_layer(model: nn.Module, image_size: tuple[int, int]) -> tuple[nn.Module, Callable | None]:
    """The module to explain and the reshape of its output to (N, C, h, w), from the family's `CamLayer`."""
    family = _family(model)
    cam_layer = family_facts(family).cam_layer
    if cam_layer is None:
        raise SettingError(f"the family {family!r} registers no CAM layer; give its register_family call "
                           "cam_layer=CamLayer(...) in its model file")
    layer = _module_at(model, cam_layer.module)
    if cam_layer.to_map is None:
        return layer, None
    to_map = cam_layer.to_map
    return layer, lambda output: to_map(output, model, image_size)


def _cam_class(method: str):
    if method not in METHODS:
        raise SettingError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    grad_cam = require_extra("pytorch_grad_cam", "audit", "visionzoo explain")
    classes = {"gradcam": grad_cam.GradCAM, "gradcam++": grad_cam.GradCAMPlusPlus, "eigencam": grad_cam.EigenCAM}
    if method not in classes:
        raise SettingError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    return classes[method]


def head_probabilities(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities of (N, C) logits through the model's saved head (its temperature; sigmoid for
    multi-label), as `predict` and the serve page compute them: `visionzoo.heads.probabilities`."""
    from visionzoo.factory import find_spec

    spec = find_spec(model)
    head = dict(spec.head) if spec is not None and spec.head else None
    return torch.from_numpy(heads.probabilities(logits.detach().float().cpu().numpy(), head))


def cam_maps(model: nn.Module, batch: torch.Tensor, *, method: str = "gradcam", target_classes: Sequence[int] | None = None,
             target_layer_and_reshape: tuple[nn.Module, Callable | None] | None = None
             ) -> tuple[np.ndarray, torch.Tensor]:
    """(CAMs (N, H, W) in [0, 1] at the input's size, class probabilities (N, classes) through the saved
    head, `head_probabilities`) for a preprocessed batch.

    `target_classes` default: each image's predicted class.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_type = _cam_class(method)
    model = channels_last(model.eval())
    with torch.no_grad():
        probabilities = head_probabilities(model, model(batch))
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
    mean = torch.tensor(data_config.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(data_config.get("std", IMAGENET_STD)).view(1, 3, 1, 1)
    return (batch.detach().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def serving_explainer(model: nn.Module, transform: Callable, data_config: dict[str, Any],
                      names: Sequence[str] | None) -> Callable[[Any], dict[str, Any]] | None:
    """For `visionzoo serve`'s /v1/explain: image -> {index, label, prob, png} of the top class, or
    None when the model's family declares no CAM target. Runs on a private copy of the model behind a
    lock, so grad-cam's hooks never see the batcher's forward passes."""
    import copy
    import threading

    try:
        cam_layer = family_facts(_family(model)).cam_layer
        require_extra("pytorch_grad_cam", "audit", "visionzoo explain")
    except (SettingError, KeyError, ImportError):  # not a visionzoo family, or no grad-cam: /v1/explain says 501
        return None
    if cam_layer is None:
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


def _class_index(target: int | str | None, names: list[str] | None) -> int | None:
    if target is None:
        return None
    if isinstance(target, int) or str(target).lstrip("-").isdigit():
        return int(target)
    if names and target in names:
        return names.index(target)
    raise SettingError(f"unknown target class {target!r}; give an index or one of the model's classes "
                     f"({', '.join((names or [])[:10])}{', ...' if names and len(names) > 10 else ''})")


def _output_names(paths: Sequence[str]) -> dict[str, Path]:
    """Each image's name for its overlay: its path relative to the images' common folder, without the
    suffix, so that d1/cat.png and d2/cat.png give d1/cat and d2/cat rather than one file written twice.
    Images whose names would still meet (cat.png and cat.jpg) keep their suffix."""
    absolute = {path: os.path.abspath(path) for path in paths}
    try:
        root = os.path.commonpath([os.path.dirname(a) for a in absolute.values()]) if absolute else ""
    except ValueError:  # on different drives: only the file names can be kept
        root = None
    relative = {path: Path(os.path.relpath(a, root)) if root is not None else Path(Path(a).name)
                for path, a in absolute.items()}
    stems = [r.with_suffix("") for r in relative.values()]
    return {path: r.with_suffix("") if stems.count(r.with_suffix("")) == 1 else r for path, r in relative.items()}


def explain(model: Any, images: Sequence[str | os.PathLike], *, method: str = "gradcam",
            target_class: int | str | None = None, out: str | os.PathLike | None = "explained",
            pretrained: Any = None) -> list[dict[str, Any]]:
    """Class activation maps of `images` (files, folders or globs) under `model` (a registered name,
    a saved model folder, a run folder, or a module). Writes OUT/<image>.<method>.png (image, heat
    map, overlay, with the class and its probability) unless `out` is None, where <image> keeps the
    image's path below the images' common folder (`_output_names`).

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
    from visionzoo.resolve import resolve_model

    net = resolve_model(model, pretrained)  # a name, a saved model, a run folder (its best/) or a module
    transform, config, names = transforms(net), dict(data_config(net)), class_names(net)
    target = _class_index(target_class, names)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    png_names = _output_names(paths)
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
            target_file = out_dir / png_names[path].parent / f"{png_names[path].name}.{method}.png"
            target_file.parent.mkdir(parents=True, exist_ok=True)
            target_file.write_bytes(overlay_png(unnormalise(batch, config)[0], maps[0], caption))
            record["png"] = str(target_file)
        results.append(record)
    return results


explain_images = explain
