"""The engines: one way each to run the model (PyTorch eager and torch.compile, onnxruntime fp32 and
int8, OpenVINO fp32, bf16 and int8, LiteRT and ExecuTorch fp32 and int8 with XNNPACK), behind one
small interface, and `ENGINES`, the names `--engine` takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.engines.artifacts import Artifacts
from visionzoo.errors import SettingError

__all__ = ["Engine", "EagerEngine", "CompileEngine", "OnnxRuntimeEngine", "OnnxRuntimeInt8Engine", "OpenVinoEngine",
           "OpenVinoBf16Engine", "OpenVinoInt8Engine", "LiteRTEngine", "LiteRTInt8Engine", "ExecuTorchEngine",
           "ExecuTorchInt8Engine", "ENGINES", "engine_names", "create_engine", "available_engines"]


class Engine:
    """One way to run the model: `load()` once, then `run(batch) -> logits` (numpy in, numpy out).

    `name` is what `--engine` takes; `precision` is 'fp32', 'bf16' or 'int8'.
    """

    name: ClassVar[str] = ""
    precision: ClassVar[str] = "fp32"

    def __init__(self, artifacts: Artifacts | None = None, *, threads: int | None = None):
        self.artifacts = artifacts
        self.threads = threads

    def unavailable(self) -> str | None:
        """Why this engine cannot run here (None when it can)."""
        return None

    def load(self) -> None:
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def file(self) -> Path | None:
        """The deployable file this engine runs (None for the PyTorch engines)."""
        return None

    def __repr__(self) -> str:
        return f"<engine {self.name} ({self.precision})>"


class EagerEngine(Engine):
    name, precision = "eager", "fp32"

    def unavailable(self) -> str | None:
        return None if self.artifacts.model is not None else "needs the PyTorch model, not an exported file"

    def load(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.module = self._prepare(self.artifacts.model.eval())

    def _prepare(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return model

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()


class CompileEngine(EagerEngine):
    """torch.compile (inductor); the first batch of each shape compiles, so measurement warms it up."""

    name, precision = "compile", "fp32"

    def _prepare(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return torch.compile(model)


class OnnxRuntimeEngine(Engine):
    """onnxruntime's CPU provider with all graph optimisations and its default (spinning) thread pool."""

    name, precision = "onnxruntime-fp32", "fp32"

    def unavailable(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed: pip install 'visionzoo[export]'"
        if not self.artifacts.onnx_available():
            return "needs an ONNX file or the PyTorch model"
        return None

    def file(self) -> Path:
        return self.artifacts.onnx()

    def load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.file()), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


class OnnxRuntimeInt8Engine(OnnxRuntimeEngine):
    name, precision = "onnxruntime-int8", "int8"

    def file(self) -> Path:
        return self.artifacts.onnx_int8()


