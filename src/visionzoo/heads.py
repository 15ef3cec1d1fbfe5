"""What a trained head outputs, in numpy only (the torch-free predictors use it): the meaning of its
logits, and the result records every back end prints.

A model's head facts (`head` in its spec and config.json; the ONNX metadata `visionzoo.head`):

    {"task": "multiclass" | "multilabel",
     "temperature": T,                      # temperature scaling, fitted on validation (1: none)
     "thresholds": [t_0, ..., t_C-1],       # multilabel: class c is shown when p_c >= t_c
     "ood": {"score": "energy" | "msp", "threshold": s, "keep": 0.95}}   # multiclass: unknown below s

Every back end (predict, serve, ONNX) turns logits into a result with `result_record`, so they
answer alike: single-label `{"path", "predictions"}` as before, plus `"unknown"` and `"ood"`
(the score's name and value, the threshold, the share kept) when the head has an OOD rule; multi-label adds `"labels"`, the classes over their thresholds.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["softmax", "sigmoid", "task_of", "probabilities", "ood_score", "OOD_SCORES", "result_record",
           "prediction_record", "error_record", "format_table", "printable", "unknown_reason"]

OOD_SCORES = ("energy", "msp")  # the scores computed from logits alone, so every back end can apply them


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # no overflow warning for large |logits|


def task_of(head: Mapping[str, Any] | None) -> str:
    return (head or {}).get("task") or "multiclass"


def probabilities(logits: np.ndarray, head: Mapping[str, Any] | None) -> np.ndarray:
    """Class probabilities of (N, C) or (C,) logits: softmax (or sigmoid, multi-label) of logits / T."""
    logits = np.asarray(logits, dtype=np.float64) / float((head or {}).get("temperature") or 1.0)
    return (sigmoid(logits) if task_of(head) == "multilabel" else softmax(logits)).astype(np.float32)


def ood_score(logits: np.ndarray, score: str, temperature: float = 1.0) -> np.ndarray:
    """How in-distribution each row of logits looks (higher: more), on the last axis.

    msp: the largest softmax probability (Hendrycks & Gimpel, 2017); energy: minus the free energy,
    T * logsumexp(logits / T) (Liu et al., 2020), which keeps the logits' magnitude that softmax
    normalises away."""
    logits = np.asarray(logits, dtype=np.float64) / float(temperature)
    if score == "msp":
        return softmax(logits).max(axis=-1)
    if score == "energy":
        top = logits.max(axis=-1, keepdims=True)
        return float(temperature) * (top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1)))
    raise ValueError(f"unknown OOD score {score!r}; scores: {', '.join(OOD_SCORES)}")


def result_record(path: str, logits: np.ndarray, labels: Sequence[str] | None, topk: int,
                  head: Mapping[str, Any] | None, *, reject: bool = True) -> dict[str, Any]:
    """One image's result from its (C,) logits under the head's rules (see the module docstring)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    probs = probabilities(logits, head)
    record = prediction_record(path, probs, labels, topk)
    head = head or {}
    if task_of(head) == "multilabel":
        thresholds = np.asarray(head.get("thresholds") or [0.5] * probs.size, dtype=np.float64)
        over = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= thresholds[i]]
        record["labels"] = [labels[i] if labels is not None and i < len(labels) else str(i) for i in over]
        return record
    rule = head.get("ood")
    if reject and rule:
        score = float(ood_score(logits, rule["score"], head.get("temperature") or 1.0))
        record["unknown"] = bool(score < float(rule["threshold"]))
        record["ood"] = {"score": rule["score"], "value": score, "threshold": float(rule["threshold"]),
                         "keep": rule.get("keep")}
    return record


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


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: Any) -> str:
    """`text` with its control characters (the ESC of ANSI escape sequences among them) shown as '?', so a
    class or file name from someone else's data cannot move the cursor or recolour the terminal."""
    return _CONTROL_CHARACTERS.sub("?", str(text))


def unknown_reason(ood: Mapping[str, Any] | None) -> str:
    """Why an image was called unknown, as the rule and the score, not a verdict."""
    if not ood:
        return "its score is below the model's unknown threshold"
    keep = f", the threshold that keeps {ood['keep']:.0%} of the validation images" if ood.get("keep") else ""
    return f"its {ood['score']} score {ood['value']:.3g} is below {ood['threshold']:.3g}{keep}"


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Plain-text table: one block per image, `rank  prob  label (index)` per prediction."""
    lines = []
    for result in results:
        lines.append(printable(result["path"]))
        if "error" in result:
            lines.append(f"  error: {printable(result['error'])}")
            continue
        if result.get("unknown"):
            lines.append(f"  unknown: {unknown_reason(result.get('ood'))} (the ranks below are its guesses)")
        if "labels" in result:
            labels = ", ".join(map(printable, result["labels"]))
            lines.append(f"  labels: {labels or '(none over its threshold)'}")
        for rank, p in enumerate(result["predictions"], 1):
            lines.append(f"  {rank:>2}  {p['prob'] * 100:6.2f}%  {printable(p['label'])} ({p['index']})")
    return "\n".join(lines)
