"""`advise --data`: a budgeted bake-off that picks the best model for the user's images and device.

ImageNet rank predicts rank on a user's task only loosely, and eager latency is not the latency
of the engine one deploys with; so this measures both here:

1. candidates: registered models with weights that meet every constraint, latency measured on
   this machine in the deploy engine (edge/cpu: onnxruntime fp32 and int8, the faster; gpu: eager
   PyTorch on CUDA), at most N, spread across families and sizes;
2. probe: train and validation images embedded once per candidate (`embeddings.embed_samples`,
   cached by file contents, model and weights, reused across runs), scored by a linear probe
   (the ranking) and k-NN (`probe.run_probe`) on validation;
3. fine-tune: the top K by probe score with the transfer recipe, one `visionzoo train` process
   per device, within a total budget; asynchronous successive halving (ASHA, eta 2): at each
   validated epoch before the last a run continues only while it is in the better half of the
   runs that reached that epoch, so a candidate that trails the leader at the same point stops;
4. result: a table, the winner's run folder and export in --out, a Pareto plot, the commands.

Everything finished is recorded in OUT/bakeoff-state.json (written atomically): a rerun with the
same --out after any interruption, kill -9 included, reuses measurements, probes and finished
fine-tunes, and resumes an interrupted fine-tune from its checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visionzoo.errors import DataError, SettingError
from visionzoo.files import atomic_write_json

__all__ = ["COMMERCIAL_LICENSES", "BakeoffCandidate", "BakeoffResult", "bakeoff", "plot_bakeoff"]

COMMERCIAL_LICENSES = frozenset({"apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "cc-by-4.0"})
STATE_FILE = "bakeoff-state.json"
SELECTION_IMAGES = 1000  # validation images the probes and the halving rungs use at most
_KILL_ENV = "VISIONZOO_BAKEOFF_KILL_AT"  # tests: SIGKILL this process at a named point (kill -9 resume)


@dataclass
class BakeoffCandidate:
    name: str
    weights: str  # catalog weight name, or a local weight file
    family: str = ""
    params: int = 0
    size_mb: float | None = None  # the weight file on disk (local file), else fp32 parameters
    imagenet_top1: float | None = None
    latency_ms: float | None = None  # deploy latency here: batch 1 (edge/cpu), per image at batch 64 (gpu)
    engine: str | None = None
    probe_top1: float | None = None  # linear probe, on the selection part of validation
    knn_top1: float | None = None
    finetune_top1: float | None = None
    status: str = "candidate"
    run_dir: str | None = None

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "probe_top1": self.probe_top1,
                "finetune_top1": self.finetune_top1, "latency_ms": self.latency_ms, "engine": self.engine,
                "params": self.params, "status": self.status}


@dataclass
class BakeoffResult:
    target: str
    constraints: dict[str, Any]
    data: dict[str, Any]  # {"train": N, "val": N, "classes": [...]}
    candidates: list[BakeoffCandidate]
    winner: dict[str, Any] | None
    message: str = ""  # when nothing fits: which constraint rules everything out, and the closest
    commands: dict[str, str] = field(default_factory=dict)  # train and export, to reproduce the winner
    plot: str | None = None
    out: str | None = None
    embedded: int = 0  # images embedded by this call (0 when every embedding came from the cache)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage in this call

    def as_dict(self) -> dict[str, Any]:
        """The `--json` shape."""
        return {"target": self.target, "constraints": self.constraints, "data": self.data,
                "candidates": [c.row() for c in self.candidates], "winner": self.winner}


# --- small pieces ------------------------------------------------------------------------------


def _kill_point(name: str) -> None:
    if os.environ.get(_KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data)


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_identity(weights: str) -> str:
    """A local file by its contents (a checkpoint overwritten in place is new weights); else its name."""
    return f"file:{_file_digest(weights)}" if Path(weights).is_file() else f"catalog:{weights}"


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                    disable=not enabled)


class _State:
    """OUT/bakeoff-state.json: the request and every finished piece of work, rewritten atomically."""

    def __init__(self, out: Path, request: dict[str, Any]):
        self.path = out / STATE_FILE
        self.data: dict[str, Any] = {"request": request, "candidates": {}}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("request") != request:
                changed = sorted(k for k in set(request) | set(saved.get("request", {}))
                                 if request.get(k) != saved.get("request", {}).get(k))
                raise SettingError(f"{out} holds a bake-off of a different request ({', '.join(changed)} differ); "
                                   "rerun with the same arguments to resume, or give a new --out")
            self.data = saved

    def get(self, key: str) -> dict[str, Any]:
        return self.data["candidates"].setdefault(key, {})

    def save(self) -> None:
        _write_json(self.path, self.data)


# --- stage 1: candidates -----------------------------------------------------------------------


def _pool(weights: dict[str, str] | None, commercial: bool) -> tuple[list[BakeoffCandidate], list[BakeoffCandidate]]:
    """(usable, dropped by licence) candidates with their static facts."""
    from visionzoo.factory import model_complexity
    from visionzoo.registry import get_card, list_models
    from visionzoo.weights.catalog import default_weight, list_weights

    if weights:
        registered = set(list_models())
        out = []
        for name, file in weights.items():
            if name not in registered:
                from visionzoo.registry import get_card as check

                check(name)  # raises the unknown-model error with suggestions
            if not Path(file).is_file():
                raise SettingError(f"--weights {name}={file}: no such file; give NAME=PATH/TO/WEIGHTS")
            card, entry = get_card(name), default_weight(name)
            out.append(BakeoffCandidate(
                name=name, weights=str(Path(file).resolve()), family=card.family,
                params=model_complexity(name)["params"], size_mb=Path(file).stat().st_size / 2**20,
                imagenet_top1=float(entry.imagenet["top1"]) if entry and entry.imagenet and entry.imagenet.get("top1") else None))
        return out, []
    registered = set(list_models())
    best: dict[str, Any] = {}
    dropped_by_licence: dict[str, Any] = {}
    for entry in list_weights():
        if entry.architecture not in registered or entry.num_classes != 1000 or not entry.imagenet \
                or entry.imagenet.get("top1") is None:
            continue
        if commercial and entry.license not in COMMERCIAL_LICENSES:
            dropped_by_licence.setdefault(entry.architecture, entry)
            continue
        current = best.get(entry.architecture)
        if current is None or (entry.default and not current.default) or (
                entry.default == current.default and entry.imagenet["top1"] > current.imagenet["top1"]):
            best[entry.architecture] = entry

    def candidate(entry) -> BakeoffCandidate:
        params = model_complexity(entry.architecture)["params"]
        return BakeoffCandidate(name=entry.architecture, weights=entry.name, family=get_card(entry.architecture).family,
                                params=params, size_mb=params * 4 / 2**20, imagenet_top1=float(entry.imagenet["top1"]))

    usable = [candidate(e) for e in best.values()]
    dropped = [candidate(e) for a, e in dropped_by_licence.items() if a not in best]
    for c, entry in zip(dropped, [e for a, e in dropped_by_licence.items() if a not in best]):
        c.status = f"dropped: licence {entry.license} does not allow commercial use"
    return usable, dropped


def _spread(pool: list[BakeoffCandidate]) -> list[BakeoffCandidate]:
    """The pool reordered so that any prefix spans families and sizes: round-robin over families
    (best ImageNet top-1 first), each family's sizes alternating from the middle outwards."""
    families: dict[str, list[BakeoffCandidate]] = {}
    for c in sorted(pool, key=lambda c: c.params):
        families.setdefault(c.family, []).append(c)
    queues = []
    for members in families.values():
        middle, order = len(members) // 2, []
        for step in range(len(members)):  # middle, then one smaller, one larger, ...
            offset = (step + 1) // 2 * (-1 if step % 2 else 1)
            index = middle + offset
            if 0 <= index < len(members):
                order.append(members[index])
        order += [m for m in members if m not in order]
        queues.append(order)
    queues.sort(key=lambda q: -max(c.imagenet_top1 or 0.0 for c in q))
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def _measure_latency(c: BakeoffCandidate, target: str, image_size: int | None) -> tuple[float, str]:
    """(latency ms, engine) in the target's deploy engine, cached per machine by the engine layer."""
    if target == "gpu":
        from visionzoo.choose.advice import GPU_BATCH, _settings
        from visionzoo.choose.benchmark import benchmark_model

        settings = _settings("gpu")
        if image_size:
            settings = type(settings)(**{**asdict(settings), "img_size": image_size})
        result = benchmark_model(c.name, settings)
        return 1e3 / result.throughput[GPU_BATCH], "pytorch-eager-bf16"
    threads = 1 if target == "edge" else None
    try:
        from visionzoo.deploy.engines import measure_engine_latency
    except ImportError:  # the engine layer is not installed here: eager PyTorch, as `advise` measures
        from visionzoo.choose.advice import _settings
        from visionzoo.choose.benchmark import benchmark_model

        settings = _settings(target)
        if image_size:
            settings = type(settings)(**{**asdict(settings), "img_size": image_size})
        return benchmark_model(c.name, settings).latency_ms["p50"], "pytorch-eager"
    from visionzoo.deploy.engines import artifacts_for

    best: tuple[float, str] | None = None
    failures = []
    shared = artifacts_for(c.name, image_size)  # one ONNX export for both engines (files are made on first use)
    for engine in ("onnxruntime-fp32", "onnxruntime-int8"):
        try:
            figures = measure_engine_latency(c.name, engine, 1, threads=threads, img_size=image_size, seconds=0.5,
                                             artifacts=shared)
        except Exception as error:  # one engine failing (an op int8 lacks) costs that engine only
            failures.append(f"{engine}: {str(error).splitlines()[0][:200]}")
            continue
        if best is None or figures["p50"] < best[0]:
            best = (figures["p50"], engine)
    if best is None:
        raise SettingError(f"could not measure {c.name} in any deploy engine: {'; '.join(failures)}")
    return best


