"""`visionzoo embed --data DIR` reads a folder by the rules `train` reads it with (`data.layout`): a
train/ val/ tree is two splits of the same classes, each embedded into its own file, and the folders
beside them are no classes; `probe` then fits on train/ and scores on val/ (issue 30)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo import cli
from visionzoo.data.samples import FileSamples
from visionzoo.data.sources import resolve_data
from visionzoo.embed.embeddings import embed_folder, load_embeddings, scan_folder, validation_split
from visionzoo.embed.probe import run_probe


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
    val_file = tmp_path / "features.val.safetensors"
    assert summary["images"] == 6 and summary["classes"] == 2 and summary["split"] == "train"
    assert summary["splits"] == {"train": {"out": str(out), "images": 6}, "val": {"out": str(val_file), "images": 2}}
    splits = resolve_data(data)
    for path, split, samples in ((out, "train", splits.train), (val_file, "val", splits.val)):
        features = load_embeddings(path)
        assert features.classes == ["blue", "red"] == splits.classes
        assert features.split == split and features.splits == {"train": out.name, "val": val_file.name}
        # the images training reads as this split, and no others: not logs/ or __pycache__/, not the other split
        assert sorted(features.paths) == sorted(samples.paths)
        assert {p.split("/")[-3] for p in features.paths} == {split}
        assert [features.classes[int(i)] for i in features.labels] == [p.split("/")[-2] for p in features.paths]

    # probe, given the train file alone, fits on train/ and scores on val/ (CLI and Python alike)
    assert cli.main(["probe", "--features", str(out), "--method", "knn", "--json"]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert probed["num_train"] == 6 and probed["num_eval"] == 2
    assert probed["evaluated_on"] == "val split in features.val.safetensors"
    train = load_embeddings(out)
    assert validation_split(train).paths == load_embeddings(val_file).paths
    assert validation_split(load_embeddings(val_file)) is None  # a validation split has none of its own
    python = run_probe(train, method="knn").as_dict()
    assert python == {key: value for key, value in probed.items() if key != "saved_model"}
    assert cli.main(["probe", "--features", str(out), "--scores", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["linear"]["num_eval"] == 2


def test_embedding_a_plain_tree_writes_one_file_and_the_probe_holds_out_a_part(tmp_path, backbone, one_thread):
    for name, channel in (("blue", 2), ("red", 0)):
        _images(tmp_path / "plain" / name, 5, channel)
    result = embed_folder(visionzoo.load_model(backbone), tmp_path / "plain", tmp_path / "plain.safetensors",
                          progress=False)
    assert len(result) == 10 and result.split is None and result.splits == {}
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["plain.safetensors"]
    assert run_probe(load_embeddings(tmp_path / "plain.safetensors")).evaluated_on == "20% of the input held out"


def test_a_file_of_every_split_from_before_keeps_only_its_split_on_a_rerun(tmp_path, backbone, one_thread):
    """`embed` wrote a train/ val/ tree into one file before (issue 30): rerun into the same --out, the
    file keeps the train/ images it has (nothing embedded again) and val/ gets a file of its own."""
    data = _split_tree(tmp_path / "photos")
    model = visionzoo.load_model(backbone)
    out = tmp_path / "features.safetensors"
    merged, classes = scan_folder(data)
    every_split = FileSamples(merged["train"].paths + merged["val"].paths,
                              np.concatenate([merged["train"].labels, merged["val"].labels]))
    old = embed_folder(model, (every_split, classes), out, progress=False, model_spec={"spec": str(backbone)})
    assert len(old) == 8
    again = embed_folder(model, data, out, progress=False, model_spec={"spec": str(backbone)})
    assert again.parts["train"].embedded == 0 and again.parts["val"].embedded == 2
    assert sorted(load_embeddings(out).paths) == sorted(merged["train"].paths)
    assert torch.equal(load_embeddings(out).embeddings, old.embeddings[torch.tensor(
        [old.paths.index(p) for p in load_embeddings(out).paths])])


def test_a_wrapped_tree_and_tool_folders_follow_the_same_rules(tmp_path):
    _split_tree(tmp_path / "wrapper" / "photos")  # photos/ holding train/ and val/, wrapped in one folder
    splits, classes = scan_folder(tmp_path / "wrapper")
    assert classes == ["blue", "red"] and {split: len(samples) for split, samples in splits.items()} == {
        "train": 6, "val": 2}
    # a plain class tree: __pycache__ (and __MACOSX, hidden folders) are no classes, for training too
    plain = tmp_path / "plain"
    _images(plain / "cat", 2, 0)
    _images(plain / "dog", 2, 2)
    _images(plain / "__MACOSX", 1, 1)
    (plain / "__pycache__").mkdir()
    assert scan_folder(plain)[1] == ["cat", "dog"] == resolve_data(plain).classes
