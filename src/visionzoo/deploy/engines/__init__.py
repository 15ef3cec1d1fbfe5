"""Engines: one model, exported once, run by each runtime behind one small interface.

    artifacts = Artifacts(model, calibration=paths)      # the exports, made on first use
    engine = create_engine("openvino-bf16", artifacts)
    engine.load()
    logits = engine.run(batch)                            # (N, C, H, W) float32 -> (N, classes)

Engines (`ENGINES`): PyTorch `eager` and `compile` (torch.compile), `onnxruntime-fp32` and
`onnxruntime-int8` (the scheme `visionzoo export --int8` picks), `openvino-fp32`, `openvino-bf16`
(only on a CPU with bf16 instructions) and `openvino-int8` (NNCF post-training quantisation).
All of them run the same ONNX export (the IR is converted from it) on inputs made by the same
torch-free preprocessing, so their outputs differ only by what the runtime and precision do.
A re-parameterisable network (RepViT, MobileOne, FastViT) runs in every engine with its training
branches fused (`visionzoo.factory.reparameterized`; each export verified against the unfused
model), unless `Artifacts(model, reparameterize=False)`.

`choose_engine` is `--engine auto`: it measures the candidates here and picks the fastest,
keeping a reduced-precision engine only when it passes the accuracy rule (`passes_accuracy_rule`):
on labelled images, bf16 agrees with fp32 on top-1 for at least 99.5% of them, and int8 loses
at most 1 point of top-1. `measure_engine_latency` is one engine's latency here, cached per
machine like `visionzoo.choose.benchmark`'s figures.

One idea per module, each importing only those above it in this list:

    artifacts    `Artifacts`: the model's exports (ONNX, int8 ONNX, IR, int8 IR), made on first use
    backends     `Engine` and the seven engines, `ENGINES`, `create_engine`, `available_engines`
    accuracy     the accuracy rule and `evaluate_engines`, which applies it
    latency      `measure_engine_latency`, cached per machine
    choice       `choose_engine` (`--engine auto`) and its report, `EngineChoice`
    deployable   `export_engine` (`visionzoo export --engine`)
    comparison   `benchmark_engines` (`visionzoo benchmark --engine`)
"""

from __future__ import annotations

from visionzoo.deploy.engines.accuracy import (
    BF16_MIN_AGREEMENT,
    INT8_MAX_DROP,
    evaluate_engines,
    labelled_images,
    passes_accuracy_rule,
)
from visionzoo.deploy.engines.artifacts import Artifacts, artifacts_for
from visionzoo.deploy.engines.backends import ENGINES, Engine, available_engines, create_engine, engine_names
from visionzoo.deploy.engines.choice import EngineChoice, EngineRow, choose_engine
from visionzoo.deploy.engines.comparison import benchmark_engines
from visionzoo.deploy.engines.deployable import EXPORTABLE, export_engine
from visionzoo.deploy.engines.latency import measure_engine_latency

__all__ = ["Engine", "Artifacts", "artifacts_for", "ENGINES", "create_engine", "engine_names", "available_engines",
           "choose_engine", "EngineChoice", "EngineRow", "evaluate_engines", "passes_accuracy_rule",
           "labelled_images", "measure_engine_latency", "export_engine", "benchmark_engines", "EXPORTABLE",
           "BF16_MIN_AGREEMENT", "INT8_MAX_DROP"]