def _nothing_fits(pool: list[BakeoffCandidate], latency_ms: float | None, max_params_m: float | None) -> str:
    def over(c: BakeoffCandidate) -> dict[str, float]:
        found = {}
        if max_params_m is not None and c.params / 1e6 > max_params_m:
            found["--max-params"] = c.params / 1e6 / max_params_m - 1
        if latency_ms is not None and c.latency_ms is not None and c.latency_ms > latency_ms:
            found["--latency-ms"] = c.latency_ms / latency_ms - 1
        return found

    if not pool:
        return "nothing fits: no candidate is left (check --weights and --commercial)"
    counts: dict[str, int] = {}
    for c in pool:
        for key in over(c):
            counts[key] = counts.get(key, 0) + 1
    ruling = [k for k, n in counts.items() if n == len(pool)]
    reason = (f"{' and '.join(ruling)} rule{'s' if len(ruling) == 1 else ''} out every candidate" if ruling else
              "no candidate meets every constraint together")
    closest = sorted(pool, key=lambda c: sum(over(c).values()))[:3]
    details = "; ".join(
        f"{c.name} ({', '.join(f'{k} off by {100 * v:.0f}%' for k, v in over(c).items()) or 'fits'}"
        + (f", {c.latency_ms:.2f} ms" if c.latency_ms is not None else "") + f", {c.params / 1e6:.2f}M params)"
        for c in closest)
    return f"nothing fits: {reason}. Closest: {details}"


