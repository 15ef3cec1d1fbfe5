"""Prediction results, the same for every back end (PyTorch, ONNX, the server); no PyTorch here.

Each result is `{"path", "predictions": [{"index", "label", "prob"}]}`, or `{"path", "error"}` for
a file that cannot be read; trained heads add `"unknown"` or `"labels"` (see `visionzoo.outputs`). This module imports only numpy, so the torch-free ONNX predictor uses it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visionzoo.data.decode import is_image_file

__all__ = ["expand_image_paths", "prediction_record", "error_record", "format_table"]


def expand_image_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, folders as their image files (recursively, sorted), shell globs expanded.

    A path that does not exist and matches no glob is kept, so it is reported as an error
    in the results instead of silently skipped.
    """
    paths: list[str] = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            paths += sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and is_image_file(p.name))
        elif os.path.exists(item):
            paths.append(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            paths += [m for m in matches if os.path.isfile(m)] or [item]
        else:
            paths.append(item)
    return paths


def prediction_record(path: str, probs: Any, labels: Sequence[str] | None, topk: int = 5) -> dict[str, Any]:
    """One image's result from its class probabilities (1-D array or tensor), with the top `topk` classes."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1)
    order = np.argsort(-probs, kind="stable")[: min(topk, probs.size)]
    predictions = []
    for index in order.tolist():
        label = labels[index] if labels is not None and index < len(labels) else str(index)
        predictions.append({"index": int(index), "label": label, "prob": float(probs[index])})
    return {"path": str(path), "predictions": predictions}


def error_record(path: str, error: str) -> dict[str, Any]:
    return {"path": str(path), "error": error}


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Plain-text table: one block per image, `rank  prob  label (index)` per prediction."""
    lines = []
    for result in results:
        lines.append(str(result["path"]))
        if "error" in result:
            lines.append(f"  error: {result['error']}")
            continue
        if result.get("unknown"):
            lines.append("  unknown: unlike the images of every class the model knows (the ranks below are its guesses)")
        if "labels" in result:
            lines.append(f"  labels: {', '.join(result['labels']) if result['labels'] else '(none over its threshold)'}")
        for rank, p in enumerate(result["predictions"], 1):
            lines.append(f"  {rank:>2}  {p['prob'] * 100:6.2f}%  {p['label']} ({p['index']})")
    return "\n".join(lines)
