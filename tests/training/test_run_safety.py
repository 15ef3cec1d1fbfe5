"""Issue 28's safety items in a run folder: a non-empty --out is refused unless --overwrite, a run
killed before its first checkpoint starts again on --resume, stale temporary files are removed,
files get the umask's mode, no training batch of one image reaches BatchNorm, a full disk is
one line that keeps the previous checkpoint, and a resumed epoch's train_loss counts the whole epoch."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from test_train import SHAPES, TinyNet, _InterruptAt

import visionzoo
from visionzoo.errors import UsageError
from visionzoo.training import checkpoint
from visionzoo.training.checkpoint import DiskFullError, latest_step, load_checkpoint

QUIET = dict(workers=0, progress=False, plots=False, tensorboard=False)


def test_out_folder_holding_a_run_is_refused_unless_overwrite(tmp_path, one_thread):
    run = tmp_path / "run"
    visionzoo.train(TinyNet(), SHAPES, out=run, epochs=1, batch_size=32, **QUIET)
    (run / "notes.txt").write_text("mine")
    first = (run / "metrics_epochs.csv").read_text()
    with pytest.raises(UsageError, match=rf"{run} is not empty .*--overwrite"):
        visionzoo.train(TinyNet(), SHAPES, out=run, epochs=1, batch_size=32, **QUIET)
    assert (run / "metrics_epochs.csv").read_text() == first  # untouched
    cli = subprocess.run([sys.executable, "-m", "visionzoo.cli", "train", "--model", "resnet18", "--data", SHAPES,
                          "--out", str(run)], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "--overwrite" in cli.stderr and "Traceback" not in cli.stderr
    visionzoo.train(TinyNet(), SHAPES, out=run, epochs=1, batch_size=32, overwrite=True, **QUIET)
    assert len((run / "metrics_epochs.csv").read_text().splitlines()) == 2  # one header, one epoch: replaced
    assert (run / "notes.txt").read_text() == "mine"  # what the run did not write stays


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path, one_thread, capsys):
    run = tmp_path / "run"
    result = visionzoo.train(_InterruptAt(1), SHAPES, out=run, epochs=1, batch_size=16, **QUIET)
    assert result.interrupted
    for name in os.listdir(run / "checkpoint"):  # as if killed before the first checkpoint was complete
        os.remove(run / "checkpoint" / name)
    (run / "metrics_steps.jsonl").write_text('{"step": 1}\n')
    resumed = visionzoo.train(TinyNet(), None, resume=run, progress=False)
    assert "starting it again from its saved configuration" in capsys.readouterr().err
    assert not resumed.interrupted and len(resumed.history) == 1 and (run / "last" / "model.safetensors").exists()
    assert '{"step": 1}' not in (run / "metrics_steps.jsonl").read_text()  # the old log went


def test_stale_temporary_files_are_removed_on_resume(tmp_path, one_thread):
    run = tmp_path / "run"
    assert visionzoo.train(_InterruptAt(4), SHAPES, out=run, epochs=1, batch_size=16, **QUIET).interrupted
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process id that is no longer alive
    stale = [run / "checkpoint" / f".model-9.safetensors.tmp{dead}", run / f".summary.json.tmp{dead}"]
    alive = run / "checkpoint" / f".model-8.safetensors.tmp{os.getppid()}"  # a live writer's: kept
    for path in [*stale, alive]:
        path.write_bytes(b"partial")
    visionzoo.train(TinyNet(), None, resume=run, progress=False)
    assert not any(path.exists() for path in stale) and alive.exists()


def test_files_a_run_writes_get_the_umask_mode(tmp_path, one_thread):
    previous = os.umask(0o022)
    try:
        result = visionzoo.train("resnet18", "builtin:shapes?size=32&train=40&val=20", out=tmp_path / "run",
                                 epochs=1, batch_size=20, **QUIET)
    finally:
        os.umask(previous)
    files = [path for path in result.run_dir.rglob("*") if path.is_file()]
    assert result.run_dir / "best" / "model.safetensors" in files and any("checkpoint" in str(p) for p in files)
    modes = {str(path.relative_to(result.run_dir)): oct(os.stat(path).st_mode & 0o777) for path in files}
    assert set(modes.values()) == {oct(0o644)}, modes


class _BatchNormNet(nn.Module):
    """BatchNorm on (N, C) features: a batch of one image fails in training mode."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(4))
        self.fc = nn.Linear(4, 10)
        self.batch_sizes: list[int] = []

    def forward(self, x):
        if self.training:
            self.batch_sizes.append(len(x))
        return self.fc(self.features(x))


def test_a_last_batch_of_one_image_joins_the_one_before_with_batchnorm(tmp_path, one_thread, capsys):
    model = _BatchNormNet()  # 33 training images in batches of 8: 8, 8, 8, 9
    result = visionzoo.train(model, "builtin:shapes?size=16&train=33&val=8", out=tmp_path / "run", epochs=2,
                             batch_size=8, checkpoint_every=2, **QUIET)
    assert model.batch_sizes == [8, 8, 8, 9] * 2 and len(result.history) == 2
    assert capsys.readouterr().err.count("joins the batch before it") == 1


def test_a_batch_shrunk_to_one_readable_image_is_left_out(tmp_path, one_thread, capsys):
    from PIL import Image

    for split, files in (("train", {"class0": ["good", "broken0", "broken1"], "class1": ["broken2"]}),
                         ("val", {"class0": ["good"], "class1": ["good"]})):
        for label, (name, stems) in enumerate(files.items()):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for stem in stems:  # one batch of four files, three of which do not decode
                if stem == "good":
                    Image.new("RGB", (16, 16), (200, 30, 30) if label == 0 else (30, 30, 200)).save(folder / "0.png")
                else:
                    (folder / f"{stem}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    model = _BatchNormNet()
    model.fc = nn.Linear(4, 2)
    result = visionzoo.train(model, str(tmp_path / "data"), out=tmp_path / "run", epochs=2, batch_size=4,
                             image_size=16, **QUIET)
    assert len(result.history) == 2 and len(result.bad_files) == 3
    assert capsys.readouterr().err.count("left with one readable image") == 1
    assert 1 not in model.batch_sizes


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, one_thread,
                                                                                        monkeypatch):
    run = tmp_path / "run"
    real = checkpoint.atomic_write

    def fills_up(path, data):
        if "model-6" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", fills_up)
    with pytest.raises(DiskFullError) as caught:
        visionzoo.train(TinyNet(), SHAPES, out=run, epochs=1, batch_size=16, checkpoint_every=3, **QUIET)
    message = str(caught.value)
    assert "\n" not in message and "disk is full" in message and "previous checkpoint (step 3)" in message
    assert "is intact" in message and latest_step(run / "checkpoint") == 3
    assert load_checkpoint(run / "checkpoint")[1]["global_step"] == 3
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "latest.json", "model-3.safetensors", "state-3.json", "state-3.safetensors"]


def test_a_resumed_epoch_reports_the_train_loss_of_the_whole_epoch(tmp_path, one_thread):
    settings = dict(epochs=1, batch_size=16, lr=0.05, deterministic=True, **QUIET)
    torch.manual_seed(0)
    whole = visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "whole", **settings)
    torch.manual_seed(0)
    assert visionzoo.train(_InterruptAt(4), SHAPES, out=tmp_path / "cut", **settings).interrupted
    resumed = visionzoo.train(TinyNet(), None, resume=tmp_path / "cut", progress=False)
    assert resumed.history[0]["train_loss"] == whole.history[0]["train_loss"]