# --- stage 2: probe ----------------------------------------------------------------------------


def _selection(val, limit: int, seed: int = 0):
    """At most `limit` validation samples, stratified: what probes and halving rungs are scored on."""
    import numpy as np

    from visionzoo.data.sources import stratified_split

    if len(val) <= limit:
        return val, None
    _, keep = stratified_split(val.labels, limit / len(val), seed)
    return val.subset(np.asarray(keep)), keep


def _model_data_config(model, image_size: int | None) -> dict[str, Any]:
    from visionzoo.factory import data_config as model_data_config

    config = dict(model_data_config(model))
    if image_size:
        config.update(input_size=(3, image_size, image_size), crop_pct=1.0)
    return config


def _probe(c: BakeoffCandidate, splits, selection, cache_dir: Path, image_size: int | None,
           device: str, progress: Callable[[int], None]) -> tuple[float, float, int]:
    """(linear top-1, k-NN top-1, images embedded now) of one candidate."""
    import visionzoo
    from visionzoo.embed.embeddings import Embeddings, embed_samples
    from visionzoo.embed.probe import run_probe

    model = visionzoo.create_model(c.name, pretrained=c.weights)
    config = _model_data_config(model, image_size)
    identity = {"model": c.name, "weights": _weights_identity(c.weights)}
    parts: dict[str, Embeddings] = {}
    embedded = 0
    for part, samples in (("train", splits.train), ("val", selection)):
        result = embed_samples(model, samples, splits.classes, cache_dir, identity=identity, data_config=config,
                               device=device, on_batch=progress)
        parts[part] = result
        embedded += result.embedded  # type: ignore[attr-defined]
    linear = run_probe(parts["train"], parts["val"], "linear").top1
    knn = run_probe(parts["train"], parts["val"], "knn").top1
    return linear, knn, embedded


