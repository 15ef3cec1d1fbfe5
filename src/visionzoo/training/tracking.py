"""Experiment trackers: `--track mlflow` and `--track wandb` beside the run folder (TensorBoard stays
the default and is written either way).

A tracker gets what the run folder gets: the parameters (every resolved setting and the rule that
chose it, from config.json, with the model, data and weights), each epoch's metrics, and at the end
the plots, config.json, summary.json and the best model (best/) as artifacts. `RunLogger` owns one,
on rank 0. Which tracker run a run folder logs to is kept in its `tracking.json`, so that `--resume`
continues the same tracker run.

    MLflow   tracking URI: `--track-uri`, else MLFLOW_TRACKING_URI, else MLflow's default (a SQLite
             file, mlflow.db, in the working folder);
             experiment: MLFLOW_EXPERIMENT_NAME, else "visionzoo"
    W&B      project: WANDB_PROJECT, else "visionzoo"; offline (files under the run folder's wandb/,
             `wandb sync` uploads them) unless WANDB_MODE says otherwise or an API key and the
             server are at hand; `--track-uri`: the server (WANDB_BASE_URL)
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from visionzoo.errors import SettingError, require_extra

__all__ = ["TRACKERS", "open_tracker", "MlflowTracker", "WandbTracker", "tracked_params"]

TRACKERS = ("mlflow", "wandb")
TRACKING_FILE = "tracking.json"  # which tracker run this folder logs to
_ARTIFACT_FILES = ("config.json", "summary.json", "calibration.json", "metrics_epochs.csv", "bad_files.txt")


def tracked_params(run_dir: Path) -> dict[str, str]:
    """The run's parameters as text: model, data, pretrained, every resolved setting, and `source.NAME`,
    the rule that chose it (config.json's `settings_source`)."""
    config = json.loads((run_dir / "config.json").read_text())
    params = {"model": config.get("model"), "data": config.get("data"), "pretrained": config.get("pretrained")}
    params.update({k: v for k, v in config.get("resolved", {}).items() if not isinstance(v, dict)})
    params.update({f"source.{k}": v for k, v in (config.get("settings_source") or {}).items()})
    return {key: str(value)[:500] for key, value in params.items()}


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in record.items()
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)}


def _check_reachable(uri: str, what: str) -> None:
    """A clear error at once when an http(s) tracking server does not answer (the clients retry for minutes)."""
    if urlsplit(uri).scheme in ("http", "https") and not _answers(uri, timeout=5):
        raise SettingError(f"cannot reach the {what} server at {uri}; start it, or fix --track-uri")


class MlflowTracker:
    """One MLflow run per run folder, through `mlflow.tracking.MlflowClient`."""

    def __init__(self, run_dir: Path, uri: str | None):
        require_extra("mlflow", "mlflow", "--track mlflow")
        from mlflow.tracking import MlflowClient

        self.run_dir = run_dir
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        if self.uri:
            _check_reachable(self.uri, "MLflow tracking")
        self.client = MlflowClient(tracking_uri=self.uri)
        saved = _saved_run(run_dir, "mlflow")
        if saved is not None:
            self.run_id, self.params_logged = saved, True
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "visionzoo")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=run_dir.name,
                                     tags={"visionzoo.run_dir": str(run_dir.resolve())})
        self.run_id, self.params_logged = run.info.run_id, False
        _save_run(run_dir, "mlflow", self.run_id, self.client.tracking_uri)

    def _log_params(self) -> None:
        """Once, when config.json is there (written as the first epoch starts)."""
        from mlflow.entities import Param

        if not self.params_logged and (self.run_dir / "config.json").exists():
            params = [Param(k, v) for k, v in tracked_params(self.run_dir).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
                self.client.log_batch(self.run_id, params=params[start:start + 100])
            self.params_logged = True

    def log_epoch(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        self._log_params()
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, int(record["epoch"])) for key, value in _numbers(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, finished: bool) -> None:
        self._log_params()  # a run stopped before its first epoch's end has them still to log
        for name in _ARTIFACT_FILES:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        for plot in sorted(self.run_dir.glob("*.png")):
            self.client.log_artifact(self.run_id, str(plot), "plots")
        if (self.run_dir / "best").is_dir():
            self.client.log_artifacts(self.run_id, str(self.run_dir / "best"), "best")
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


class WandbTracker:
    """One W&B run per run folder; offline unless an API key and the server are at hand."""

    def __init__(self, run_dir: Path, uri: str | None):
        wandb = require_extra("wandb", "wandb", "--track wandb")
        self.run_dir, self.params_logged = run_dir, False
        server = uri or os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") and _answers(server)
                                                else "offline")
        saved = _saved_run(run_dir, "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "visionzoo"), name=run_dir.name,
                              dir=str(run_dir), mode=mode, id=saved, resume="allow" if saved else None,
                              settings=wandb.Settings(silent=True, console="off", base_url=server))
        self.params_logged = saved is not None
        _save_run(run_dir, "wandb", self.run.id, mode)

    def _log_params(self) -> None:
        if not self.params_logged and (self.run_dir / "config.json").exists():
            self.run.config.update(tracked_params(self.run_dir), allow_val_change=True)
            self.params_logged = True

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._log_params()
        self.run.log({**_numbers(record), "epoch": int(record["epoch"])}, step=int(record["epoch"]))

    def finish(self, finished: bool) -> None:
        import wandb

        self._log_params()
        plots = {f"plots/{path.stem}": wandb.Image(str(path)) for path in sorted(self.run_dir.glob("*.png"))}
        if plots:
            self.run.log(plots)
        if (self.run_dir / "best").is_dir():
            artifact = wandb.Artifact(f"{self.run.id}-best", type="model")
            artifact.add_dir(str(self.run_dir / "best"))
            for name in _ARTIFACT_FILES:
                if (self.run_dir / name).is_file():
                    artifact.add_file(str(self.run_dir / name), name=f"run/{name}")
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if finished else 1)


def _answers(url: str, timeout: float = 3) -> bool:
    """Whether the host of `url` accepts a TCP connection within `timeout` seconds."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout).close()
        return True
    except OSError:
        return False


def _saved_run(run_dir: Path, kind: str) -> str | None:
    """The tracker run a resumed run folder logged to (None for a fresh run: no metrics written yet)."""
    path = run_dir / TRACKING_FILE
    if not path.is_file() or not (run_dir / "metrics_epochs.csv").exists():
        return None
    return (json.loads(path.read_text()).get(kind) or {}).get("run_id")


def _save_run(run_dir: Path, kind: str, run_id: str, where: str) -> None:
    path = run_dir / TRACKING_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[kind] = {"run_id": run_id, "where": where}
    path.write_text(json.dumps(saved, indent=2) + "\n")


def open_tracker(kind: str | None, run_dir: Path, uri: str | None = None):
    """The tracker `kind` names (None: none) for the run folder `run_dir`."""
    if kind is None:
        return None
    if kind not in TRACKERS:
        raise SettingError(f"unknown tracker {kind!r}; choose {' or '.join(TRACKERS)}")
    return (MlflowTracker if kind == "mlflow" else WandbTracker)(Path(run_dir), uri)
