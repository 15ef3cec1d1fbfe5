"""Torch-free predictors: an exported file (ONNX, OpenVINO IR) run by its own runtime, with the
preprocessing, class names and head facts from the file's metadata.

    from visionzoo.deploy.runtimes import open_exported
    classifier = open_exported("model.onnx")                 # onnxruntime; .xml: OpenVINO
    classifier.predict_files(["cat.jpg"], topk=5)

Nothing here imports PyTorch, so an edge device runs it with `pip install 'visionzoo[edge]'`.
"""

from __future__ import annotations

from pathlib import Path

from visionzoo.deploy.runtimes.exported import ExportedClassifier, onnx_metadata, preprocess_image
from visionzoo.deploy.runtimes.onnx import OnnxClassifier
from visionzoo.errors import SettingError

__all__ = ["ExportedClassifier", "OnnxClassifier", "open_exported", "onnx_metadata", "preprocess_image",
           "RUNTIMES", "EXPORTED_SUFFIXES"]

RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")
EXPORTED_SUFFIXES = (".onnx", ".xml")


def open_exported(path: str | Path, runtime: str | None = None, *, threads: int | None = None) -> ExportedClassifier:
    """An exported file as a classifier, torch-free: an .onnx file by onnxruntime (default) or OpenVINO,
    an OpenVINO IR (.xml) by OpenVINO. `runtime`: 'onnxruntime', 'openvino' (fp32, or the precision
    the export recorded) or 'openvino-bf16'."""
    path = Path(path)
    if path.suffix not in EXPORTED_SUFFIXES:
        raise SettingError(f"{path} is not an exported model (.onnx or OpenVINO .xml)")
    if runtime is not None and runtime not in RUNTIMES:
        raise SettingError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    runtime = runtime or ("openvino" if path.suffix == ".xml" else "onnxruntime")
    if runtime == "onnxruntime":
        if path.suffix == ".xml":
            raise SettingError(f"{path} is an OpenVINO IR; onnxruntime runs .onnx files (use --runtime openvino)")
        return OnnxClassifier(path, threads=threads)
    from visionzoo.deploy.runtimes.openvino import OpenVinoClassifier

    return OpenVinoClassifier(path, precision="bf16" if runtime == "openvino-bf16" else None, threads=threads)