# --- stage 3: fine-tune ------------------------------------------------------------------------


def _recipe() -> str:
    from visionzoo.training.settings import RECIPES

    return "auto" if "auto" in RECIPES else "finetune"


def _planned_epochs(name: str, splits, num_val: int, image_size: int | None, settings: dict[str, Any]) -> int:
    """The epochs the transfer recipe gives this model and data, so that the rungs can be placed."""
    import inspect

    from visionzoo.training.settings import TrainSettings, resolve_settings

    if settings.get("epochs"):
        return int(settings["epochs"])
    requested = TrainSettings(recipe=_recipe(), image_size=image_size, **{k: v for k, v in settings.items()
                                                                        if k != "epochs"})
    extra = {}
    parameters = inspect.signature(resolve_settings).parameters
    if "num_train" in parameters:  # the data-size-aware transfer recipes
        extra = {"pretrained": True, "num_train": len(splits.train), "num_val": num_val}
    return int(resolve_settings(requested, name, native_size=splits.native_size, **extra).epochs)


def _rung_every(epochs: int) -> int:
    return max(1, round(epochs / 3))  # validated at about a third and two thirds, and at the end


def _train_argv(c: BakeoffCandidate, data: str, run_dir: Path, device: str, epochs: int, image_size: int | None,
                settings: dict[str, Any]) -> list[str]:
    argv = ["train", "--model", c.name, "--pretrained", c.weights, "--data", data, "--recipe", _recipe(),
            "--epochs", str(epochs), "--val-every", str(_rung_every(epochs)), "--out", str(run_dir)]
    if image_size:
        argv += ["--image-size", str(image_size)]
    for key, value in settings.items():
        if key == "epochs":
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv + ["--device", device]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A fine-tune process dies with the bake-off (kill -9 included), so a rerun never races an orphan."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _val_curve(run_dir: Path) -> dict[int, float]:
    """{epoch: val top-1} from the run's metrics_epochs.csv (epochs that were validated)."""
    path = run_dir / "metrics_epochs.csv"
    if not path.is_file():
        return {}
    curve = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("val_top1"):
                curve[int(row["epoch"])] = float(row["val_top1"])
    return curve


def _finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() or (run_dir / "last" / "config.json").is_file()


def _halving_verdict(key: str, curves: dict[str, dict[int, float]], epochs: int) -> tuple[int, float, float] | None:
    """(epoch, its top-1, the leader's) when `key` falls out of the better half at a rung before the end."""
    for epoch in sorted(curves[key]):
        if epoch >= epochs:
            break
        mine = curves[key][epoch]
        others = [curve[epoch] for other, curve in curves.items() if other != key and epoch in curve]
        if not others:
            continue
        better = sum(value > mine for value in others)
        if better >= math.ceil((len(others) + 1) / 2):  # not in the top half (eta 2); ties stay
            return epoch, mine, max(others)
    return None


