"""What a model argument means, the same for every command, `predict` and `serve`.

    MODEL        a registered name (`resnet50`), a folder written by `save_model` (a run folder
                 means its `best/`), or, where the caller allows it, an exported `.onnx` file or
                 OpenVINO IR (`.xml`)
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
    if text.endswith((".onnx", ".xml")):
        if not allow_onnx:
            raise SettingError(f"{text} is an exported model (ONNX or OpenVINO IR); this command needs a registered model name "
                               "or a folder written by visionzoo.save_model")
        if weights is not None:
            raise SettingError(f"--pretrained does not apply to the exported model {text}; drop --pretrained")
        if not path.is_file():
            raise FileNotFoundError(f"no such {'ONNX' if text.endswith('.onnx') else 'OpenVINO IR'} file: {text}")
        from visionzoo.deploy.runtimes import open_exported

        return open_exported(text, runtime, threads=onnx_threads)
    if runtime is not None:
        raise SettingError(f"--runtime applies to exported files (.onnx, .xml), not to {text}")
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
