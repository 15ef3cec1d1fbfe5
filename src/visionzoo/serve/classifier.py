"""The model side of the server: a model with its preprocessing, split so that decoding runs per request
while the model runs per batch, and the card `/v1/model` shows (without the server's file paths)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["Classifier", "load_classifier", "public_card", "served_folder"]


class Classifier:
    """A model with its preprocessing: `prepare(image) -> array`, `__call__(batch) -> probabilities`.

    Built by `load_classifier` from a registered name, a saved model or an ONNX file; the two
    halves are split so decoding runs per request while the model runs per batch. With
    `returns_logits`, `run` gives raw logits and `head` (see `visionzoo.heads`) says what they mean.
    """

    def __init__(self, name: str, prepare: Callable[[Any], np.ndarray], run: Callable[[np.ndarray], np.ndarray],
                 class_names: list[str] | None, card: dict[str, Any], *, head: dict[str, Any] | None = None,
                 returns_logits: bool = False):
        self.name = name
        self.prepare = prepare
        self.run = run
        self.class_names = class_names
        self.card = card
        self.explainer: Callable[[Any], dict[str, Any]] | None = None  # image -> heat map (PyTorch models only)
        self.head = head
        self.returns_logits = returns_logits

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) the model sees, from the card's preprocessing; None when the card does not say."""
        size = (self.card.get("preprocessing") or {}).get("input_size")
        return (int(size[-2]), int(size[-1])) if size and len(size) >= 2 else None

    def answer(self, name: str, output: np.ndarray, topk: int, reject: bool = True) -> dict[str, Any]:
        """`{"predictions": [...]}` for one image's model output, plus `"labels"` / `"unknown"` by the head."""
        if self.returns_logits:
            from visionzoo.heads import result_record

            record = result_record(name, output, self.class_names, topk, self.head, reject=reject)
            record.pop("path")
            return record
        order = np.argsort(-output)[:topk]
        return {"predictions": [{"index": int(i), "label": self.label(int(i)), "prob": float(output[i])} for i in order]}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)

    def label(self, index: int) -> str:
        if self.class_names and index < len(self.class_names):
            return self.class_names[index]
        return str(index)

# The folders of an absolute path (/srv/models/, C:\\models\\, ~/models/) where a path starts a string or a
# word; a class name such as 'T-shirt/top' starts no path and is kept whole.
_ABSOLUTE_FOLDERS = re.compile(r"""(?<![^\s'"(=])(?:[A-Za-z]:|~)?[\\/](?:[^\\/\s'"]*[\\/])+(?=[^\\/\s'"])""")


def public_card(card: Any) -> Any:
    """`card` with every file path cut to its last part: a client learns which file, not where the server keeps it."""
    if isinstance(card, dict):
        return {key: public_card(value) for key, value in card.items()}
    if isinstance(card, (list, tuple)):
        return [public_card(value) for value in card]
    if isinstance(card, str):
        return _ABSOLUTE_FOLDERS.sub("", card)
    return card



def load_classifier(spec, pretrained: bool | str | None = None, threads: int | None = None,
                    runtime: str | None = None, resize_mode: str | None = None) -> Classifier:
    """A Classifier from a registered model name (with `pretrained` weights, default: the default weights),
    a saved model folder, an nn.Module, or an exported .onnx or OpenVINO .xml file (see `visionzoo.resolve`;
    an exported file runs without PyTorch, by `runtime`: onnxruntime, openvino or openvino-bf16, by default
    the file's own: onnxruntime for .onnx, OpenVINO for .xml). `resize_mode` (crop, squash, letterbox)
    overrides the one the model or the file's metadata records (`visionzoo.data.resize`)."""
    from visionzoo.deploy.runtimes import EXPORTED_SUFFIXES, ExportedClassifier, OnnxClassifier, preprocess_image
    from visionzoo.resolve import resolve_model

    if threads and not (isinstance(spec, str) and spec.endswith(EXPORTED_SUFFIXES)):
        import torch

        torch.set_num_threads(threads)
    model = resolve_model(spec, pretrained, allow_onnx=True, onnx_threads=threads, runtime=runtime)
    if resize_mode is not None:
        from visionzoo.data.resize import check_resize_mode

        check_resize_mode(resize_mode)
    if isinstance(model, ExportedClassifier):
        exported = model
        if resize_mode is not None:
            exported.preprocessing = {**exported.preprocessing, "resize_mode": resize_mode}
        format = {".onnx": "onnx", ".tflite": "litert", ".pte": "executorch"}.get(Path(str(spec)).suffix, "openvino")
        engine = format if format in ("litert", "executorch") else "openvino"
        card = {"architecture": exported.name, "weights": str(spec), "format": format,
                "runtime": "onnxruntime" if isinstance(exported, OnnxClassifier)
                else f"{engine}-{getattr(exported, 'precision', 'fp32')}",
                "preprocessing": exported.preprocessing, "num_classes": len(exported.class_names or []),
                "classes": exported.class_names, "head": exported.head}
        return Classifier(exported.name, lambda image: preprocess_image(image, exported.preprocessing),
                          exported.predict_logits, exported.class_names, card, head=exported.head,
                          returns_logits=True)
    if resize_mode is not None:
        from visionzoo.factory import data_config, with_spec

        model = with_spec(model, data_config={**data_config(model), "resize_mode": resize_mode})
    return _torch_classifier(model, served_folder(spec))


def served_folder(spec: Any) -> str | None:
    """The name of the model folder `spec` serves ('ants/best' for a run or its best/, 'mymodel' for a
    save_model folder), or None when `spec` is no folder. A trained model's weights are that folder's,
    not the base weights its config records as where training started."""
    if not isinstance(spec, (str, os.PathLike)) or not Path(spec).is_dir():
        return None
    folder = Path(spec).resolve()
    if (folder / "best" / "config.json").exists():  # a run folder serves its best/ (`resolve_model`)
        folder = folder / "best"
    return f"{folder.parent.name}/{folder.name}" if folder.name in ("best", "last") else folder.name


def _torch_classifier(model, folder: str | None = None) -> Classifier:
    import torch

    from visionzoo.diagnose.explanation import serving_explainer
    from visionzoo.factory import channels_last, data_config, find_spec, model_name, transforms
    from visionzoo.factory import class_names as model_class_names
    from visionzoo.metrics.calibration import head_of

    channels_last(model)  # the layout of evaluate and predict: one number
    transform = transforms(model, train=False)
    names = model_class_names(model)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config(model).items()}
    made = find_spec(model)
    base_weights = made.weights if made else None
    card = {"architecture": model_name(model), "weights": folder or base_weights,
            **({"base_weights": base_weights} if folder and base_weights else {}),
            "format": "pytorch", "preprocessing": config, "num_classes": getattr(model, "num_classes", None),
            "classes": list(names) if names else None, "head": head_of(model)}

    def prepare(image) -> np.ndarray:
        return transform(image).numpy()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch))
        return logits.float().numpy()

    classifier = Classifier(card["architecture"], prepare, run, card["classes"], card, head=card["head"],
                            returns_logits=True)
    classifier.explainer = serving_explainer(model, transform, config, names)  # for POST /v1/explain
    return classifier
