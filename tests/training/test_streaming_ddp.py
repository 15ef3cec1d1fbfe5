"""Streamed data in training: tar shards and a local Hugging Face dataset resume bit-exactly after
SIGKILL, and shards split across 2 gloo processes with no image seen twice within an epoch.

Mirrors `test_train.py`'s kill/resume and DDP tests (subprocesses, one thread each, TinyNet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))
from test_shards import image_folder  # noqa: E402
from test_train import COMMON, _env, _kill_mid_epoch, _run, _script, _weights  # noqa: E402

from visionzoo.data.pack import pack_shards  # noqa: E402
from visionzoo.data.sources import resolve_data  # noqa: E402
from visionzoo.data.streaming import StreamPlan  # noqa: E402


def _shards(tmp_path: Path) -> Path:
    image_folder(tmp_path / "photos", per_class=24)
    pack_shards(tmp_path / "photos", tmp_path / "shards", shard_size=36000, val_fraction=0.25)
    return tmp_path / "shards"


def _hf_dataset(tmp_path: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def rows(count: int) -> dict:
        images, labels = [], []
        for i in range(count):
            pixels = (rng.random((16, 16, 3)) * 120).astype(np.uint8)
            pixels[..., i % 2] += 120
            images.append(Image.fromarray(pixels))
            labels.append(i % 2)
        return {"picture": images, "kind": labels}

    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["cat", "dog"])})
    parts = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(40), features=features),
                                  "validation": datasets.Dataset.from_dict(rows(8), features=features)})
    parts.save_to_disk(str(tmp_path / "hfset"))
    return tmp_path / "hfset"


@pytest.mark.parametrize("source", ["shards", "hf"])
def test_streamed_run_killed_mid_epoch_resumes_bit_exactly(tmp_path, source):
    data = _shards(tmp_path) if source == "shards" else _hf_dataset(tmp_path)
    settings = {**COMMON, "data": str(data), "num_classes": 2, "image_size": 16, "batch_size": 4, "augment": "light",
                "workers": 2 if source == "shards" else 0}
    splits = resolve_data(data)
    steps = StreamPlan(splits.train, rank=0, world=1, batch_size=4, seed=3).batches if source == "shards" \
        else len(splits.train) // 4
    assert steps > 4
    script = _script(tmp_path)
    _run(script, {**settings, "out": str(tmp_path / "whole")})
    killed = _kill_mid_epoch(script, settings, tmp_path / "killed", steps)
    _run(script, {"resume": str(killed), "num_classes": 2})
    whole, resumed = _weights(tmp_path / "whole"), _weights(killed)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


RECORDING = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    from visionzoo.data import streaming
    seen, original = [], streaming.StreamBatches.__iter__

    def recorded(self):
        for batch in original(self):
            seen.append((self.epoch, batch[2].tolist()))
            yield batch

    streaming.StreamBatches.__iter__ = recorded
    exec(open({script!r}).read())
    with open(os.path.join({out!r}, "seen-" + os.environ["RANK"] + ".json"), "w") as handle:
        json.dump(seen, handle)
""")


def test_shards_split_across_two_gloo_processes_see_each_image_once_per_epoch(tmp_path):
    data = _shards(tmp_path)
    script = _script(tmp_path)
    recording = tmp_path / "recording.py"
    recording.write_text(RECORDING.format(tests=str(Path(__file__).parent), script=str(script), out=str(tmp_path)))
    settings = {**COMMON, "data": str(data), "num_classes": 2, "image_size": 16, "batch_size": 8, "augment": "light",
                "out": str(tmp_path / "ddp")}
    port = str(29500 + (os.getpid() + 250) % 1000)
    processes = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, str(recording), json.dumps(settings)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    train = resolve_data(data).train
    plan = StreamPlan(train, rank=0, world=2, batch_size=4, seed=COMMON["seed"])  # 8 split over 2 processes
    seen = [json.loads((tmp_path / f"seen-{rank}.json").read_text()) for rank in range(2)]
    for epoch in range(COMMON["epochs"]):
        per_rank = [[i for e, ids in batches if e == epoch for i in ids] for batches in seen]
        assert len([e for e, _ in seen[0] if e == epoch]) == len([e for e, _ in seen[1] if e == epoch]) == plan.batches
        everything = per_rank[0] + per_rank[1]
        assert len(everything) == len(set(everything)) == len(train) - plan.left_out
        assert not {i >> 32 for i in per_rank[0]} & {i >> 32 for i in per_rank[1]}  # own shards
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
