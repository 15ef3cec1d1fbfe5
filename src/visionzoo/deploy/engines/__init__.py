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

`choose_engine` is `--engine auto`: it measures the candidates here and picks the fastest,
keeping a reduced-precision engine only when it passes the accuracy rule (`passes_accuracy_rule`):
on labelled images, bf16 agrees with fp32 on top-1 for at least 99.5% of them, and int8 loses
at most 1 point of top-1. `measure_engine_latency` is one engine's latency here, cached per
machine like `visionzoo.choose.benchmark`'s figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from visionzoo.errors import DataError, SettingError
from visionzoo.files import atomic_write_json

__all__ = ["Engine", "Artifacts", "ENGINES", "create_engine", "engine_names", "available_engines",
           "choose_engine", "EngineChoice", "EngineRow", "evaluate_engines", "passes_accuracy_rule",
           "labelled_images", "measure_engine_latency", "export_engine", "benchmark_engines", "EXPORTABLE",
           "BF16_MIN_AGREEMENT", "INT8_MAX_DROP"]

BF16_MIN_AGREEMENT = 0.995  # bf16 must give fp32's top-1 on at least this share of images
INT8_MAX_DROP = 0.01  # int8 may lose at most this much top-1 (1 point)


# --- the exports every engine runs ------------------------------------------------------


class Artifacts:
    """A model and its exports (ONNX, int8 ONNX, IR, int8 IR), each made and verified on first use.

    From a model: `Artifacts(model, img_size=..., calibration=[paths])`. From an exported file
    (`Artifacts.from_file("m.onnx")` or an .xml IR): the engines that need what is missing (a
    PyTorch model for eager and compile, an ONNX file for onnxruntime) are unavailable.
    Calibration images (for both int8 engines) default to a few synthetic photos, which are
    good for measuring speed and nothing else.
    """

    def __init__(self, model: nn.Module | None = None, *, img_size: int | None = None,
                 calibration: Sequence[str | Path] | None = None, folder: str | Path | None = None,
                 int8_scheme: str = "auto"):
        self.model = model.eval() if model is not None else None
        self.img_size = img_size
        self.calibration = [Path(p) for p in calibration] if calibration else None
        self.int8_scheme = int8_scheme
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vz-engines-")
            folder = self._tmp.name
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Path] = {}

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Artifacts:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported model {path} does not exist")
        kind = {".onnx": "onnx", ".xml": "ir"}.get(path.suffix)
        if kind is None:
            raise SettingError(f"{path} is neither an ONNX file (.onnx) nor an OpenVINO IR (.xml)")
        artifacts = cls(None, **options)
        artifacts._files[kind] = path
        return artifacts

    @property
    def name(self) -> str:
        if self.model is not None:
            from visionzoo.factory import model_name

            return model_name(self.model)
        return self.preprocessing_and_name()[1]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.preprocessing_and_name()[0]

    def preprocessing_and_name(self) -> tuple[dict[str, Any], str]:
        if self.model is not None:
            from visionzoo.deploy.export.onnx import model_preprocessing

            return model_preprocessing(self.model, self.img_size), self.name
        metadata = self._metadata()
        return json.loads(metadata["visionzoo.preprocessing"]), metadata.get("visionzoo.model", "model")

    def _metadata(self) -> dict[str, str]:
        if "onnx" in self._files:
            from visionzoo.deploy.runtimes import onnx_metadata

            return onnx_metadata(self._files["onnx"])
        from visionzoo.deploy.runtimes.openvino import read_exported

        return read_exported(self._files["ir"])[1]

    def calibration_images(self) -> list[Path]:
        if self.calibration:
            return self.calibration
        from visionzoo.deploy.export import _synthetic_photos

        folder = self.folder / "synthetic-calibration"
        folder.mkdir(exist_ok=True)
        paths = []
        for index, image in enumerate(_synthetic_photos(8)):
            paths.append(folder / f"{index}.png")
            image.save(paths[-1])
        self.calibration = paths
        return paths

    def onnx(self) -> Path:
        if "onnx" not in self._files:
            if self.model is None:
                raise SettingError(f"no ONNX file for {self._files.get('ir')}: export the model with --format onnx")
            from visionzoo.deploy.export import export_model

            report = export_model(self.model, self.folder / "model.onnx", img_size=self.img_size)
            self._files["onnx"] = report.path
        return self._files["onnx"]

    def onnx_int8(self) -> Path:
        if "onnx-int8" not in self._files:
            from visionzoo.deploy.export.quantize import quantize_int8

            self._files["onnx-int8"] = quantize_int8(self.onnx(), self.folder / "model.int8.onnx",
                                                     self.calibration_images(), scheme=self.int8_scheme)
        return self._files["onnx-int8"]

    def ir(self) -> Path:
        if "ir" not in self._files:
            from visionzoo.deploy.export.onnx import ExportResult
            from visionzoo.deploy.export.openvino import ir_from_onnx, verify_openvino

            self._files["ir"] = ir_from_onnx(self.onnx(), self.folder / "model.xml")
            if self.model is not None:  # the IR computes the model's function, as the ONNX file was checked to
                verify_openvino(ExportResult(self._files["ir"], "openvino"), self.model, img_size=self.img_size)
        return self._files["ir"]

    def ir_int8(self) -> Path:
        if "ir-int8" not in self._files:
            from visionzoo.deploy.export.openvino import quantize_openvino_int8

            self._files["ir-int8"] = quantize_openvino_int8(self.ir(), self.folder / "model.int8.xml",
                                                            self.calibration_images())
        return self._files["ir-int8"]


