"""What a finished run folder says about itself, read once for the model card and the runs table.

A run folder (`visionzoo train --out DIR`) holds `config.json` (the model, data, resolved settings
and the rule that chose each, `settings_source`), `summary.json` (history, best epoch, cost),
`calibration.json` and `best/` (the model, with its own `config.json`). `RunRecord.read` gathers
them; `find_runs` walks folders for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionzoo.errors import SettingError

__all__ = ["RunRecord", "find_runs", "data_name", "hub_dataset"]


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SettingError(f"{path} is not valid JSON ({error}); the run folder is damaged") from None


def data_name(data: str) -> str:
    """A short name of a run's data: a builtin set's name or the folder's, never the full local path."""
    text = str(data).split("?")[0]
    if text.startswith("builtin:"):
        return text
    if hub_dataset(text):
        return hub_dataset(text)
    return Path(text.rstrip("/")).name.split(".")[0] or text


def hub_dataset(data: str) -> str | None:
    """`OWNER/NAME` of a run's data given as `hf://datasets/OWNER/NAME`, else None."""
    prefix = "hf://datasets/"
    if not str(data).startswith(prefix):
        return None
    parts = str(data)[len(prefix):].split("?")[0].split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else None


@dataclass
class RunRecord:
    """One run folder's files, as read."""

    run_dir: Path
    config: dict[str, Any]  # the run's config.json
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json ({} while it runs or when it stopped early)
    model_config: dict[str, Any] = field(default_factory=dict)  # best/config.json
    calibration: dict[str, Any] | None = None

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        run_dir = Path(run_dir)
        config = _json(run_dir / "config.json")
        if config is None or "resolved" not in config:
            raise FileNotFoundError(f"{run_dir} is not a training run folder (no config.json written by "
                                    "`visionzoo train`)")
        return cls(run_dir, config, _json(run_dir / "summary.json") or {}, _json(run_dir / "best" / "config.json") or {},
                   _json(run_dir / "calibration.json"))

    @property
    def finished(self) -> bool:
        return bool(self.summary) and bool(self.model_config)

    @property
    def task(self) -> str:
        return (self.model_config.get("head") or {}).get("task") or self.config["resolved"].get("task") or "multiclass"

    @property
    def architecture(self) -> str:
        return self.model_config.get("architecture") or self.config["model"]

    @property
    def base_weights(self) -> str | None:
        """The weights training started from (a catalog name, hf-hub id or file), None from scratch."""
        if not self.config.get("pretrained"):
            return None
        return self.model_config.get("weights") or str(self.config["pretrained"])

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.summary.get("history") or [])

    def best_record(self) -> dict[str, Any]:
        """The best epoch's record (val_top1, val_top5, val_ece, val_loss; val_map for multi-label), else
        the last validated epoch's; {} when no epoch was validated."""
        history = [r for r in self.history if any(k.startswith("val_") for k in r)]
        best = self.summary.get("best_epoch")
        chosen = [r for r in history if r.get("epoch") == best]
        return dict(chosen[0] if chosen else (history[-1] if history else {}))

    def best_metrics(self) -> dict[str, float]:
        """The validation metrics of best/: from the best epoch's record, names without `val_`."""
        record = self.best_record()
        metrics = {key[len("val_"):]: value for key, value in record.items()
                   if key.startswith("val_") and isinstance(value, (int, float))}
        if self.calibration and "ece_after" in self.calibration:
            metrics["ece_calibrated"] = self.calibration["ece_after"]
        return metrics

    def train_seconds(self) -> float | None:
        time = self.summary.get("time")
        return round(sum(time.values()), 1) if isinstance(time, dict) else None


def find_runs(folders: list[str | Path]) -> list[Path]:
    """The run folders at or under `folders` (each holding config.json with resolved settings and
    metrics_steps.jsonl), sorted."""
    found: set[Path] = set()
    for folder in map(Path, folders):
        if not folder.exists():
            raise FileNotFoundError(f"no such folder: {folder}")
        for config in [folder / "config.json", *folder.rglob("config.json")]:
            if config.parent.name in ("best", "last") or not config.is_file():
                continue
            # metrics_steps.jsonl: written from a run's start, and by nothing else (copies of a run's files, as a
            # tracker's artifacts, have config.json but not it)
            if not (config.parent / "metrics_steps.jsonl").exists():
                continue
            data = _json(config)
            if isinstance(data, dict) and "resolved" in data and "model" in data:
                found.add(config.parent)
    return sorted(found)
