"""Classify images with an exported ExecuTorch program (.pte, XNNPACK-delegated), outside visionzoo's
PyTorch side.

The program is run by ExecuTorch's own runtime (`executorch.runtime`), the C++ interpreter a phone
app links. visionzoo's model code, factory and weights are never imported; ExecuTorch's Python
bindings, though, take and return `torch.Tensor`s and so import the `torch` package themselves
(on a device, the C++ runtime needs no Python at all). The preprocessing and class names are in
the program itself: `visionzoo export --format executorch` adds a constant method
`visionzoo_metadata` that returns the metadata JSON as bytes (the same keys as in an ONNX file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from visionzoo.deploy.runtimes.exported import ExportedClassifier
from visionzoo.errors import SettingError, require_extra

__all__ = ["ExecuTorchClassifier", "METADATA_METHOD", "INSTALL_HINT", "executorch_runtime"]

METADATA_METHOD = "visionzoo_metadata"
INSTALL_HINT = "pip install 'visionzoo[executorch]'"


def executorch_runtime():
    """ExecuTorch's process-wide runtime; a one-line error naming the pip install when missing."""
    return require_extra("executorch.runtime", "executorch", "running a .pte program").Runtime.get()


class ExecuTorchClassifier(ExportedClassifier):
    """An exported visionzoo .pte program run by ExecuTorch's runtime (XNNPACK kernels on the CPU)."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ExecuTorch program {path} does not exist")
        runtime = executorch_runtime()
        try:
            program = runtime.load_program(str(path))
        except Exception as error:  # the bindings raise RuntimeError or their own types for bad files
            raise SettingError(f"{path} is not a loadable ExecuTorch program: {str(error).splitlines()[0]}") from None
        if METADATA_METHOD not in program.method_names:
            raise SettingError(f"{path} has no visionzoo metadata; export it with `visionzoo export --format executorch`")
        raw = program.load_method(METADATA_METHOD).execute([])[0]
        metadata: dict[str, str] = json.loads(bytes(raw.numpy().astype(np.uint8)).decode())
        self.read_metadata(path, metadata)
        self.precision = metadata.get("visionzoo.precision", "fp32")
        self.method = program.load_method("forward")
        self.max_batch = int(self.method.metadata.input_tensor_meta(0).sizes()[0])  # a fixed batch (1)
        self.threads = threads  # XNNPACK's thread pool is sized by ExecuTorch itself; kept for the interface

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch  # ExecuTorch's Python bindings exchange torch tensors (see the module docstring)

        rows = []
        for start in range(0, len(batch), self.max_batch):
            chunk = batch[start:start + self.max_batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.max_batch - len(chunk), axis=0)])
            output = self.method.execute([torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))])[0]
            rows.append(output.float().numpy()[:len(chunk)])
        return np.concatenate(rows)
