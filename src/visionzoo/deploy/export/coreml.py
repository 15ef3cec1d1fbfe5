"""Export to Core ML: an `.mlpackage` (ML program) for iOS and macOS, that Xcode's preview classifies
a photo with directly.

The model is captured with torch.export and converted by `coremltools` with an image input (RGB,
the model's input size) and a classifier output (`classLabel`, `classLabel_probs`) over the class
names. Core ML's image input scales pixels by one number for all channels, so the per-channel
normalisation is put into the graph instead: the image is scaled to [0, 1] by Core ML, then
`(x - mean) / std` and, at the end, a softmax, so the probabilities Xcode shows are the model's.
Resizing and centre-cropping to the input size are the app's (Vision's `VNCoreMLRequest` with
`imageCropAndScaleOption = .centerCrop`). Weights are fp16 by default; `precision='int8'` quantises
them to int8 (linear, symmetric, per channel); activations stay fp16. The visionzoo metadata
(the ONNX file's keys) is in the package's user-defined metadata.

Core ML runs only on Apple systems: coremltools cannot execute a model on Linux. There the
export is checked by structure (`coreml_structure`: inputs, outputs, labels, the program's
operations); on macOS `coreml_probabilities` runs it.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.export.onnx import ExportResult, model_class_names, model_preprocessing
from visionzoo.errors import SettingError, require_extra

__all__ = ["export_coreml", "coreml_structure", "coreml_probabilities", "coreml_runs_here", "PRECISIONS",
           "NOT_RUN_REASON"]

PRECISIONS = ("fp16", "int8")
NOT_RUN_REASON = "Core ML runs only on macOS/iOS; on this system the export was checked by structure, not run"


class _Deployed(nn.Module):
    """Pixels in [0, 1] -> normalised -> the model -> softmax probabilities."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std).softmax(dim=-1)


def coreml_runs_here() -> bool:
    return platform.system() == "Darwin"


def _spelled_out() -> dict:
    """A decomposition table for the ATen ops that coremltools has no converter for, in ops it has: addcmul
    (ConvNeXt-V2's GRN), and alias, what a slice of a whole dimension exports as (Swin's and EfficientViT's
    crops of their windows back to the map when nothing was padded), as a view of the same shape."""
    from torch._decomp import get_decompositions

    table = get_decompositions([torch.ops.aten.addcmul])
    table[torch.ops.aten.alias.default] = lambda x: x.view(x.shape)
    return table


def _coremltools():
    # coremltools logs a warning per missing macOS-only library and untested torch version on import:
    # true on Linux, and said once, plainly, by NOT_RUN_REASON
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return require_extra("coremltools", "coreml", "Core ML export")


def export_coreml(model: nn.Module, path: str | Path, metadata: dict[str, str], *, img_size: int | None = None,
                  precision: str = "fp16") -> ExportResult:
    """Write `model` as an .mlpackage (ML program, iOS 16+) with an image input and class labels."""
    ct = _coremltools()
    if precision not in PRECISIONS:
        raise SettingError(f"Core ML precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise SettingError(f"a Core ML model is a NAME.mlpackage folder, got {path}")
    preprocessing = model_preprocessing(model, img_size)
    channels, height, width = preprocessing["input_size"]
    if channels != 3:
        raise SettingError(f"Core ML's image input is RGB; {metadata.get('visionzoo.model')} takes {channels} channels")
    names = model_class_names(model) or [str(i) for i in range(int(getattr(model, "num_classes", 0)))]
    wrapped = _Deployed(model.eval(), preprocessing["mean"], preprocessing["std"]).eval()
    example = torch.rand(1, 3, height, width)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # ops coremltools has no converter for, written out in ones it has
        program = torch.export.export(wrapped, (example,)).run_decompositions(_spelled_out())
        converted = ct.convert(program, inputs=[ct.ImageType(name="image", shape=(1, 3, height, width),
                                                             scale=1 / 255.0, color_layout=ct.colorlayout.RGB)],
                               classifier_config=ct.ClassifierConfig(class_labels=names), convert_to="mlprogram",
                               compute_precision=ct.precision.FLOAT16,
                               minimum_deployment_target=ct.target.iOS16)
        if precision == "int8":
            config = ct.optimize.coreml.OptimizationConfig(
                global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric"))
            converted = ct.optimize.coreml.linear_quantize_weights(converted, config)
    converted.short_description = f"{metadata.get('visionzoo.model', 'model')}: image classifier ({len(names)} classes)"
    for key, value in {**metadata, "visionzoo.precision": precision}.items():
        converted.user_defined_metadata[key] = value
    tmp = path.with_name(path.stem + ".tmp.mlpackage")  # coremltools insists on the suffix
    shutil.rmtree(tmp, ignore_errors=True)
    converted.save(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return ExportResult(path=path, format="coreml")


def coreml_structure(path: str | Path) -> dict[str, Any]:
    """What an .mlpackage declares, read from its spec (works on any system): inputs, outputs,
    class labels, the ML program's operations, and the visionzoo metadata."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))
    description = spec.description
    inputs = []
    for feature in description.input:
        kind = feature.type.WhichOneof("Type")
        entry = {"name": feature.name, "type": kind}
        if kind == "imageType":
            image = feature.type.imageType
            entry.update(width=image.width, height=image.height,
                         color_space=ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace))
        inputs.append(entry)
    operations: set[str] = set()
    labels: list[str] = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for operation in block.operations:
                operations.add(operation.type)
                if operation.type == "classify":  # the labels are the classify op's `classes` constant
                    values = operation.inputs["classes"].arguments[0].value.immediateValue.list.values
                    labels = [value.immediateValue.tensor.strings.values[0] for value in values]
    return {"type": spec.WhichOneof("Type"), "inputs": inputs,
            "outputs": [feature.name for feature in description.output],
            "predicted_feature": description.predictedFeatureName, "labels": labels,
            "operations": sorted(operations), "metadata": dict(description.metadata.userDefined)}


def coreml_probabilities(path: str | Path, arrays: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """Class probabilities (N, classes) from the .mlpackage for preprocessed arrays (N, C, H, W): macOS only.
    The arrays are turned back into the RGB images Core ML takes (undoing the normalisation)."""
    if not coreml_runs_here():
        raise SettingError(NOT_RUN_REASON)
    ct = _coremltools()
    from PIL import Image

    model = ct.models.MLModel(str(path))
    labels = json.loads(model.user_defined_metadata.get("visionzoo.class_names", "null"))
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(preprocessing["std"], dtype=np.float32)[:, None, None]
    rows = []
    for array in arrays:
        pixels = np.clip(np.round((array * std + mean) * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        probabilities = model.predict({"image": Image.fromarray(pixels)})["classLabel_probs"]
        keys = labels or sorted(probabilities, key=int)
        rows.append([probabilities[key] for key in keys])
    return np.asarray(rows, dtype=np.float32)
