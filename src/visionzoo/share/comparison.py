"""`runs`: the runs under some folders side by side, one row each: model, weights, data, the settings
that differ between them, the best validation metrics, time, peak memory and parameters.

    rows = visionzoo.runs(["runs/"], sort="top1")
    plot_runs(rows, "top1", against="time", path="top1-vs-time.png")

Each row is a flat dict (for --json and --csv alike); the settings columns are `setting.NAME`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from visionzoo.errors import SettingError
from visionzoo.share.record import RunRecord, data_name, find_runs

__all__ = ["runs", "plot_runs", "runs_csv", "FIXED_COLUMNS", "AGAINST"]

FIXED_COLUMNS = ("run", "model", "weights", "data", "task", "epochs", "best_epoch", "top1", "top5", "map", "ece",
                 "loss", "time_s", "peak_memory_mb", "params", "status")
AGAINST = {"time": "time_s", "params": "params"}
# Settings that say how a run was run rather than what it learned, never compared; and epochs, a column of its own.
_NOT_COMPARED = {"epochs", "progress", "device", "workers", "tensorboard", "plots", "log_every", "checkpoint_every", "scan",
                 "track", "track_uri", "cache", "cache_size", "max_unpack_gb", "teacher_cache"}
_ASCENDING = {"loss", "ece", "time_s", "peak_memory_mb", "params", "run", "model", "weights", "data"}  # smaller first


def _row(record: RunRecord) -> dict[str, Any]:
    metrics = record.best_metrics()
    summary = record.summary
    return {
        "run": str(record.run_dir), "model": record.architecture,
        "weights": record.base_weights or "none", "data": data_name(record.config["data"]), "task": record.task,
        "epochs": summary.get("epochs", len(record.history)), "best_epoch": summary.get("best_epoch"),
        **{key: metrics.get(key) for key in ("top1", "top5", "map", "ece", "loss")},
        "time_s": record.train_seconds(), "peak_memory_mb": summary.get("peak_memory_mb"),
        "params": summary.get("total_params"), "status": "finished" if record.finished else "unfinished",
    }


def runs(folders: list[str | Path] | str | Path, *, sort: str | None = None) -> list[dict[str, Any]]:
    """One row per run folder at or under `folders` (see the module docstring). `sort`: a column, best
    first (largest for metrics, smallest for loss, ECE, time, memory and parameters); default: top-1,
    or mAP when every run is multi-label."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    records = [RunRecord.read(path) for path in find_runs(folders)]
    if not records:
        raise FileNotFoundError(f"no training runs (folders with a config.json written by `visionzoo train`) under "
                                f"{', '.join(map(str, folders))}")
    rows = [_row(record) for record in records]
    settings = [{k: v for k, v in r.config["resolved"].items() if k not in _NOT_COMPARED and not isinstance(v, dict)}
                for r in records]
    names = sorted({name for s in settings for name in s})
    differing = [name for name in names if len({repr(s.get(name)) for s in settings}) > 1]
    for row, values in zip(rows, settings):
        row.update({f"setting.{name}": values.get(name) for name in differing})
    key = sort or ("map" if all(row["task"] == "multilabel" for row in rows) else "top1")
    if key not in rows[0]:
        raise SettingError(f"cannot sort by {key!r}; columns: {', '.join(rows[0])}")
    present = [row for row in rows if row[key] is not None]
    missing = [row for row in rows if row[key] is None]
    try:
        present.sort(key=lambda row: row[key], reverse=key not in _ASCENDING)
    except TypeError:  # a settings column of mixed types: compare as text
        present.sort(key=lambda row: str(row[key]), reverse=key not in _ASCENDING)
    return present + missing


def runs_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text, the union of their columns in order."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_runs(rows: list[dict[str, Any]], metric: str, *, against: str = "time", path: str | Path) -> Path:
    """A scatter plot PNG of `metric` (a column: top1, map, ece, ...) against training time or parameters,
    each point labelled with its run folder's name."""
    if against not in AGAINST:
        raise SettingError(f"--against must be one of {', '.join(AGAINST)}, got {against!r}")
    x_key = AGAINST[against]
    if not rows or metric not in rows[0]:
        raise SettingError(f"cannot plot {metric!r}; columns: {', '.join(rows[0]) if rows else 'none (no runs)'}")
    points = [(row[x_key], row[metric], Path(row["run"]).name) for row in rows
              if isinstance(row.get(x_key), (int, float)) and isinstance(row.get(metric), (int, float))]
    if not points:
        raise SettingError(f"no run has both {metric} and {x_key}; nothing to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter([p[0] for p in points], [p[1] for p in points])
    for x, y, name in points:
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set(xlabel="training time (s)" if against == "time" else "parameters", ylabel=metric,
             title=f"{metric} against {'training time' if against == 'time' else 'parameters'}")
    if against == "params":
        axis.set_xscale("log")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