def _fine_tune(finalists: list[BakeoffCandidate], state: _State, data: str, out: Path, devices: list[str],
               budget_s: float | None, image_size: int | None, settings: dict[str, Any], epochs_of: dict[str, int],
               progress: Callable[[str, int, int], None]) -> None:
    """Run the finalists' fine-tunes, one process per device, halving at the rungs, within the budget."""
    used = float(state.data.get("finetune_seconds", 0.0))
    # Cheapest first: a run that starts while no other has reached its rungs cannot be stopped by
    # them, so the one that goes unchallenged should be the one that costs least.
    queue = sorted((c for c in finalists if state.get(c.name).get("finetune", {}).get("state") not in ("done", "stopped")),
                   key=lambda c: (c.params, c.latency_ms or 0.0))
    running: dict[str, tuple[subprocess.Popen, str]] = {}
    free = list(devices)
    curves = {c.name: _val_curve(Path(state.get(c.name)["finetune"]["run_dir"]))
              for c in finalists if state.get(c.name).get("finetune")}
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if len(devices) > 1 and all(d == "cpu" for d in devices):
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // len(devices))))

    def stop(key: str, status: str) -> None:
        process, device = running.pop(key)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        free.append(device)
        entry = state.get(key)["finetune"]
        entry.update(state="stopped", reason=status)
        state.save()

    try:
        while queue or running:
            spent = used + time.monotonic() - started
            while queue and free and (budget_s is None or spent < budget_s):
                c = queue.pop(0)
                device = free.pop(0)
                entry = state.get(c.name).setdefault("finetune", {})
                run_dir = Path(entry.get("run_dir") or out / "runs" / c.name)
                epochs = epochs_of[c.name]
                if (run_dir / "checkpoint").exists() and (run_dir / "config.json").exists():
                    argv = ["train", "--resume", str(run_dir), "--device", device]
                else:
                    import shutil

                    shutil.rmtree(run_dir, ignore_errors=True)  # started but never checkpointed: start again
                    argv = _train_argv(c, data, run_dir, device, epochs, image_size, settings)
                entry.update(state="running", run_dir=str(run_dir), device=device, epochs=epochs,
                             command=_train_argv(c, data, run_dir, "DEVICE", epochs, image_size, settings)[:-2])
                state.save()
                (out / "runs").mkdir(parents=True, exist_ok=True)
                log = open(out / "runs" / f"{c.name}.log", "ab")
                process = subprocess.Popen([sys.executable, "-m", "visionzoo.cli", *argv, "--no-progress"],
                                           stdout=log, stderr=subprocess.STDOUT, env=env,
                                           preexec_fn=_die_with_parent if os.name == "posix" else None)
                log.close()
                running[c.name] = (process, device)
            if not running:
                break  # the budget is spent before the rest could start
            time.sleep(0.3)
            for key in list(running):
                process, device = running[key]
                entry = state.get(key)["finetune"]
                run_dir = Path(entry["run_dir"])
                curves[key] = _val_curve(run_dir)
                progress(key, max(curves[key], default=0), entry["epochs"])
                verdict = _halving_verdict(key, curves, entry["epochs"])
                if verdict and process.poll() is None:
                    epoch, mine, leader = verdict
                    stop(key, f"stopped at epoch {epoch} of {entry['epochs']} by successive halving: val top-1 "
                              f"{100 * mine:.1f}% below the leader's {100 * leader:.1f}% at the same epoch")
                    continue
                code = process.poll()
                if code is not None:
                    running.pop(key)
                    free.append(device)
                    if code == 0 and _finished(run_dir):
                        entry.update(state="done")
                    else:
                        entry.update(state="failed", reason=f"visionzoo train exited with code {code}; see "
                                                            f"{out / 'runs' / (key + '.log')}")
                    state.save()
                    _kill_point("after-finetune")
            spent = used + time.monotonic() - started
            if budget_s is not None and spent >= budget_s:
                for key in list(running):
                    stop(key, f"stopped: --budget-min {budget_s / 60:g} spent")
                for c in queue:
                    state.get(c.name).setdefault("finetune", {}).update(state="skipped", reason="--budget-min spent "
                                                                        "before it could start")
                queue.clear()
    finally:
        for key in list(running):  # an exception here: leave the runs resumable, not orphaned
            process, _ = running.pop(key)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait()
        state.data["finetune_seconds"] = used + time.monotonic() - started
        state.save()


def _best_top1(run_dir: Path) -> float | None:
    summary = run_dir / "summary.json"
    if summary.is_file():
        value = json.loads(summary.read_text()).get("best_val_top1")
        if value is not None:
            return float(value)
    curve = _val_curve(run_dir)
    return max(curve.values()) if curve else None


# --- stage 4: result ---------------------------------------------------------------------------


def _export_winner(c: BakeoffCandidate, target: str, out: Path, calib_dir: str | None) -> tuple[str, str]:
    """(export path, the command that makes it) for the winner's best model."""
    import visionzoo
    from visionzoo.deploy.export import export_model

    source = Path(c.run_dir) / "best" if c.run_dir else None
    folder = out / "winner"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    int8 = bool(c.engine and c.engine.endswith("int8"))
    if source is not None and (source / "config.json").exists():
        model = visionzoo.load_model(source).eval()
        command = f"visionzoo export {shlex.quote(str(source))} --out {shlex.quote(str(path))}"
    else:  # nothing fine-tuned: the pretrained backbone as it is
        model = visionzoo.create_model(c.name, pretrained=c.weights).eval()
        command = f"visionzoo export {c.name} --pretrained {shlex.quote(c.weights)} --out {shlex.quote(str(path))}"
    if target == "gpu":
        int8 = False
    # Without a folder of images to calibrate on (built-in or CSV data), int8 is the dynamic scheme,
    # which needs no calibration; with one, the scheme `export --int8` picks.
    scheme = "auto" if calib_dir else "dynamic"
    export_model(model, path, int8=int8, calib_dir=calib_dir, int8_scheme=scheme)
    if int8:
        command += " --int8" + (f" --calib {shlex.quote(calib_dir)}" if calib_dir else " --int8-scheme dynamic")
        return str(path.with_name("model.int8.onnx")) if path.with_name("model.int8.onnx").exists() else str(path), command
    return str(path), command