# --- the engines ------------------------------------------------------------------------


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
        if self.artifacts.model is None and "onnx" not in self.artifacts._files:
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


ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (
    EagerEngine, CompileEngine, OnnxRuntimeEngine, OnnxRuntimeInt8Engine, OpenVinoEngine, OpenVinoBf16Engine,
    OpenVinoInt8Engine)}


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


# --- the accuracy rule --------------------------------------------------------------------


def labelled_images(folder: str | Path, class_names: Sequence[str] | None, limit: int | None = None
                    ) -> tuple[list[Path], list[int] | None]:
    """Image files of `folder` and, when it is a class-per-folder tree of the model's classes, their labels.

    Without matching class folders (calibration images, say) the labels are None, and the rule
    takes the fp32 engine's answers as the truth.
    """
    from visionzoo.deploy.export import _image_files

    folder = Path(folder)
    files = _image_files(folder, limit)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    names = list(class_names) if class_names else classes
    if not classes or any(c not in names for c in classes) or any(f.parent == folder for f in files):
        return files, None
    return files, [names.index(f.relative_to(folder).parts[0]) for f in files]


def _preprocessed(files: Sequence[Path], preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
    """The images that decode, preprocessed as deployed, and their positions in `files`."""
    from visionzoo.data.decode import ImageDecodeError, decode_image
    from visionzoo.deploy.runtimes import preprocess_image

    arrays, kept = [], []
    for index, path in enumerate(files):
        try:
            arrays.append(preprocess_image(decode_image(path), preprocessing))
            kept.append(index)
        except (ImageDecodeError, OSError):
            continue  # a bad file is left out of every engine's count alike
    if not arrays:
        raise DataError(f"none of the {len(files)} images for the accuracy check could be read")
    return np.stack(arrays), kept


def passes_accuracy_rule(precision: str, agreement: float, drop: float) -> bool:
    """bf16: top-1 agreement with fp32 >= 99.5%; int8: top-1 drop <= 1 point; fp32 always passes."""
    if precision == "bf16":
        return agreement >= BF16_MIN_AGREEMENT
    if precision == "int8":
        return drop <= INT8_MAX_DROP + 1e-12
    return True


def evaluate_engines(engines: Sequence[Engine], files: Sequence[Path], labels: Sequence[int] | None,
                     preprocessing: dict[str, Any], batch_size: int = 16) -> dict[str, dict[str, Any]]:
    """Top-1 answers of each (loaded) engine on `files`, compared with the first fp32 engine's.

    Per engine: `agreement` (share of images whose top-1 is the fp32 engine's), `top1` (against
    `labels`, or against the fp32 answers when there are none), `drop` (fp32 top-1 minus this
    one's), `passed` (the accuracy rule) and `images`.
    """
    reference = next((e for e in engines if e.precision == "fp32"), None)
    if reference is None:
        raise ValueError("the accuracy rule compares with an fp32 engine; none of "
                         f"{[e.name for e in engines]} is one")
    x, kept = _preprocessed(files, preprocessing)
    answers = {}
    for engine in engines:
        answers[engine.name] = np.concatenate([engine.run(x[i:i + batch_size]).argmax(axis=1)
                                               for i in range(0, len(x), batch_size)])
    truth = np.asarray([labels[i] for i in kept]) if labels is not None else answers[reference.name]
    reference_top1 = float((answers[reference.name] == truth).mean())
    results = {}
    for engine in engines:
        top1 = float((answers[engine.name] == truth).mean())
        agreement = float((answers[engine.name] == answers[reference.name]).mean())
        drop = reference_top1 - top1
        results[engine.name] = {"agreement": agreement, "top1": top1, "drop": drop, "images": len(kept),
                                "reference": reference.name, "labelled": labels is not None,
                                "passed": passes_accuracy_rule(engine.precision, agreement, drop)}
    return results


# --- timing ---------------------------------------------------------------------------------


def _random_batch(preprocessing: dict[str, Any], batch_size: int) -> np.ndarray:
    channels, height, width = preprocessing["input_size"]
    return np.random.default_rng(0).standard_normal((batch_size, channels, height, width), dtype=np.float32)


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
    from visionzoo.measure import percentile, time_in_blocks

    if candidates is None:
        engines, skipped = available_engines(artifacts, threads=threads, exclude=("compile",))
    else:
        engines, skipped = [], {}
        for candidate in candidates:
            engine = candidate if isinstance(candidate, Engine) else create_engine(candidate, artifacts, threads=threads)
            reason = engine.unavailable()
            if reason:
                skipped[engine.name] = reason
            else:
                engines.append(engine)
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
        if eval_dir is not None:
            files, labels = labelled_images(eval_dir, _class_names(artifacts), eval_limit)
            source = f"{eval_dir} ({'labelled' if labels is not None else 'unlabelled'})"
        else:
            files, labels = artifacts.calibration_images()[:eval_limit], None
            source = "the calibration images (unlabelled: fp32's answers taken as the truth)"
        for engine_name, figures in evaluate_engines(loaded, files, labels, preprocessing).items():
            rows[engine_name].accuracy = figures
            if not figures["passed"]:
                rows[engine_name].eligible = False
                rows[engine_name].reason = _rule_failure(rows[engine_name])
    else:
        source = "none needed (fp32 engines only)"
    x = _random_batch(preprocessing, batch_size)
    samples = time_in_blocks({engine.name: (lambda e=engine: e.run(x)) for engine in loaded}, seconds)
    for engine_name, times in samples.items():
        rows[engine_name].latency_ms = {"p50": statistics.median(times), "p90": percentile(times, 90),
                                        "p99": percentile(times, 99), "repeats": len(times)}
    eligible = [row for row in rows.values() if row.eligible]
    chosen = min(eligible, key=lambda row: row.latency_ms["p50"]).engine if eligible else None
    return EngineChoice(model=name, chosen=chosen, batch_size=batch_size, rows=list(rows.values()),
                        skipped=skipped, accuracy_images=source)


def _class_names(artifacts: Artifacts) -> list[str] | None:
    if artifacts.model is not None:
        from visionzoo.deploy.export.onnx import model_class_names

        return model_class_names(artifacts.model)
    return json.loads(artifacts._metadata().get("visionzoo.class_names", "null"))


def _rule_failure(row: EngineRow) -> str:
    figures = row.accuracy
    if row.precision == "bf16":
        return (f"top-1 agrees with fp32 on {100 * figures['agreement']:.2f}% of images "
                f"(the rule needs >= {100 * BF16_MIN_AGREEMENT:.1f}%)")
    return f"top-1 drop {100 * figures['drop']:.2f} points (the rule allows <= {100 * INT8_MAX_DROP:.0f})"


# --- one engine's latency, cached per machine ---------------------------------------------


def _identity(model_or_export, img_size: int | None) -> tuple[str, str]:
    """(name, fingerprint) of what is measured: a registered name, a model, or an exported file."""
    if isinstance(model_or_export, Artifacts):
        model_or_export = model_or_export.model if model_or_export.model is not None else \
            next(iter(model_or_export._files.values()))
    if isinstance(model_or_export, nn.Module):
        from visionzoo.factory import model_name

        name = model_name(model_or_export)
        shapes = [(k, tuple(v.shape)) for k, v in model_or_export.state_dict().items()]
        return name, hashlib.sha256(f"{model_or_export!r}|{shapes}|{img_size}".encode()).hexdigest()[:16]
    path = Path(model_or_export)
    if path.suffix in (".onnx", ".xml"):
        stat = path.stat()
        return path.stem, hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return str(model_or_export), f"registered|{img_size}"


def _latency_cache_file(name: str, fingerprint: str, engine: str, batch_size: int, threads: int | None,
                        seconds: float) -> Path:
    from visionzoo.factory import cache_dir, code_fingerprint
    from visionzoo.measure import cpu_name

    versions = []
    for module in ("onnxruntime", "openvino", "nncf"):
        try:
            versions.append(__import__(module).__version__)
        except ImportError:
            versions.append("-")
    machine = f"{platform.node()}|{cpu_name()}|{os.cpu_count()}|{torch.__version__}|{'|'.join(versions)}"
    key = hashlib.sha256(f"{machine}|{code_fingerprint()}|{fingerprint}|{engine}|{batch_size}|"
                         f"{threads or torch.get_num_threads()}|{seconds}".encode()).hexdigest()[:24]
    return cache_dir() / "engine-latency" / f"{name}-{engine}-b{batch_size}-{key}.json"


def measure_engine_latency(model_or_export, engine: str, batch_size: int = 1, *, threads: int | None = None,
                           img_size: int | None = None, seconds: float = 1.0, use_cache: bool = True,
                           artifacts: Artifacts | None = None) -> dict[str, Any]:
    """Latency of `engine` on this machine: `{"engine", "precision", "batch_size", "p50", "p90", "p99"
    (ms per batch), "throughput" (images/s), "repeats", "cached"}`.

    `model_or_export`: a registered name (random weights: speed does not depend on them), a model,
    an `Artifacts`, or an exported .onnx / .xml file. Results are cached per machine, software
    versions, model, engine, batch size and thread count, as `visionzoo.choose.benchmark` caches its own.
    """
    from visionzoo.measure import percentile, time_in_blocks

    if engine not in ENGINES:
        create_engine(engine, None)  # raises the unknown-engine error
    name, fingerprint = _identity(model_or_export, img_size)
    cache_file = _latency_cache_file(name, fingerprint, engine, batch_size, threads, seconds)
    if use_cache:
        try:
            return {**json.loads(cache_file.read_text()), "cached": True}
        except (OSError, ValueError):
            pass
    if artifacts is None:
        artifacts = artifacts_for(model_or_export, img_size)
    runner = create_engine(engine, artifacts, threads=threads)
    reason = runner.unavailable()
    if reason:
        raise SettingError(f"engine {engine} cannot run {name} here: {reason}")
    if threads:
        torch.set_num_threads(threads)
    runner.load()
    x = _random_batch(artifacts.preprocessing, batch_size)
    times = time_in_blocks({engine: lambda: runner.run(x)}, seconds, pause=0.0)[engine]
    p50 = statistics.median(times)
    result = {"model": name, "engine": engine, "precision": runner.precision, "batch_size": batch_size,
              "p50": p50, "p90": percentile(times, 90), "p99": percentile(times, 99),
              "throughput": batch_size * 1e3 / p50, "repeats": len(times),
              "threads": threads or torch.get_num_threads()}
    try:
        atomic_write_json(cache_file, result, indent=None)
    except OSError:
        pass  # an unwritable cache costs a re-measurement, nothing else
    return {**result, "cached": False}


def artifacts_for(model_or_export, img_size: int | None = None) -> Artifacts:
    """`Artifacts` for a registered name (random weights), a model, an `Artifacts` or an exported file."""
    if isinstance(model_or_export, Artifacts):
        return model_or_export
    if isinstance(model_or_export, nn.Module):
        return Artifacts(model_or_export, img_size=img_size)
    path = Path(model_or_export)
    if path.suffix in (".onnx", ".xml"):
        return Artifacts.from_file(path)
    from visionzoo.factory import create_model
    from visionzoo.registry import get_card

    overrides = {}
    if img_size is not None and img_size != get_card(str(model_or_export)).input_size[1]:
        from visionzoo.factory import size_overrides

        overrides = size_overrides(get_card(str(model_or_export)), img_size)
    return Artifacts(create_model(str(model_or_export), **overrides), img_size=img_size)


# --- what the commands run ----------------------------------------------------------------

EXPORTABLE = ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
_SUFFIXES = {"onnxruntime-fp32": ".onnx", "onnxruntime-int8": ".int8.onnx", "openvino-fp32": ".xml",
             "openvino-bf16": ".bf16.xml", "openvino-int8": ".int8.xml"}


def export_engine(model: nn.Module, stem: str | Path, *, engine: str = "auto", img_size: int | None = None,
                  calib_dir: str | Path | None = None, calib_count: int = 64, eval_dir: str | Path | None = None,
                  eval_limit: int | None = 500, threads: int | None = None, seconds: float = 2.0) -> dict[str, Any]:
    """`visionzoo export --engine`: the file one engine runs (`engine='auto'`: the fastest here within
    the accuracy rule), written as STEM.onnx, STEM.int8.onnx, STEM.xml, STEM.bf16.xml or STEM.int8.xml.

    The bf16 IR is the fp32 one with `visionzoo.precision = bf16` in its metadata, so predict and
    serve run it in bf16. Without --calib the int8 engines have nothing to calibrate on, and without
    --eval-data or --calib the reduced-precision engines have no images for the rule: both are skipped.
    """
    from visionzoo.deploy.export import _image_files

    if engine != "auto" and engine not in EXPORTABLE:
        raise SettingError(f"an exported engine is one of {', '.join(EXPORTABLE)} (or auto), got {engine!r}")
    calibration = _image_files(Path(calib_dir), calib_count) if calib_dir else None
    stem = Path(stem)
    with tempfile.TemporaryDirectory(prefix="vz-export-") as tmp:
        artifacts = Artifacts(model, img_size=img_size, calibration=calibration, folder=tmp)
        choice = None
        if engine == "auto":
            candidates: list[str | Engine] = []
            skipped = {}
            for name in EXPORTABLE:
                if ENGINES[name].precision == "int8" and calibration is None:
                    skipped[name] = "needs calibration images (--calib DIR)"
                elif ENGINES[name].precision != "fp32" and calibration is None and eval_dir is None:
                    skipped[name] = "no images for the accuracy rule (--eval-data DIR or --calib DIR)"
                else:
                    candidates.append(name)
            choice = choose_engine(artifacts, candidates, eval_dir=eval_dir, eval_limit=eval_limit,
                                   threads=threads, seconds=seconds)
            choice.skipped = {**skipped, **choice.skipped}
            if choice.chosen is None:
                raise SettingError(f"no engine for {artifacts.name} passed the accuracy rule: {choice.rows}")
            engine = choice.chosen
        runner = create_engine(engine, artifacts, threads=threads)
        reason = runner.unavailable()
        if reason:
            raise SettingError(f"engine {engine} cannot run here: {reason}")
        source = runner.file()
        out = stem.with_name(stem.name + _SUFFIXES[engine])
        out.parent.mkdir(parents=True, exist_ok=True)
        if engine == "openvino-bf16":
            from visionzoo.deploy.export.openvino import _save
            from visionzoo.deploy.runtimes.openvino import openvino_core, set_ir_metadata

            ir = openvino_core().read_model(str(source))
            set_ir_metadata(ir, {"visionzoo.precision": "bf16"})
            _save(ir, out)
        else:
            import shutil

            if source.suffix == ".xml":
                shutil.copyfile(source.with_suffix(".bin"), out.with_suffix(".bin"))
            shutil.copyfile(source, out)
    return {"model": artifacts.name, "engine": engine, "precision": ENGINES[engine].precision, "path": str(out),
            "choice": choice.as_dict() if choice else None}


def benchmark_engines(model: str | nn.Module, engines: str = "all", *, batch_sizes: Sequence[int] = (1, 8),
                      img_size: int | None = None, threads: int | None = None, use_cache: bool = True,
                      eval_dir: str | Path | None = None, seconds: float = 1.0) -> dict[str, Any]:
    """`visionzoo benchmark --engine`: latency percentiles (batch 1) and throughput (each batch size) per
    engine. `engines`: comma-separated names, 'all' (every engine that runs here), or 'auto' (all but
    compile, and `choose_engine`'s pick with its accuracy figures; with random weights and no
    `eval_dir` those figures only exercise the rule)."""
    artifacts = artifacts_for(model, img_size)
    if engines in ("all", "auto"):
        runners, skipped = available_engines(artifacts, threads=threads, exclude=("compile",) if engines == "auto" else ())
    else:
        runners, skipped = available_engines(artifacts, threads=threads,
                                             names=[n.strip() for n in engines.split(",") if n.strip()])
    rows = []
    for runner in runners:
        figures = {b: measure_engine_latency(model, runner.name, b, threads=threads, img_size=img_size, seconds=seconds,
                                             use_cache=use_cache, artifacts=artifacts) for b in batch_sizes}
        latency_batch = 1 if 1 in figures else batch_sizes[0]
        timed = figures[latency_batch]
        rows.append({"engine": runner.name, "precision": runner.precision, "latency_batch": latency_batch,
                     "latency_ms": {k: timed[k] for k in ("p50", "p90", "p99", "repeats")},
                     "throughput": {str(b): f["throughput"] for b, f in figures.items()},
                     "cached": all(f["cached"] for f in figures.values())})
    result: dict[str, Any] = {"model": artifacts.name, "engines": rows, "skipped": skipped}
    if engines == "auto":
        choice = choose_engine(artifacts, [r.name for r in runners], eval_dir=eval_dir, threads=threads)
        result["chosen"], result["choice"] = choice.chosen, choice.as_dict()
    return result