class OpenVinoEngine(Engine):
    """OpenVINO's CPU plugin, latency hint, the precision set explicitly (the plugin's default is bf16
    on a bf16 CPU); one compiled model per input shape, reshaped to it (static shapes run faster)."""

    name, precision = "openvino-fp32", "fp32"
    _runtime_precision = "fp32"

    def unavailable(self) -> str | None:
        from visionzoo.deploy.runtimes.openvino import INSTALL_HINT, bf16_supported

        try:
            import openvino  # noqa: F401
        except ImportError:
            return f"openvino is not installed: {INSTALL_HINT}"
        if self._runtime_precision == "bf16" and not bf16_supported():
            return "this CPU has no bf16 instructions (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16)"
        return None

    def file(self) -> Path:
        return self.artifacts.ir()

    def load(self) -> None:
        from visionzoo.deploy.runtimes.openvino import compile_config, openvino_core

        self.core = openvino_core()
        self.config = compile_config(self._runtime_precision, self.threads)
        self.model = self.core.read_model(str(self.file()))
        self.requests: dict[tuple[int, ...], Any] = {}

    def _request(self, shape: tuple[int, ...]):
        if shape not in self.requests:
            model = self.model.clone()
            model.reshape(list(shape))
            self.requests[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.requests[shape]

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.array(self._request(batch.shape).infer([batch])[0], dtype=np.float32, copy=True)


class OpenVinoBf16Engine(OpenVinoEngine):
    name, precision = "openvino-bf16", "bf16"
    _runtime_precision = "bf16"


class OpenVinoInt8Engine(OpenVinoEngine):
    """NNCF's int8 IR; what NNCF left in float runs in fp32."""

    name, precision = "openvino-int8", "int8"

    def unavailable(self) -> str | None:
        reason = super().unavailable()
        if reason is None:
            try:
                import nncf  # noqa: F401
            except ImportError:
                from visionzoo.deploy.runtimes.openvino import INSTALL_HINT

                return f"nncf is not installed: {INSTALL_HINT}"
        return reason

    def file(self) -> Path:
        return self.artifacts.ir_int8()


class LiteRTEngine(Engine):
    """LiteRT's interpreter (XNNPACK delegate, its CPU default) on the .tflite export, a fixed batch of one:
    the torch-free predictor a phone runs (`visionzoo.deploy.runtimes.litert`)."""

    name, precision = "litert-fp32", "fp32"
    format, runtime_module, export_module = "litert", "ai_edge_litert.interpreter", "litert_torch"

    def unavailable(self) -> str | None:
        import importlib.util

        needed = [self.runtime_module] + ([self.export_module] if self.artifacts.model is not None else [])
        for module in needed:
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:
                found = False
            if not found:
                return f"{module} is not installed: pip install 'visionzoo[{self.format}]'"
        if not self.artifacts.edge_available(self.format, self.precision):
            return f"needs the PyTorch model or a {self.precision} {self.format} file"
        return None

    def file(self) -> Path:
        return self.artifacts.edge(self.format, self.precision)

    def load(self) -> None:
        from visionzoo.deploy.runtimes import open_exported

        self.classifier = open_exported(self.file(), threads=self.threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.classifier.predict_logits(batch)


class LiteRTInt8Engine(LiteRTEngine):
    """Full-integer int8 (ai-edge-quantizer, calibrated), int8 input and output."""

    name, precision = "litert-int8", "int8"


class ExecuTorchEngine(LiteRTEngine):
    """ExecuTorch's runtime on the XNNPACK-lowered .pte program, a fixed batch of one."""

    name, precision = "executorch-fp32", "fp32"
    format, runtime_module, export_module = "executorch", "executorch.runtime", "executorch.exir"


class ExecuTorchInt8Engine(ExecuTorchEngine):
    """PT2E int8 with the XNNPACK quantizer, calibrated."""

    name, precision = "executorch-int8", "int8"


ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (
    EagerEngine, CompileEngine, OnnxRuntimeEngine, OnnxRuntimeInt8Engine, OpenVinoEngine, OpenVinoBf16Engine,
    OpenVinoInt8Engine, LiteRTEngine, LiteRTInt8Engine, ExecuTorchEngine, ExecuTorchInt8Engine)}


def engine_names() -> list[str]:
    return list(ENGINES)


def create_engine(name: str, artifacts: Artifacts, *, threads: int | None = None) -> Engine:
    if name not in ENGINES:
        import difflib

        close = difflib.get_close_matches(name, ENGINES, n=1)
        raise SettingError(f"unknown engine {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" (engines: {', '.join(ENGINES)}, or 'all' / 'auto')")
    return ENGINES[name](artifacts, threads=threads)


def available_engines(artifacts: Artifacts, *, threads: int | None = None, exclude: Sequence[str] = (),
                      names: Sequence[str] | None = None) -> tuple[list[Engine], dict[str, str]]:
    """The engines (`names`, default all) that can run here for `artifacts`, and for the others why not."""
    engines, skipped = [], {}
    for name in (ENGINES if names is None else names):
        if name in exclude:
            continue
        engine = create_engine(name, artifacts, threads=threads)
        reason = engine.unavailable()
        if reason:
            skipped[name] = reason
        else:
            engines.append(engine)
    return engines, skipped
