"""`--engine auto`: measure the engines that run here and pick the fastest, keeping a reduced-precision
engine only when it passes the accuracy rule (`visionzoo.deploy.engines.accuracy`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from visionzoo.deploy.engines.accuracy import evaluate_engines, labelled_images, rule_failure
from visionzoo.deploy.engines.artifacts import Artifacts
from visionzoo.deploy.engines.backends import Engine, available_engines, create_engine
from visionzoo.deploy.engines.latency import latency_percentiles, random_batch
from visionzoo.errors import SettingError
from visionzoo.measure import time_in_blocks

__all__ = ["EngineRow", "EngineChoice", "choose_engine"]


@dataclass
class EngineRow:
    engine: str
    precision: str
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, repeats at the batch timed
    accuracy: dict[str, Any] | None = None  # evaluate_engines' figures (reduced precision, and fp32's own)
    eligible: bool = True  # passes the accuracy rule (or needs none)
    reason: str | None = None  # why it was left out


@dataclass
class EngineChoice:
    model: str
    chosen: str | None
    batch_size: int
    rows: list[EngineRow]
    skipped: dict[str, str]  # engines that could not run here, and why
    accuracy_images: str  # what the accuracy rule was measured on

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def engine(self, name: str) -> EngineRow:
        return next(row for row in self.rows if row.engine == name)


def choose_engine(artifacts: Artifacts, candidates: Sequence[str | Engine] | None = None, *,
                  eval_dir: str | Path | None = None, eval_limit: int | None = 500, batch_size: int = 1,
                  seconds: float = 2.0, threads: int | None = None) -> EngineChoice:
    """`--engine auto`: measure `candidates` (default: every engine that runs here) and pick the fastest
    among those that pass the accuracy rule, checked on `eval_dir` (labelled class folders), or on the
    calibration images when none is given."""
    engines, skipped = _runnable(artifacts, candidates, threads)
    loaded = []
    for engine in engines:
        try:
            engine.load()
            loaded.append(engine)
        except Exception as error:  # an export or runtime failure costs that engine, not the choice
            skipped[engine.name] = f"failed to load: {str(error).splitlines()[0][:300]}"
    if not loaded:
        raise SettingError(f"no engine can run {artifacts.name} here: {skipped}")
    preprocessing, name = artifacts.preprocessing_and_name()
    rows = {engine.name: EngineRow(engine.name, engine.precision) for engine in loaded}
    if any(engine.precision != "fp32" for engine in loaded):
        source = _apply_accuracy_rule(rows, loaded, artifacts, preprocessing, eval_dir, eval_limit)
    else:
        source = "none needed (fp32 engines only)"
    x = random_batch(preprocessing, batch_size)
    samples = time_in_blocks({engine.name: (lambda e=engine: e.run(x)) for engine in loaded}, seconds)
    for engine_name, times in samples.items():
        rows[engine_name].latency_ms = {**latency_percentiles(times), "repeats": len(times)}
    eligible = [row for row in rows.values() if row.eligible]
    chosen = min(eligible, key=lambda row: row.latency_ms["p50"]).engine if eligible else None
    return EngineChoice(model=name, chosen=chosen, batch_size=batch_size, rows=list(rows.values()),
                        skipped=skipped, accuracy_images=source)


def _runnable(artifacts: Artifacts, candidates: Sequence[str | Engine] | None, threads: int | None
              ) -> tuple[list[Engine], dict[str, str]]:
    """The candidates (engines or names; default every engine but compile) that run here, and why the others do not."""
    if candidates is None:
        return available_engines(artifacts, threads=threads, exclude=("compile",))
    engines, skipped = [], {}
    for candidate in candidates:
        engine = candidate if isinstance(candidate, Engine) else create_engine(candidate, artifacts, threads=threads)
        reason = engine.unavailable()
        if reason:
            skipped[engine.name] = reason
        else:
            engines.append(engine)
    return engines, skipped


def _apply_accuracy_rule(rows: dict[str, EngineRow], loaded: Sequence[Engine], artifacts: Artifacts,
                         preprocessing: dict[str, Any], eval_dir: str | Path | None, eval_limit: int | None) -> str:
    """Fill each row's accuracy figures and leave out the engines that fail the rule; return what the
    rule was measured on."""
    if eval_dir is not None:
        files, labels = labelled_images(eval_dir, artifacts.class_names, eval_limit)
        source = f"{eval_dir} ({'labelled' if labels is not None else 'unlabelled'})"
    else:
        files, labels = artifacts.calibration_images()[:eval_limit], None
        source = "the calibration images (unlabelled: fp32's answers taken as the truth)"
    for engine_name, figures in evaluate_engines(loaded, files, labels, preprocessing).items():
        row = rows[engine_name]
        row.accuracy = figures
        if not figures["passed"]:
            row.eligible = False
            row.reason = rule_failure(row.precision, figures)
    return source
