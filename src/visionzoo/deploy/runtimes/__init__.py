"""Torch-free predictors: an exported file (ONNX, OpenVINO IR, LiteRT .tflite, ExecuTorch .pte) run by
its own runtime, with the
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

RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16", "litert", "executorch")
EXPORTED_SUFFIXES = (".onnx", ".xml", ".tflite", ".pte")
# Files that one runtime only runs: LiteRT's flatbuffers and ExecuTorch's programs
_OWN_RUNTIME = {".tflite": "litert", ".pte": "executorch"}


def open_exported(path: str | Path, runtime: str | None = None, *, threads: int | None = None) -> ExportedClassifier:
    """An exported file as a classifier, torch-free: an .onnx file by onnxruntime (default) or OpenVINO,
    an OpenVINO IR (.xml) by OpenVINO, a .tflite file by LiteRT, a .pte program by ExecuTorch.
    `runtime`: 'onnxruntime', 'openvino' (fp32, or the precision the export recorded), 'openvino-bf16',
    'litert' or 'executorch' (the last two only for their own files)."""
    path = Path(path)
    if path.suffix not in EXPORTED_SUFFIXES:
        raise SettingError(f"{path} is not an exported model (.onnx, OpenVINO .xml, LiteRT .tflite or ExecuTorch .pte)")
    if runtime is not None and runtime not in RUNTIMES:
        raise SettingError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    own = _OWN_RUNTIME.get(path.suffix)
    if own is not None or runtime in _OWN_RUNTIME.values():
        if runtime not in (None, own):
            raise SettingError(f"{path} runs only with --runtime {own}" if own else
                               f"--runtime {runtime} runs {'.tflite' if runtime == 'litert' else '.pte'} files, not {path}")
        if own == "litert":
            from visionzoo.deploy.runtimes.litert import LiteRTClassifier

            return LiteRTClassifier(path, threads=threads)
        from visionzoo.deploy.runtimes.executorch import ExecuTorchClassifier

        return ExecuTorchClassifier(path, threads=threads)
    runtime = runtime or ("openvino" if path.suffix == ".xml" else "onnxruntime")
    if runtime == "onnxruntime":
        if path.suffix == ".xml":
            raise SettingError(f"{path} is an OpenVINO IR; onnxruntime runs .onnx files (use --runtime openvino)")
        return OnnxClassifier(path, threads=threads)
    from visionzoo.deploy.runtimes.openvino import OpenVinoClassifier

    return OpenVinoClassifier(path, precision="bf16" if runtime == "openvino-bf16" else None, threads=threads)
