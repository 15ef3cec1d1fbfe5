"""Export to ONNX (and TorchScript) with the preprocessing and class names embedded, and verify.

The ONNX file carries everything a deployment needs to classify a photo without visionzoo's
PyTorch side: metadata `visionzoo.preprocessing` (input size, crop fraction, interpolation,
mean, std), `visionzoo.class_names` and `visionzoo.model`, read back by `visionzoo.deploy.runtimes`;
for a model trained by visionzoo also `visionzoo.head` (task, temperature, multi-label thresholds,
OOD rule; see `visionzoo.heads`), which the predictor applies to the graph's raw logits.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.factory import class_names, data_config, model_name
from visionzoo.weights import imagenet_class_names

__all__ = ["ExportResult", "export_onnx", "export_torchscript", "verify_onnx", "verify_torchscript",
           "model_preprocessing", "model_class_names", "verification_inputs", "check_against_model", "TOLERANCE"]

TOLERANCE = 1e-4  # max |difference| allowed, relative to max |reference|, in fp32
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = 18


@dataclass
class ExportResult:
    path: Path
    format: str
    verified: bool = False
    max_relative_difference: float | None = None  # worst over every verification run
    checks: list[dict[str, Any]] | None = None


def model_preprocessing(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """The eval preprocessing of `model` as plain data (what the ONNX metadata carries)."""
    config = dict(data_config(model))
    if img_size is not None:
        config["input_size"] = [config["input_size"][0], img_size, img_size]
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in config.items()}


def model_class_names(model: nn.Module) -> list[str] | None:
    names = class_names(model)
    if names is None and getattr(model, "num_classes", 0) == 1000:
        names = list(imagenet_class_names())
    return names


def _head(model: nn.Module) -> dict[str, Any] | None:
    from visionzoo.metrics.calibration import head_of

    return head_of(model)


def _example_input(model: nn.Module, img_size: int | None, batch: int = 1) -> torch.Tensor:
    channels, height, width = model_preprocessing(model, img_size)["input_size"]
    return torch.randn(batch, channels, height, width)


def export_onnx(model: nn.Module, path: str | Path, *, img_size: int | None = None, dynamic_batch: bool = True,
                opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> ExportResult:
    """Write `model` (in eval mode) to an ONNX file with its preprocessing and class names as metadata.

    `exporter='torchscript'` uses PyTorch's tracing exporter (fast; the default);
    `exporter='dynamo'` the torch.export-based one, for models tracing cannot handle.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = _example_input(model, img_size)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' deprecation chatter is not for our users
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None)
        elif exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: batch},) if dynamic_batch else None)
            program.save(str(tmp))
        else:
            raise SettingError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    onnx_model = onnx.load(str(tmp))
    metadata = {
        "visionzoo.model": model_name(model),
        "visionzoo.preprocessing": json.dumps(model_preprocessing(model, img_size)),
    }
    class_names = model_class_names(model)
    if class_names is not None:
        metadata["visionzoo.class_names"] = json.dumps(class_names)
    head = _head(model)
    if head:
        metadata["visionzoo.head"] = json.dumps(head)
    for key, value in metadata.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(onnx_model, str(tmp))
    tmp.replace(path)
    return ExportResult(path=path, format="onnx")


def export_torchscript(model: nn.Module, path: str | Path, *, img_size: int | None = None) -> ExportResult:
    """Trace `model` to TorchScript, with the same metadata stored as extra files in the archive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example_input(model, img_size), check_trace=False)
    extra = {"visionzoo.json": json.dumps({
        "model": model_name(model),
        "preprocessing": model_preprocessing(model, img_size),
        "class_names": model_class_names(model),
        "head": _head(model),
    })}
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(traced, str(tmp), _extra_files=extra)
    tmp.replace(path)
    return ExportResult(path=path, format="torchscript")


def _relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def verification_inputs(model: nn.Module, img_size: int | None, real_images: list[torch.Tensor] | None,
                        batch_sizes: tuple[int, ...]) -> list[tuple[str, torch.Tensor]]:
    """(label, input) pairs an export is checked on: random inputs and, given, real images, per batch size."""
    inputs = []
    generator = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        template = _example_input(model, img_size, batch)
        inputs.append((f"random x{batch}", torch.randn(template.shape, generator=generator)))
        if real_images:
            chosen = [real_images[i % len(real_images)] for i in range(batch)]
            inputs.append((f"real x{batch}", torch.stack(chosen)))
    return inputs


def check_against_model(result: ExportResult, model: nn.Module, run, inputs: list[tuple[str, torch.Tensor]], *,
                        tolerance: float | None = None) -> ExportResult:
    """Run `run` (the exported file) and `model` on each input; raise when they differ by more than
    `tolerance` (default `TOLERANCE`) relative to the model's largest output, else mark `result` verified."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    checks, worst = [], 0.0
    for label, x in inputs:
        with torch.no_grad():
            expected = model(x).float().numpy()
        actual = run(x)
        difference = _relative_difference(actual, expected)
        checks.append({"input": label, "max_relative_difference": difference})
        worst = max(worst, difference)
    result.checks, result.max_relative_difference = checks, worst
    result.verified = worst <= tolerance
    if not result.verified:
        raise RuntimeError(f"exported {result.format} model {result.path} does not match PyTorch: max |difference| = "
                           f"{worst:.2e} x max |reference| (allowed {tolerance:g}); details: {checks}")
    return result


def verify_onnx(result: ExportResult, model: nn.Module, *, img_size: int | None = None,
                real_images: list[torch.Tensor] | None = None, batch_sizes: tuple[int, ...] = (1, 3)) -> ExportResult:
    """Run the ONNX file with onnxruntime on random and real inputs at two batch sizes; compare with eager."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {INPUT_NAME: x.numpy()})[0]

    return check_against_model(result, model.eval(), run, verification_inputs(model, img_size, real_images, batch_sizes))


def verify_torchscript(result: ExportResult, model: nn.Module, *, img_size: int | None = None,
                       real_images: list[torch.Tensor] | None = None,
                       batch_sizes: tuple[int, ...] = (1, 3)) -> ExportResult:
    scripted = torch.jit.load(str(result.path))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return scripted(x).float().numpy()

    return check_against_model(result, model.eval(), run, verification_inputs(model, img_size, real_images, batch_sizes))
