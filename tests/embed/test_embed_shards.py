"""Embedding tar shards: each torchrun process embeds its own shards into its own file, and the
merged index reads back as one set holding every image once; the same as embedding the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))
from test_shards import packed  # noqa: E402

from visionzoo.embed.embeddings import load_embeddings  # noqa: E402

SCRIPT = """
import sys, torch
import visionzoo
from visionzoo.embed.sharded import embed_shards
torch.manual_seed(0)
model = visionzoo.create_model("resnet18", num_classes=2)
embed_shards(model, sys.argv[1], sys.argv[2], batch_size=4,
             data_config={"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
                          "interpolation": "bilinear"})
"""


def test_two_processes_embed_their_own_shards_and_the_index_merges_them(tmp_path):
    shards = packed(tmp_path)
    script = tmp_path / "embed.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    port = str(29500 + (os.getpid() + 750) % 1000)
    processes = [subprocess.Popen([sys.executable, str(script), str(shards), str(tmp_path / "emb2")],
                                  env={**env, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                                       "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                                  stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    subprocess.run([sys.executable, str(script), str(shards), str(tmp_path / "emb1")], env={**env, "OMP_NUM_THREADS": "1"},
                   check=True, timeout=300)
    index = json.loads((tmp_path / "emb2" / "index.json").read_text())
    assert [part["file"] for part in index["parts"]] == ["embeddings-00000-of-00002.safetensors",
                                                          "embeddings-00001-of-00002.safetensors"]
    assert index["images"] == 24 and all(part["count"] for part in index["parts"])
    split, whole = load_embeddings(tmp_path / "emb2"), load_embeddings(tmp_path / "emb1")
    assert len(split.paths) == len(set(split.paths)) == 24 and set(split.paths) == set(whole.paths)
    row = {path: i for i, path in enumerate(whole.paths)}
    order = [row[path] for path in split.paths]
    torch.testing.assert_close(split.embeddings, whole.embeddings[order], rtol=1e-4, atol=1e-5)
    assert split.labels.tolist() == whole.labels[order].tolist() and split.classes == ["class0", "class1"]