def plot_bakeoff(result: BakeoffResult, path: str | Path) -> str:
    """Validation top-1 on the user's data against deploy latency; ImageNet top-1 as hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from visionzoo.choose.advice import pareto_front

    pool = [c for c in result.candidates if c.latency_ms is not None and (c.probe_top1 is not None
                                                                          or c.finetune_top1 is not None)]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    xs = [c.latency_ms for c in pool]
    ys = [100 * (c.finetune_top1 if c.finetune_top1 is not None else c.probe_top1) for c in pool]
    colours = ["tab:red" if result.winner and c.name == result.winner["name"] else
               "tab:blue" if c.finetune_top1 is not None else "tab:cyan" for c in pool]
    ax.scatter(xs, ys, c=colours, s=40, zorder=3, label="your validation set (blue: fine-tuned, cyan: probe)")
    hollow = [(c.latency_ms, c.imagenet_top1) for c in pool if c.imagenet_top1 is not None]
    if hollow:
        ax.scatter([x for x, _ in hollow], [y for _, y in hollow], s=40, facecolors="none", edgecolors="gray",
                   zorder=2, label="published ImageNet top-1")
    for c, x, y in zip(pool, xs, ys):
        ax.annotate(c.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if pool:
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:orange", zorder=1,
                label="Pareto frontier")
    if result.constraints.get("latency_ms"):
        ax.axvline(result.constraints["latency_ms"], color="tab:red", linestyle="--", linewidth=1, label="latency limit")
    if xs and max(xs) / max(min(xs), 1e-9) > 10:
        ax.set_xscale("log")
    engines = sorted({c.engine for c in pool if c.engine})
    ax.set_xlabel(f"deploy latency here (ms; {', '.join(engines) or 'no engine'})")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"visionzoo advise --data ... --target {result.target}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


# --- the workflow ------------------------------------------------------------------------------


def bakeoff(data: str | os.PathLike, *, target: str = "cpu", latency_ms: float | None = None,
            max_params_m: float | None = None, commercial: bool = False, weights: dict[str, str] | None = None,
            candidates: int = 8, finetune_top: int = 2, budget_min: float | None = None,
            out: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
            devices: list[str] | None = None, image_size: int | None = None,
            finetune_settings: dict[str, Any] | None = None, selection_images: int = SELECTION_IMAGES,
            cache_dir: str | os.PathLike | None = None, progress: bool = True, max_measured: int | None = None,
            measure_fn: Callable[[BakeoffCandidate, str, int | None], tuple[float, str]] | None = None
            ) -> BakeoffResult:
    """Choose a model on `data` (a folder, CSV, archive or builtin:shapes) for `target`; see the module docstring.

    `image_size` trains, embeds and measures every candidate at that side (default: each model's
    own); `finetune_settings` adds `visionzoo train` settings (e.g. {"epochs": 3}); `cache_dir`
    holds the embeddings (default: the visionzoo cache, shared by every run).
    """
    from visionzoo.choose.advice import TARGETS
    from visionzoo.data.sources import cache_root, resolve_data

    if target not in TARGETS:
        raise SettingError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if candidates < 1 or finetune_top < 0:
        raise SettingError(f"--candidates must be >= 1 and --finetune-top >= 0, got {candidates} and {finetune_top}")
    devices = list(devices or ["cpu"])
    if target == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise SettingError("target 'gpu' measures on a CUDA GPU and none is visible; use --target cpu or edge")
    settings = dict(finetune_settings or {})
    data_text = str(data)
    out = Path(out or f"bakeoff-{Path(data_text).stem or 'data'}")
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else cache_root() / "embeddings"
    constraints = {k: v for k, v in {"latency_ms": latency_ms, "max_params_m": max_params_m,
                                     "commercial": commercial or None}.items() if v is not None}
    request = {"data": os.path.abspath(data_text) if Path(data_text).exists() else data_text, "target": target,
               "constraints": constraints, "weights": weights or None, "image_size": image_size,
               "finetune_settings": settings, "selection_images": selection_images}
    state = _State(out, request)
    seconds: dict[str, float] = {}
    measure = measure_fn or _measure_latency

    splits = resolve_data(data_text)
    if splits.val is None or not len(splits.val):
        raise DataError(f"{data_text} has no validation images to choose on; add a val/ folder or more images")
    selection, kept = _selection(splits.val, selection_images)
    train_data = data_text
    if kept is not None:  # fine-tunes validate (and halve) on the selection; the winner is scored on all of val
        train_data = str(_split_csv(out / "selection.csv", splits.classes,
                                    [(splits.train, "train"), (selection, "val")]))
    data_summary = {"train": len(splits.train), "val": len(splits.val), "classes": list(splits.classes)}

    with _progress(progress) as bars:
        overall = bars.add_task("bake-off", total=None)

        # 1. candidates
        started = time.monotonic()
        pool, dropped = _pool(weights, commercial)
        ordered = _spread(pool)
        static = [c for c in ordered if max_params_m is None or c.params / 1e6 <= max_params_m]
        for c in ordered:
            if c not in static:
                c.status = f"dropped: {c.params / 1e6:.2f}M params > --max-params {max_params_m:g}"
        limit = max_measured or max(3 * candidates, candidates + 4)
        task = bars.add_task("candidates: measuring latency", total=min(len(static), limit))
        chosen: list[BakeoffCandidate] = []
        measured: list[BakeoffCandidate] = []
        for c in static[:limit]:
            if len(chosen) >= candidates:
                c.status = f"not chosen: --candidates {candidates} already spread across families and sizes"
                continue
            saved = state.get(c.name)
            if saved.get("latency_ms") is None:
                bars.update(task, description=f"candidates: measuring {c.name}")
                saved["latency_ms"], saved["engine"] = measure(c, target, image_size)
                state.save()
            c.latency_ms, c.engine = saved["latency_ms"], saved["engine"]
            measured.append(c)
            bars.advance(task)
            if latency_ms is not None and c.latency_ms > latency_ms:
                c.status = f"dropped: {c.latency_ms:.2f} ms in {c.engine} > --latency-ms {latency_ms:g}"
            else:
                chosen.append(c)
        for c in static[limit:]:
            c.status = "not measured: beyond the candidates tried"
        seconds["candidates"] = time.monotonic() - started
        everyone = ordered + dropped
        _kill_point("after-candidates")
        if not chosen:
            message = _nothing_fits(measured or static or pool, latency_ms, max_params_m)
            return _finish(BakeoffResult(target, constraints, data_summary, everyone, None, message, out=str(out),
                                         seconds=seconds), plot, out)

        # 2. probe
        started = time.monotonic()
        embedded = 0
        per_candidate = len(splits.train) + len(selection)
        bars.update(overall, total=len(chosen) * (1 + per_candidate // 64) + finetune_top * 10)
        task = bars.add_task("probe: embedding", total=len(chosen) * per_candidate)
        for c in chosen:
            saved = state.get(c.name)
            if saved.get("probe_top1") is None:
                bars.update(task, description=f"probe: embedding with {c.name}")
                saved["probe_top1"], saved["knn_top1"], count = _probe(
                    c, splits, selection, cache, image_size, devices[0] if devices[0] != "cpu" else "cpu",
                    lambda n: bars.advance(task, n))
                embedded += count
                state.save()
                _kill_point("after-probe")
            else:
                bars.advance(task, per_candidate)
            c.probe_top1, c.knn_top1 = saved["probe_top1"], saved["knn_top1"]
            c.status = "probed"
            bars.advance(overall, 1 + per_candidate // 64)
        seconds["probe"] = time.monotonic() - started

        # 3. fine-tune the top K
        ranked = sorted(chosen, key=lambda c: (-c.probe_top1, -(c.knn_top1 or 0), c.latency_ms))
        finalists = ranked[:finetune_top]
        for rank, c in enumerate(ranked[finetune_top:], finetune_top + 1):
            c.status = f"not fine-tuned: probe rank {rank} > --finetune-top {finetune_top}"
        started = time.monotonic()
        if finalists:
            epochs_of = {c.name: _planned_epochs(c.name, splits, len(selection), image_size, settings)
                         for c in finalists}
            total_epochs = sum(epochs_of.values())
            task = bars.add_task("fine-tune", total=total_epochs)
            bars.update(overall, total=len(chosen) * (1 + per_candidate // 64) + total_epochs)
            reached: dict[str, int] = {}

            def on_epoch(key: str, epoch: int, _epochs: int) -> None:
                delta = epoch - reached.get(key, 0)
                if delta > 0:
                    reached[key] = epoch
                    bars.update(task, description=f"fine-tune: {key} epoch {epoch}/{_epochs}")
                    bars.advance(task, delta)
                    bars.advance(overall, delta)

            _fine_tune(finalists, state, train_data, out, devices, budget_min * 60 if budget_min else None,
                       image_size, settings, epochs_of, on_epoch)
            for c in finalists:
                entry = state.get(c.name).get("finetune", {})
                c.run_dir = entry.get("run_dir")
                c.finetune_top1 = _best_top1(Path(c.run_dir)) if c.run_dir else None
                if entry.get("state") == "done":
                    c.status = "fine-tuned"
                else:
                    c.status = entry.get("reason") or f"fine-tune {entry.get('state', 'not started')}"
        seconds["finetune"] = time.monotonic() - started

    # 4. result: the winner by fine-tuned top-1 (a finished run beats a stopped one), else by probe
    started = time.monotonic()
    done = [c for c in finalists if c.status == "fine-tuned" and c.finetune_top1 is not None]
    winner_c = max(done, key=lambda c: (c.finetune_top1, -c.latency_ms)) if done else ranked[0]
    if kept is not None and winner_c.run_dir:
        full_val = _split_csv(out / "val.csv", splits.classes, [(splits.val, "val")])
        winner_c.finetune_top1 = _full_val_top1(winner_c, state, str(full_val))  # on every validation image
    winner_top1 = winner_c.finetune_top1 if winner_c in done else winner_c.probe_top1
    saved_winner = state.data.get("winner") or {}
    if saved_winner.get("name") == winner_c.name and Path(saved_winner.get("export", "")).exists():
        export_path, export_command = saved_winner["export"], saved_winner["export_command"]
    else:
        calib = str(Path(data_text) / "train") if (Path(data_text) / "train").is_dir() else (
            data_text if Path(data_text).is_dir() else None)
        export_path, export_command = _export_winner(winner_c, target, out, calib)
    winner_c.status = "winner" + (" (fine-tuned)" if winner_c in done else " (probe only: nothing was fine-tuned)")
    winner = {"name": winner_c.name, "weights": winner_c.weights, "top1": winner_top1,
              "latency_ms": winner_c.latency_ms, "engine": winner_c.engine, "run_dir": winner_c.run_dir,
              "export": export_path}
    state.data["winner"] = {**winner, "export_command": export_command}
    state.save()
    commands = {"export": export_command}
    entry = state.get(winner_c.name).get("finetune")
    if entry and entry.get("command"):
        commands["train"] = "visionzoo " + " ".join(shlex.quote(a) for a in entry["command"])
    seconds["result"] = time.monotonic() - started
    result = BakeoffResult(target, constraints, data_summary, everyone, winner, "", commands, out=str(out),
                           embedded=embedded, seconds=seconds)
    return _finish(result, plot, out)


def _finish(result: BakeoffResult, plot, out: Path) -> BakeoffResult:
    result.plot = plot_bakeoff(result, plot or out / "pareto.png")
    _write_json(out / "bakeoff.json", {**result.as_dict(), "message": result.message, "commands": result.commands,
                                       "seconds": result.seconds})
    return result


def _split_csv(path: Path, classes: list[str], parts) -> Path:
    """A CSV of path,label,split from (samples, split) pairs, for processes that take --data text."""
    from visionzoo.data.sources import FileSamples
    from visionzoo.files import atomic_write

    lines = ["path,label,split"]
    for samples, split in parts:
        if not isinstance(samples, FileSamples):
            raise DataError("a validation set larger than the selection needs image files; pass "
                            f"selection_images >= {len(samples)}")
        for file, label in zip(samples.paths, samples.labels):
            lines.append(f"{os.path.abspath(file)},{classes[int(label)]},{split}")
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def _full_val_top1(c: BakeoffCandidate, state: _State, data: str) -> float:
    """The winner's best model evaluated on every validation image (the fine-tunes saw only the selection)."""
    saved = state.get(c.name)
    if saved.get("full_val_top1") is None:
        from visionzoo.evaluation import evaluate

        saved["full_val_top1"] = float(evaluate(str(Path(c.run_dir) / "best"), data)["top1"])
        state.save()
    return saved["full_val_top1"]
