"""`visionzoo embed --data DIR` reads a folder by the rules `train` reads it with (`data.layout`): a
train/ val/ tree is two splits of the same classes, and the folders beside them are no classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo import cli
from visionzoo.data.sources import resolve_data
from visionzoo.embed.embeddings import load_embeddings, scan_folder


def _images(folder, count: int, channel: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(channel)
    for i in range(count):
        pixels = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
        pixels[..., channel] = 200
        Image.fromarray(pixels).save(folder / f"{i}.png")


def _split_tree(root):
    """root/train/{blue,red} (3 each), root/val/{blue,red} (1 each), and the strays a real folder collects."""
    for split, count in (("train", 3), ("val", 1)):
        for name, channel in (("blue", 2), ("red", 0)):
            _images(root / split / name, count, channel)
    _images(root / "logs", 1, 1)  # a plot someone saved there
    _images(root / "__pycache__", 1, 1)
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A saved random ResNet-18 at 32x32 input (embed rebuilds it from the folder)."""
    folder = tmp_path_factory.mktemp("backbone") / "resnet18"
    torch.manual_seed(0)
    config = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3,
              "crop_pct": 1.0}
    visionzoo.save_model(visionzoo.create_model("resnet18", num_classes=2), folder, classes=["a", "b"],
                         preprocessing=config)
    return folder


def test_embed_reads_a_train_val_tree_as_train_does(tmp_path, backbone, one_thread, capsys):
    data = _split_tree(tmp_path / "photos")
    out = tmp_path / "features.safetensors"
    assert cli.main(["embed", str(backbone), "--data", str(data), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 8 and summary["classes"] == 2
    features = load_embeddings(out)
    assert features.classes == ["blue", "red"] == resolve_data(data).classes
    assert not any("/logs/" in p or "__pycache__" in p for p in features.paths)
    assert {p.split("/")[-3] for p in features.paths} == {"train", "val"}  # every split is embedded
    assert [features.classes[int(i)] for i in features.labels] == [p.split("/")[-2] for p in features.paths]


def test_a_wrapped_tree_and_tool_folders_follow_the_same_rules(tmp_path):
    _split_tree(tmp_path / "wrapper" / "photos")  # photos/ holding train/ and val/, wrapped in one folder
    samples, classes = scan_folder(tmp_path / "wrapper")
    assert classes == ["blue", "red"] and len(samples) == 8
    # a plain class tree: __pycache__ (and __MACOSX, hidden folders) are no classes, for training too
    plain = tmp_path / "plain"
    _images(plain / "cat", 2, 0)
    _images(plain / "dog", 2, 2)
    _images(plain / "__MACOSX", 1, 1)
    (plain / "__pycache__").mkdir()
    assert scan_folder(plain)[1] == ["cat", "dog"] == resolve_data(plain).classes
