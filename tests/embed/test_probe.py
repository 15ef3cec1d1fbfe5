"""Embeddings cache, k-NN and linear probes: the protocol on synthetic features, and
`visionzoo embed` + `visionzoo probe` end to end on a small folder of generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo import cli
from visionzoo.embed.embeddings import Embeddings, embed_folder, load_embeddings
from visionzoo.embed.probe import knn_predict, run_probe

SIZE = 48  # generated images; the saved backbone below runs at 32x32


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """These problems are tiny: on a busy machine, waking a second thread costs more than each op."""
    yield


def _features(centres: torch.Tensor, per_class: int, noise: float, seed: int = 0) -> Embeddings:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(per_class)
    x = centres[labels] + noise * torch.randn(len(labels), centres.shape[1], generator=generator)
    return Embeddings(x, labels, [f"{i}.png" for i in range(len(labels))], [f"c{i}" for i in range(len(centres))])


def test_probes_separate_clearly_separable_features():
    centres = 5 * torch.eye(4, 32)
    train, val = _features(centres, 40, 0.5, seed=0), _features(centres, 20, 0.5, seed=1)
    for method in ("knn", "linear"):
        result = run_probe(train, val, method)
        assert result.top1 == 1.0, method
        assert torch.equal(result.confusion, torch.diag(torch.full((4,), 20)))
    # and they do not separate what cannot be separated: random labels stay near chance
    shuffled = Embeddings(val.embeddings, val.labels[torch.randperm(len(val.labels))], val.paths, val.classes)
    assert run_probe(train, shuffled, "linear").top1 < 0.6


def test_linear_probe_weights_apply_to_raw_features():
    centres = torch.randn(3, 16) * 3 + 10  # far from the origin: the standardisation must be folded correctly
    train = _features(centres, 30, 1.0)
    result = run_probe(train, None, "linear")
    logits = train.embeddings @ result.weight.T + result.bias
    assert (logits.argmax(-1) == train.labels).float().mean() > 0.95
    assert result.evaluated_on.startswith("20%") and result.num_eval + result.num_train == len(train)


def test_knn_chooses_a_large_k_when_labels_are_noisy():
    # two clean blobs, a fifth of the training labels flipped: one neighbour copies the noise, many outvote it
    train = _features(torch.tensor([[4.0, 0.0], [-4.0, 0.0]]), 100, 0.5)
    flip = torch.rand(len(train.labels), generator=torch.Generator().manual_seed(3)) < 0.2
    train.labels = torch.where(flip, 1 - train.labels, train.labels)
    result = run_probe(train, _features(torch.tensor([[4.0, 0.0], [-4.0, 0.0]]), 50, 0.5, seed=2), "knn")
    assert result.chosen["k"] >= 10
    assert result.selection["1"] < result.selection[str(result.chosen["k"])]
    assert result.top1 > 0.9


def test_knn_chooses_k_1_when_classes_are_small_tight_clusters():
    # 60 tiny clusters, each of 5 points, with random classes: only the nearest neighbours share one
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(60, 8, generator=generator)
    cluster_class = torch.randint(0, 3, (60,), generator=generator)
    members = torch.arange(60).repeat_interleave(5)
    x = centres[members] + 0.01 * torch.randn(300, 8, generator=generator)
    train = Embeddings(x, cluster_class[members], [str(i) for i in range(300)], ["a", "b", "c"])
    assert run_probe(train, None, "knn").chosen["k"] <= 3


def test_knn_votes_of_all_ks_in_one_pass():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    predictions = knn_predict(train_x, train_y, torch.tensor([[1.0, 0.05]]), (1, 5), 2, temperature=10.0)
    assert predictions[1].item() == 0 and predictions[5].item() == 1  # at a high temperature votes count equally


# --- end to end ----------------------------------------------------------------------------


def _image_folder(root, per_class: int = 8) -> list[str]:
    """Two classes a random network still tells apart: reddish and bluish noisy squares."""
    rng = np.random.default_rng(0)
    paths = []
    for name, channel in (("blue", 2), ("red", 0)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(170, 255, (SIZE, SIZE), dtype=np.uint8)
            path = root / name / f"{i:02d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def backbone_folder(tmp_path_factory):
    """A saved random ResNet-18 at 32x32 input: a backbone that `embed` and `probe --save-model` can rebuild."""
    folder = tmp_path_factory.mktemp("backbone") / "resnet18"
    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=2)
    config = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25], "crop_pct": 1.0}
    visionzoo.save_model(model, folder, classes=["a", "b"], preprocessing=config)
    return folder


def test_embed_and_probe_from_the_cli(tmp_path, backbone_folder, capsys):
    paths = _image_folder(tmp_path / "images")
    out = tmp_path / "features.safetensors"
    assert cli.main(["embed", str(backbone_folder), "--data", str(tmp_path / "images"), "--out", str(out),
                     "--batch-size", "5", "--patch-tokens", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 16 and summary["dim"] == 512 and summary["classes"] == 2

    features = load_embeddings(out)
    assert features.embeddings.shape == (16, 512) and features.classes == ["blue", "red"]
    assert sorted(features.paths) == sorted(paths)
    assert [features.classes[int(i)] for i in features.labels] == [p.split("/")[-2] for p in features.paths]
    assert features.patch_tokens.shape == (16, 1, 512)  # 32 px / stride 32: one position per image
    assert not (tmp_path / "features.safetensors.partial").exists()

    model_dir = tmp_path / "probe_model"
    assert cli.main(["probe", "--features", str(out), "--method", "linear", "--save-model", str(model_dir),
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "linear" and 0.0 <= report["top1"] <= 1.0
    assert np.array(report["confusion"]).sum() == report["num_eval"]
    assert report["saved_model"] == str(model_dir)

    assert cli.main(["probe", "--features", str(out), "--method", "knn"]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "confusion matrix" in text
    assert cli.main(["probe", "--features", str(out), "--method", "knn", "--save-model", str(tmp_path / "x")]) == 2

    # the saved probe is an ordinary model: its logits are the probe's on the cached embeddings
    from visionzoo.embed.probe import run_probe as probe_again
    from visionzoo.factory import load_model

    result = probe_again(features, None, "linear")
    model = load_model(model_dir)
    assert model.num_classes == 2
    from visionzoo.data import decode_image
    from visionzoo.data.transforms import eval_transform

    transform = eval_transform({"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3,
                                "std": [0.25] * 3, "crop_pct": 1.0})
    image = transform(decode_image(features.paths[0])).unsqueeze(0)
    with torch.no_grad():
        logits = model(image)
    expected = features.embeddings[:1] @ result.weight.T + result.bias
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_embed_resumes_after_interruption(tmp_path, backbone_folder):
    from visionzoo.factory import load_model

    _image_folder(tmp_path / "images", per_class=6)
    out = tmp_path / "features.safetensors"
    model = load_model(backbone_folder)
    spec = {"spec": str(backbone_folder)}
    first = embed_folder(model, tmp_path / "images", out, batch_size=2, shard_size=2, model_spec=spec,
                         progress=False, max_images=5)  # stops as an interruption would
    assert len(first) == 5 and not out.exists()
    assert len(list((tmp_path / "features.safetensors.partial").glob("shard-*"))) == 3

    seen = []
    original = model.forward_features
    model.forward_features = lambda x: (seen.append(len(x)), original(x))[1]
    second = embed_folder(model, tmp_path / "images", out, batch_size=2, shard_size=2, model_spec=spec,
                          progress=False)
    assert sum(seen) == 7  # only the 7 images not done before
    assert len(second) == 12 and len(set(second.paths)) == 12 and out.exists()
    assert not (tmp_path / "features.safetensors.partial").exists()

    model.forward_features = original
    fresh = embed_folder(model, tmp_path / "images", tmp_path / "fresh.safetensors", progress=False,
                         model_spec=spec)
    order = {path: i for i, path in enumerate(fresh.paths)}
    resumed = load_embeddings(out)
    index = torch.tensor([order[p] for p in resumed.paths])
    torch.testing.assert_close(resumed.embeddings, fresh.embeddings[index])
    torch.testing.assert_close(resumed.labels, fresh.labels[index])

    seen.clear()
    model.forward_features = lambda x: (seen.append(len(x)), original(x))[1]
    again = embed_folder(model, tmp_path / "images", out, progress=False, model_spec=spec)
    assert seen == [] and len(again) == 12  # all done: nothing recomputed
    with pytest.raises(ValueError, match="new --out"):  # another model's embeddings are never mixed in
        embed_folder(model, tmp_path / "images", out, progress=False, model_spec={"spec": "resnet50"})


def test_embed_errors_are_clear(tmp_path, backbone_folder, capsys):
    assert cli.main(["embed", str(backbone_folder), "--data", str(tmp_path / "missing"), "--out",
                     str(tmp_path / "f.safetensors")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["probe", "--features", str(tmp_path / "none.safetensors")]) == 2
    assert "visionzoo embed" in capsys.readouterr().err
