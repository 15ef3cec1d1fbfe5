"""Hugging Face datasets as `--data`: a save_to_disk folder and parquet files, offline; the image and
label columns found or named; the splits the dataset has, or a stratified split."""

from __future__ import annotations

import numpy as np
import pytest

from visionzoo.data.datasets import ImageDataset
from visionzoo.data.hf import TableSamples
from visionzoo.data.sources import resolve_data
from visionzoo.errors import DataError

datasets = pytest.importorskip("datasets")


def _images(count: int) -> tuple[list, list[int]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(count):
        pixels = (rng.random((12, 20, 3)) * 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(i % 3)
    return images, labels


def test_a_saved_dataset_dict_gives_its_splits_classes_and_the_stored_pixels(tmp_path):
    images, labels = _images(12)
    features = datasets.Features({"photo": datasets.Image(), "breed": datasets.ClassLabel(names=["a", "b", "c"]),
                                  "note": datasets.Value("string")})
    table = {"photo": images, "breed": labels, "note": ["x"] * 12}
    parts = datasets.DatasetDict({"train": datasets.Dataset.from_dict(table, features=features),
                                  "test": datasets.Dataset.from_dict(
                                      {k: v[:3] for k, v in table.items()}, features=features)})
    parts.save_to_disk(str(tmp_path / "set"))
    splits = resolve_data(tmp_path / "set")
    assert splits.classes == ["a", "b", "c"] and isinstance(splits.train, TableSamples)
    assert len(splits.train) == 12 and len(splits.val) == 3  # the test split validates
    assert splits.train.labels.tolist() == labels
    decoded = ImageDataset(splits.train).load(4)
    assert decoded.size == (20, 12)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(images[4]))  # PNG: lossless
    assert splits.train.names[4].endswith("#4")
    with pytest.raises(DataError, match="no column 'pixels'"):
        resolve_data(tmp_path / "set", image_column="pixels")


def test_parquet_with_plain_columns_is_split_and_its_label_values_are_the_classes(tmp_path):
    images, labels = _images(18)
    names = [["tabby", "siamese", "manx"][label] for label in labels]
    table = datasets.Dataset.from_dict({"img_bytes": images, "breed": names},
                                       features=datasets.Features({"img_bytes": datasets.Image(),
                                                                   "breed": datasets.Value("string")}))
    table.to_parquet(str(tmp_path / "cats.parquet"))
    with pytest.raises(DataError, match="--label-column"):
        resolve_data(tmp_path / "cats.parquet")  # no ClassLabel and no column called label
    splits = resolve_data(tmp_path / "cats.parquet", label_column="breed", val_fraction=1 / 3, seed=1)
    assert splits.classes == ["manx", "siamese", "tabby"]
    assert len(splits.train) == 12 and len(splits.val) == 6
    assert np.bincount(splits.val.labels).tolist() == [2, 2, 2]  # stratified
    every = sorted(splits.train.rows.tolist() + splits.val.rows.tolist())
    assert every == list(range(18))
    row = int(splits.val.rows[0])
    assert splits.classes[splits.val.labels[0]] == names[row]


def test_a_hub_name_loads_through_datasets_and_a_missing_extra_is_one_line(tmp_path, monkeypatch):
    images, labels = _images(6)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    asked = []

    def load_dataset(name, *args, **kwargs):  # offline: stands in for the Hub
        asked.append(name)
        return datasets.DatasetDict({"train": table, "validation": table.select(range(3))})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits = resolve_data("hf://datasets/someone/pets")
    assert asked == ["someone/pets"] and len(splits.train) == 6 and len(splits.val) == 3
    assert "someone/pets" in splits.description

    from visionzoo.errors import MissingExtraError

    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(MissingExtraError, match=r"visionzoo\[data\]"):
        resolve_data("hf://datasets/someone/pets")
