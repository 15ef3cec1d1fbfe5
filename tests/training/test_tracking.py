"""`train --track mlflow` against a real MLflow server (SQLite backend, artifact folder) that the test
starts on a free local port and stops, read back through `MlflowClient`; `--track wandb` offline,
writing its run files under the run folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

import visionzoo
from visionzoo.cli import main
from visionzoo.errors import SettingError

SHAPES = "builtin:shapes?size=32&train=18&val=9&classes=circle,ring,square"
MODEL = "mobilenetv3_small_050"
SERVER_START_TIMEOUT_S = 240  # a cold start migrates the SQLite schema: slow on a busy two-core machine


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1; the URL once /health answers. Fails (never skips) when it
    cannot start."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
         str(folder / "artifacts")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{(folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not ready after {SERVER_START_TIMEOUT_S} s:\n"
                            f"{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its worker: the group this fixture started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_train_track_mlflow_logs_params_metrics_plots_and_best_model(mlflow_server, tmp_path, monkeypatch,
                                                                      one_thread):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the CLI reads the URI from the environment
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "visionzoo-test")
    run_dir = tmp_path / "run"
    torch.manual_seed(0)
    assert main(["train", MODEL, "--data", SHAPES, "--epochs", "2", "--batch-size", "9", "--lr", "0.01",
                 "--workers", "0", "--no-progress", "--out", str(run_dir), "--track", "mlflow"]) == 0
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "visionzoo-test"
    config = json.loads((run_dir / "config.json").read_text())
    params = run.data.params
    assert params["model"] == MODEL and params["data"] == SHAPES
    assert params["lr"] == str(config["resolved"]["lr"]) and params["source.lr"] == "user"
    assert params["optimizer"] == config["resolved"]["optimizer"]
    assert params["source.optimizer"] == config["settings_source"]["optimizer"]
    history = json.loads((run_dir / "summary.json").read_text())["history"]
    logged = client.get_metric_history(run_id, "val_top1")
    assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
        (record["epoch"], pytest.approx(record["val_top1"])) for record in history]
    assert len(client.get_metric_history(run_id, "train_loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"best", "plots", "config.json", "summary.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "plots")} >= {"plots/confusion_matrix.png"}
    # the best model, downloaded from the server, is the run's best/
    downloaded = client.download_artifacts(run_id, "best", str(tmp_path / "download"))
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(visionzoo.load_model(downloaded)(images), visionzoo.load_model(run_dir / "best")(images))


def test_an_unreachable_tracking_server_stops_the_run_before_it_starts(tmp_path, one_thread):
    with pytest.raises(SettingError, match="cannot reach the MLflow tracking server"):
        visionzoo.train(MODEL, SHAPES, out=tmp_path / "run", epochs=1, batch_size=9, workers=0, progress=False,
                        track="mlflow", track_uri=f"http://127.0.0.1:{_free_port()}")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_unknown_tracker_is_refused():
    with pytest.raises(SettingError, match="track must be mlflow or wandb"):
        visionzoo.train(MODEL, SHAPES, epochs=1, track="comet")


def _wandb_records(path):
    """The protobuf records of a W&B run file (`run-ID.wandb`): a 7-byte file header, then LevelDB's log
    format, which W&B writes: 32 KiB blocks of chunks, each a 7-byte header (CRC32C, length, type:
    1 full, 2 first, 3 middle, 4 last) and its data."""
    from wandb.proto import wandb_internal_pb2

    raw, position, parts = path.read_bytes(), 7, []
    while position + 7 <= len(raw):
        left = 32768 - position % 32768
        if left < 7:  # the block's tail is padding
            position += left
            continue
        length, kind = int.from_bytes(raw[position + 4:position + 6], "little"), raw[position + 6]
        parts.append(raw[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def test_train_track_wandb_offline_writes_its_run_files(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    visionzoo.train(MODEL, SHAPES, out=run_dir, epochs=1, batch_size=9, workers=0, progress=False,
                    tensorboard=False, track="wandb")
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]["run_id"]
    [offline] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    # W&B's service process writes the file behind the run: wait for the run's exit record
    deadline = time.monotonic() + 60
    while True:
        records = list(_wandb_records(offline / f"run-{run_id}.wandb"))
        if any(r.HasField("exit") for r in records):
            break
        assert time.monotonic() < deadline, "W&B wrote no exit record within 60 s"
        time.sleep(0.5)
    config = {item.key: json.loads(item.value_json) for r in records if r.HasField("config")
              for item in r.config.update}
    # a history item names its key in `key`, or in `nested_key` (an image: its path, size, ...)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.HasField("history")]
    # the parameters with their sources, the epoch's metrics, the plots and the best model
    saved = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == MODEL and config["lr"] == str(saved["resolved"]["lr"])
    assert config["source.lr"] == saved["settings_source"]["lr"] == "base_lr 0.2 x batch 9 / 256"
    epoch = json.loads((run_dir / "summary.json").read_text())["history"][0]
    assert any(row.get("val_top1") == pytest.approx(epoch["val_top1"]) and row.get("epoch") == 1 for row in history)
    assert any(row.get("plots/confusion_matrix/_type") == "image-file" for row in history)
    assert any(r.HasField("artifact") and r.artifact.type == "model" for r in records)
