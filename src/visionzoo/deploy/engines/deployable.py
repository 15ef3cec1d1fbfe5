"""`visionzoo export --engine`: the file one engine runs, written beside the user's stem (the engine
named, or with `auto` the fastest here within the accuracy rule)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from visionzoo.deploy.engines.artifacts import Artifacts
from visionzoo.deploy.engines.backends import ENGINES, Engine, create_engine
from visionzoo.deploy.engines.choice import EngineChoice, choose_engine
from visionzoo.errors import SettingError

__all__ = ["EXPORTABLE", "export_engine"]

EXPORTABLE = ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
_SUFFIXES = {"onnxruntime-fp32": ".onnx", "onnxruntime-int8": ".int8.onnx", "openvino-fp32": ".xml",
             "openvino-bf16": ".bf16.xml", "openvino-int8": ".int8.xml"}


def export_engine(model: nn.Module, stem: str | Path, *, engine: str = "auto", img_size: int | None = None,
                  calib_dir: str | Path | None = None, calib_count: int = 64, eval_dir: str | Path | None = None,
                  eval_limit: int | None = 500, threads: int | None = None, seconds: float = 2.0,
                  reparameterize: bool = True) -> dict[str, Any]:
    """`visionzoo export --engine`: the file one engine runs (`engine='auto'`: the fastest here within
    the accuracy rule), written as STEM.onnx, STEM.int8.onnx, STEM.xml, STEM.bf16.xml or STEM.int8.xml.

    The bf16 IR is the fp32 one with `visionzoo.precision = bf16` in its metadata, so predict and
    serve run it in bf16. Without --calib the int8 engines have nothing to calibrate on, and without
    --eval-data or --calib the reduced-precision engines have no images for the rule: both are skipped.
    A re-parameterisable network is exported with its training branches fused (verified against the
    unfused model) unless `reparameterize=False`.
    """
    from visionzoo.deploy.export.images import image_files

    if engine != "auto" and engine not in EXPORTABLE:
        raise SettingError(f"an exported engine is one of {', '.join(EXPORTABLE)} (or auto), got {engine!r}")
    calibration = image_files(Path(calib_dir), calib_count) if calib_dir else None
    stem = Path(stem)
    with tempfile.TemporaryDirectory(prefix="vz-export-") as tmp:
        artifacts = Artifacts(model, img_size=img_size, calibration=calibration, folder=tmp,
                              reparameterize=reparameterize)
        choice = None
        if engine == "auto":
            choice = _choose_exportable(artifacts, has_calibration=calibration is not None, eval_dir=eval_dir,
                                        eval_limit=eval_limit, threads=threads, seconds=seconds)
            engine = choice.chosen
        runner = create_engine(engine, artifacts, threads=threads)
        reason = runner.unavailable()
        if reason:
            raise SettingError(f"engine {engine} cannot run here: {reason}")
        out = stem.with_name(stem.name + _SUFFIXES[engine])
        _write(runner, out)
    return {"model": artifacts.name, "engine": engine, "precision": ENGINES[engine].precision, "path": str(out),
            "reparameterized": artifacts.model is not artifacts.unfused, "choice": choice.as_dict() if choice else None}


def _choose_exportable(artifacts: Artifacts, *, has_calibration: bool, eval_dir: str | Path | None,
                       eval_limit: int | None, threads: int | None, seconds: float) -> EngineChoice:
    """`choose_engine` among the exportable engines that have the images they need."""
    candidates: list[str | Engine] = []
    skipped = {}
    for name in EXPORTABLE:
        if ENGINES[name].precision == "int8" and not has_calibration:
            skipped[name] = "needs calibration images (--calib DIR)"
        elif ENGINES[name].precision != "fp32" and not has_calibration and eval_dir is None:
            skipped[name] = "no images for the accuracy rule (--eval-data DIR or --calib DIR)"
        else:
            candidates.append(name)
    choice = choose_engine(artifacts, candidates, eval_dir=eval_dir, eval_limit=eval_limit, threads=threads,
                           seconds=seconds)
    choice.skipped = {**skipped, **choice.skipped}
    if choice.chosen is None:
        raise SettingError(f"no engine for {artifacts.name} passed the accuracy rule: {choice.rows}")
    return choice


def _write(runner: Engine, out: Path) -> None:
    """Copy the file `runner` runs to `out` (an IR with its .bin); the bf16 IR records its precision."""
    source = runner.file()
    out.parent.mkdir(parents=True, exist_ok=True)
    if runner.name == "openvino-bf16":
        from visionzoo.deploy.export.openvino import save_ir
        from visionzoo.deploy.runtimes.openvino import openvino_core, set_ir_metadata

        ir = openvino_core().read_model(str(source))
        set_ir_metadata(ir, {"visionzoo.precision": "bf16"})
        save_ir(ir, out)
        return
    if source.suffix == ".xml":
        shutil.copyfile(source.with_suffix(".bin"), out.with_suffix(".bin"))
    shutil.copyfile(source, out)
