"""Stage 4 of the bake-off: the winner (by fine-tuned top-1, a finished run before a stopped one, else
by probe), scored on every validation image, exported for its deploy engine; the table, the
commands that reproduce it, OUT/bakeoff.json and the Pareto plot.

`scored_by` is the one answer to "which top-1 of this candidate counts, and from what": the winner's
choice, its `--json` entry (top1, scored_by, status), its export (the fine-tuned best/ exactly when it
was scored by its fine-tune), the CLI's winner line and the plot all read it, so they cannot disagree."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionzoo.choose.bakeoff.data import split_csv
from visionzoo.choose.bakeoff.decision import close_to_leader, closeness
from visionzoo.choose.bakeoff.state import BakeoffRequest, BakeoffState
from visionzoo.choose.candidates import Candidate, pareto_front
from visionzoo.files import atomic_write_json

__all__ = ["BakeoffResult", "PlotPoint", "choose_winner", "draw_bakeoff", "export_winner", "plot_bakeoff",
           "plot_points", "scored_by", "write_result"]

FINE_TUNED, PROBE = "fine-tune", "probe"


def scored_by(c: Candidate) -> tuple[float | None, str]:
    """(the top-1 that counts for `c` on the user's validation images, where it comes from): its fine-tune's,
    finished or stopped early, when one validated (its best/ is the model it would deploy), else its probe's."""
    if c.finetune_top1 is not None:
        return c.finetune_top1, FINE_TUNED
    return c.probe_top1, PROBE


@dataclass
class BakeoffResult:
    target: str
    constraints: dict[str, Any]
    data: dict[str, Any]  # {"train": N, "val": N, "classes": [...]}
    candidates: list[Candidate]
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


def choose_winner(ranked: list[Candidate], finalists: list[Candidate], request: BakeoffRequest,
                  state: BakeoffState, splits, selection_kept, num_selection: int | None = None,
                  seconds: dict[str, float] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(the winner's --json entry, the commands that reproduce it); exports it into OUT/winner.

    The winner is the best fine-tune on the selection (a finished run before a stopped one), unless the
    finished finalists end within one standard error of each other there: then the full validation set
    decides (`decision.close_to_leader`), and the entry's "decision" says how close it was. `seconds` gets
    the export's wall time as "result: export" (the rest of "result" is scoring on the full validation set)."""
    tuned = [c for c in finalists if scored_by(c)[1] == FINE_TUNED]
    decision = None
    if tuned:
        winner, decision = _decide(tuned, request, state, splits, selection_kept, num_selection)
    else:
        winner = ranked[0]
    saved = state.data.get("winner") or {}
    if saved.get("name") == winner.name and Path(saved.get("export", "")).exists():
        export_path, export_command = saved["export"], saved["export_command"]
    else:
        started = time.monotonic()
        export_path, export_command = export_winner(winner, request.target, request.out, _calibration_dir(request.data))
        if seconds is not None:
            seconds["result: export"] = time.monotonic() - started
    top1, basis = scored_by(winner)
    if basis == PROBE:
        winner.status = "winner (probe only: nothing was fine-tuned)"
    else:
        winner.status = "winner (fine-tuned" + ("" if winner.status == "fine-tuned" else f"; {winner.status}") + ")"
    entry = {"name": winner.name, "weights": winner.weights, "top1": top1, "scored_by": basis,
             "status": winner.status, "latency_ms": winner.latency_ms, "engine": winner.engine,
             "run_dir": winner.run_dir if basis == FINE_TUNED else None, "export": export_path, "decision": decision}
    state.data["winner"] = {**entry, "export_command": export_command}
    state.save()
    commands = {"export": export_command}
    finetune = state.get(winner.name).get("finetune")
    if finetune and finetune.get("command"):
        commands["train"] = "visionzoo " + " ".join(shlex.quote(a) for a in finetune["command"])
    return entry, commands


def _decide(tuned: list[Candidate], request: BakeoffRequest, state: BakeoffState, splits, selection_kept,
            num_selection: int | None) -> tuple[Candidate, str | None]:
    """(the winner among the fine-tuned finalists, how it was decided when that was close)."""
    finished = [c for c in tuned if c.status == "fine-tuned"] or tuned
    on_selection = {c.name: c.finetune_top1 for c in finished}
    leader = max(finished, key=lambda c: (c.finetune_top1, -(c.latency_ms or 0.0)))
    size = num_selection or (len(splits.val) if splits is not None else 0)
    close = close_to_leader(on_selection, size) if size else [leader.name]
    if len(close) < 2:
        if selection_kept is not None:  # the fine-tunes saw only the selection: the winner on all of val
            leader.finetune_top1 = _full_val_top1(leader, state, _rest_of_val(request, splits, selection_kept))
        return leader, None
    close_top1 = {name: on_selection[name] for name in close}
    if selection_kept is None:  # the selection was all of val: nothing more to decide on
        return leader, closeness(close_top1, size)
    rest = _rest_of_val(request, splits, selection_kept)
    contenders = [c for c in finished if c.name in close]
    on_full = {c.name: _full_val_top1(c, state, rest) for c in contenders}
    for c in contenders:  # each is now scored on every validation image, as the table shows
        c.finetune_top1 = on_full[c.name]
    winner = max(contenders, key=lambda c: (on_full[c.name], -(c.latency_ms or 0.0)))
    return winner, closeness(close_top1, size, on_full, len(splits.val))


def _calibration_dir(data: str) -> str | None:
    """A folder of the user's training images for int8 calibration, when the data is a folder."""
    if (Path(data) / "train").is_dir():
        return str(Path(data) / "train")
    return data if Path(data).is_dir() else None


@dataclass(frozen=True)
class RestOfVal:
    """The validation images outside the selection, as a CSV, and how many images each part holds."""

    csv: str
    num_rest: int
    num_selection: int


def _rest_of_val(request: BakeoffRequest, splits, selection_kept) -> RestOfVal:
    import numpy as np

    kept = set(int(i) for i in selection_kept)
    rest = np.asarray([i for i in range(len(splits.val)) if i not in kept], dtype=np.int64)
    csv = split_csv(request.out / "val-rest.csv", splits.classes, [(splits.val.subset(rest), "val")])
    return RestOfVal(str(csv), len(rest), len(kept))


def _full_val_top1(c: Candidate, state: BakeoffState, rest: RestOfVal) -> float:
    """A fine-tuned finalist's top-1 on every validation image, each scored once: its best/ model's
    validation on the selection, which its fine-tune already measured (`finetune_top1`: training's
    validation is `evaluate`'s, one preprocessing path), with `evaluate` of best/ on the rest only."""
    saved = state.get(c.name)
    if saved.get("full_val_top1") is None:
        from visionzoo.evaluation import evaluate

        on_rest = float(evaluate(str(Path(c.run_dir) / "best"), rest.csv)["top1"]) if rest.num_rest else 0.0
        correct = round(c.finetune_top1 * rest.num_selection) + round(on_rest * rest.num_rest)
        saved["full_val_top1"] = correct / (rest.num_selection + rest.num_rest)
        state.save()
    return saved["full_val_top1"]


def export_winner(c: Candidate, target: str, out: Path, calib_dir: str | None) -> tuple[str, str]:
    """(export path, the command that makes it) for the winner's best model."""
    import visionzoo
    from visionzoo.deploy.export import export_model

    source = Path(c.run_dir) / "best" if c.run_dir and scored_by(c)[1] == FINE_TUNED else None
    folder = out / "winner"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    int8 = bool(c.engine and c.engine.endswith("int8")) and target != "gpu"
    if source is not None and (source / "config.json").exists():
        model = visionzoo.load_model(source).eval()
        command = f"visionzoo export {shlex.quote(str(source))} --out {shlex.quote(str(path))}"
    else:  # nothing fine-tuned: the pretrained backbone as it is
        model = visionzoo.create_model(c.name, pretrained=c.weights).eval()
        command = f"visionzoo export {c.name} --pretrained {shlex.quote(c.weights)} --out {shlex.quote(str(path))}"
    # Without a folder of images to calibrate on (built-in or CSV data), int8 is the dynamic scheme,
    # which needs no calibration; with one, the scheme `export --int8` picks.
    scheme = "auto" if calib_dir else "dynamic"
    export_model(model, path, int8=int8, calib_dir=calib_dir, int8_scheme=scheme)
    if not int8:
        return str(path), command
    command += " --int8" + (f" --calib {shlex.quote(calib_dir)}" if calib_dir else " --int8-scheme dynamic")
    quantised = path.with_name("model.int8.onnx")
    return str(quantised) if quantised.exists() else str(path), command


def write_result(result: BakeoffResult, plot: str | Path | None, out: Path) -> BakeoffResult:
    """The plot (default OUT/pareto.png) and OUT/bakeoff.json: the --json shape with message, commands, seconds."""
    result.plot = plot_bakeoff(result, plot or out / "pareto.png")
    atomic_write_json(out / "bakeoff.json", {**result.as_dict(), "message": result.message,
                                             "commands": result.commands, "seconds": result.seconds})
    return result


@dataclass(frozen=True)
class PlotPoint:
    """One candidate on the Pareto plot: where it sits and what its marker says."""

    name: str
    latency_ms: float
    top1: float  # percent, `scored_by`
    scored_by: str  # FINE_TUNED or PROBE
    winner: bool


# the fill colour and legend label of each kind of point; the winner keeps its kind's fill inside a red ring
POINT_STYLE = {FINE_TUNED: ("tab:blue", "fine-tuned on your validation set"),
               PROBE: ("tab:cyan", "linear probe on your validation set")}
WINNER_RING = "tab:red"


def plot_points(result: BakeoffResult) -> list[PlotPoint]:
    """The candidates the plot draws: each measured one with a top-1, at its `scored_by` top-1."""
    points = []
    for c in result.candidates:
        top1, basis = scored_by(c)
        if c.latency_ms is not None and top1 is not None:
            points.append(PlotPoint(c.name, c.latency_ms, 100 * top1, basis,
                                    bool(result.winner) and c.name == result.winner["name"]))
    return points


def draw_bakeoff(result: BakeoffResult, ax) -> list[PlotPoint]:
    """Validation top-1 on the user's data against deploy latency on `ax`; ImageNet top-1 as hollow
    markers. Returns the points drawn."""
    points = plot_points(result)
    for basis, (colour, label) in POINT_STYLE.items():
        kind = [p for p in points if p.scored_by == basis]
        if kind:
            ax.scatter([p.latency_ms for p in kind], [p.top1 for p in kind], c=colour, s=40, zorder=3, label=label)
    for p in points:
        if p.winner:
            ax.scatter([p.latency_ms], [p.top1], s=160, facecolors="none", edgecolors=WINNER_RING, linewidths=2,
                       zorder=4, label=f"winner: {p.name}, {'fine-tuned' if p.scored_by == FINE_TUNED else 'probe'} "
                                       f"{p.top1:.1f}%")
    published = {c.name: c.top1 for c in result.candidates if c.top1 is not None}
    hollow = [(p.latency_ms, published[p.name]) for p in points if p.name in published]
    if hollow:
        ax.scatter([x for x, _ in hollow], [y for _, y in hollow], s=40, facecolors="none", edgecolors="gray",
                   zorder=2, label="published ImageNet top-1")
    for p in points:
        ax.annotate(p.name, (p.latency_ms, p.top1), textcoords="offset points", xytext=(6, 4), fontsize=8)
    xs = [p.latency_ms for p in points]
    if points:
        front = pareto_front([(p.latency_ms, p.top1) for p in points])
        ax.plot([xs[i] for i in front], [points[i].top1 for i in front], "-", color="tab:orange", zorder=1,
                label="Pareto frontier")
    if result.constraints.get("latency_ms"):
        ax.axvline(result.constraints["latency_ms"], color="tab:red", linestyle="--", linewidth=1, label="latency limit")
    if xs and max(xs) / max(min(xs), 1e-9) > 10:
        ax.set_xscale("log")
    engines = sorted({c.engine for c in result.candidates if c.engine and c.name in {p.name for p in points}})
    ax.set_xlabel(f"deploy latency here (ms; {', '.join(engines) or 'no engine'})")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"visionzoo advise --data ... --target {result.target}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return points


def plot_bakeoff(result: BakeoffResult, path: str | Path) -> str:
    """`draw_bakeoff` written to `path` as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    draw_bakeoff(result, ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
