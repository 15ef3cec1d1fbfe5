"""What a model argument means, the same for every command, `predict` and `serve`.

    MODEL        a registered name (`resnet50`), a folder written by `save_model` (a run folder
                 means its `best/`), `hf-hub:ORG/REPO` (a model pushed by `visionzoo push`), or, where
                 the caller allows it, an exported `.onnx` file or OpenVINO IR (`.xml`)
    --pretrained none | default | ARCH.TAG | PATH (a weight file) | hf-hub:ORG/REPO

Import-light on purpose: `parse_pretrained` and the ONNX path never import torch, so the
CLI parses arguments and runs an exported model without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from visionzoo.errors import SettingError

__all__ = ["PRETRAINED_HELP", "parse_pretrained", "resolve_model"]

PRETRAINED_HELP = "weights: none (random), default, ARCH.TAG, a weight file or hf-hub:ORG/REPO"
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def parse_pretrained(text: str | bool | None) -> bool | str | None:
    """`--pretrained` as `create_model` takes it: None when not given (the caller's default),
    False for 'none', True for 'default', else the weight name, path or hf-hub id unchanged."""
    if text is None or isinstance(text, bool):
        return text
    if not text.strip():
        raise SettingError("--pretrained is empty; give none, default, ARCH.TAG or a weight file")
    lowered = text.strip().lower()
    if lowered == "none":
        return False
    if lowered == "default":
        return True
    return text


def resolve_model(spec: Any, pretrained: str | bool | None = None, *, default_pretrained: bool = True,
                  allow_onnx: bool = False, onnx_threads: int | None = None, runtime: str | None = None,
                  **overrides: Any):
    """The model `spec` names, in eval mode.

    `spec` is a module (returned as is), a saved-model folder (its own weights: `pretrained` must
    not be given), a run folder (its best/), an `.onnx` or OpenVINO `.xml` file when `allow_onnx` (an
    `ExportedClassifier`, without importing torch, run on `onnx_threads` by `runtime`: onnxruntime,
    openvino or openvino-bf16; default: onnxruntime for .onnx, OpenVINO for .xml), or a registered name built with `pretrained`
    (text as the CLI takes it, or a value for `create_model`; when None, `default_pretrained`
    decides) and the builder `overrides`.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return spec.eval()  # already a model
    weights = parse_pretrained(pretrained)
    text = os.fspath(spec)
    path = Path(text)
    if text.endswith((".onnx", ".xml", ".tflite", ".pte")):
        if not allow_onnx:
            raise SettingError(f"{text} is an exported model (ONNX, OpenVINO IR, LiteRT or ExecuTorch); this command needs a registered model name "
                               "or a folder written by visionzoo.save_model")
        if weights is not None:
            raise SettingError(f"--pretrained does not apply to the exported model {text}; drop --pretrained")
        if not path.is_file():
            raise FileNotFoundError(f"no such exported model file: {text}")
        from visionzoo.deploy.runtimes import open_exported

        return open_exported(text, runtime, threads=onnx_threads)
    if runtime is not None:
        raise SettingError(f"--runtime applies to exported files (.onnx, .xml, .tflite, .pte), not to {text}")
    if text.startswith("hf-hub:"):
        if weights is not None:
            raise SettingError(f"{text} is a pushed model that carries its own weights; drop --pretrained")
        import visionzoo

        return visionzoo.load_model(text).eval()
    if isinstance(weights, str) and weights.startswith("hf-hub:") and not overrides:
        pushed = _pushed_model(text, weights)
        if pushed is not None:
            return pushed
    if path.is_dir():
        if weights is not None:
            raise SettingError(f"{text} is a saved model that carries its own weights; drop --pretrained")
        if (path / "best" / "config.json").exists():
            path = path / "best"  # a training run folder: its best model
        import visionzoo

        return visionzoo.load_model(path).eval()
    if path.exists() or path.suffix in _WEIGHT_FILE_SUFFIXES:
        raise SettingError(f"MODEL {text!r} is a file; pass a model name with --pretrained {text}, "
                           "or a folder written by visionzoo.save_model")
    import visionzoo

    chosen = default_pretrained if weights is None else weights
    return visionzoo.create_model(text, pretrained=chosen, **overrides).eval()


def _pushed_model(name: str, spec: str):
    """The model `visionzoo push` put at `spec` (`hf-hub:org/repo`), rebuilt exactly (its head, classes,
    calibration) when it is a `name`; None when the repo holds other weights (a timm layout)."""
    from visionzoo.weights import SAVED_MODEL_FORMAT, hub_config

    config = hub_config(spec) or {}
    if config.get("format") != SAVED_MODEL_FORMAT:
        return None
    if config.get("architecture") != name:
        raise SettingError(f"{spec} holds a {config.get('architecture')}, not a {name}; pass {spec} as the model "
                           "itself, or name its architecture")
    import visionzoo

    return visionzoo.load_model(spec).eval()
