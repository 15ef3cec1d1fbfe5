"""Data that used to train the wrong thing silently (issue 28): a wrapped archive, CSV typos and a
byte-order mark, unreadable folders, archive bombs, scratch folders left by a kill."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from PIL import Image

from visionzoo.data import archives
from visionzoo.data.layout import class_folders, scan_tree, tree_root
from visionzoo.data.sources import resolve_data
from visionzoo.errors import DataError

COLOURS = {"daisy": (240, 240, 40), "rose": (220, 30, 30)}


def _tree(root, per_class: int = 4):
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (12 + i, 12), colour).save(root / name / f"{i}.png")
    return root


def _tar(archive, folder, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def test_an_archive_made_the_usual_way_trains_its_classes_not_one_class_named_after_it(tmp_path):
    # tar czf flowers.tar.gz flowers, with daisy/ and rose/ inside
    archive = _tar(tmp_path / "flowers.tar.gz", _tree(tmp_path / "flowers"), "flowers")
    splits = resolve_data(archive)
    assert splits.classes == ["daisy", "rose"]
    assert len(splits.train) + len(splits.val) == 8
    # a plain folder keeps its meaning: a folder of one class folder is one class
    assert resolve_data(tmp_path, split="eval").classes == ["flowers"]


def test_tree_root_unwraps_split_folders_anywhere_and_class_folders_in_archives_only(tmp_path):
    _tree(tmp_path / "a" / "wrap" / "train")
    assert tree_root(tmp_path / "a") == tmp_path / "a" / "wrap"
    _tree(tmp_path / "b" / "wrap")
    assert tree_root(tmp_path / "b") == tmp_path / "b"
    assert tree_root(tmp_path / "b", archive=True) == tmp_path / "b" / "wrap"
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "wrap" / "loose.png")  # images beside the folders: a class
    assert tree_root(tmp_path / "b", archive=True) == tmp_path / "b"


def _csv(tmp_path, rows: list[str], name: str = "labels.csv", bom: bool = False):
    _tree(tmp_path / "images")
    path = tmp_path / name
    path.write_text(("\ufeff" if bom else "") + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_a_csv_split_typo_is_an_error_naming_the_rows(tmp_path):
    rows = ["path,label,split", "images/daisy/0.png,daisy,train", "images/daisy/1.png,daisy,trian",
            "images/rose/0.png,rose,train", "images/rose/1.png,rose,val", "images/daisy/2.png,daisy,val"]
    with pytest.raises(DataError, match=r"unknown split 'trian' in row 3\b.*train, val"):
        resolve_data(_csv(tmp_path, rows))


def test_a_csv_with_no_training_rows_or_an_empty_label_is_an_error(tmp_path):
    only_val = ["images/daisy/0.png,daisy,val", "images/rose/0.png,rose,test"]
    with pytest.raises(DataError, match="no row is in the train split"):
        resolve_data(_csv(tmp_path, only_val))
    assert len(resolve_data(_csv(tmp_path, only_val), split="eval").val) == 2  # evaluating needs no train rows
    unlabelled = ["images/daisy/0.png,daisy", "images/daisy/1.png,", "images/rose/0.png,rose", "images/rose/1.png, "]
    with pytest.raises(DataError, match="no label in row 2, row 4"):
        resolve_data(_csv(tmp_path, unlabelled))


def test_a_class_only_in_validation_is_an_error_naming_it(tmp_path):
    rows = ["images/daisy/0.png,daisy,train", "images/daisy/1.png,daisy,val", "images/rose/0.png,rose,val",
            "images/rose/1.png,rose,val"]
    with pytest.raises(DataError, match=r"class 'rose' has no training images \(only validation rows: row 3, row 4\)"):
        resolve_data(_csv(tmp_path, rows))


def test_an_empty_split_cell_means_train_and_upper_case_is_accepted(tmp_path):
    rows = ["images/daisy/0.png,daisy,", "images/daisy/1.png,daisy,VAL", "images/rose/0.png,rose,Train",
            "images/rose/1.png,rose,test"]
    splits = resolve_data(_csv(tmp_path, rows))
    assert len(splits.train) == 2 and len(splits.val) == 2


def test_multilabel_csv_split_typos_are_errors_too(tmp_path):
    rows = ["path,labels,split", "images/daisy/0.png,daisy|rose,train", "images/rose/0.png,rose,tarin"]
    with pytest.raises(DataError, match=r"unknown split 'tarin' in images/rose/0.png"):
        resolve_data(_csv(tmp_path, rows))


def test_a_csv_saved_by_excel_with_a_byte_order_mark_has_no_phantom_class(tmp_path):
    rows = ["path,label"] + [f"images/{c}/{i}.png,{c}" for c in COLOURS for i in range(4)]
    splits = resolve_data(_csv(tmp_path, rows, bom=True), split="eval")
    assert splits.classes == ["daisy", "rose"] and len(splits.train) == 8
    multi = ["path,labels"] + [f"images/{c}/{i}.png,daisy|rose" for c in COLOURS for i in range(2)]
    assert resolve_data(_csv(tmp_path, multi, name="multi.csv", bom=True), split="eval").classes == ["daisy", "rose"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads a folder whatever its mode; the simulated test below covers root")
def test_an_unreadable_class_folder_is_an_error_naming_it(tmp_path):
    _tree(tmp_path / "d")
    (tmp_path / "d" / "rose").chmod(0)
    try:
        with pytest.raises(DataError, match=r"cannot read the folder .*rose"):
            resolve_data(tmp_path / "d")
    finally:
        (tmp_path / "d" / "rose").chmod(0o755)


def test_an_unreadable_class_folder_is_an_error_naming_it_simulated(tmp_path, monkeypatch):
    """As the test above, for root (who reads a mode-000 folder): listing the folder fails as it would."""
    _tree(tmp_path / "d")
    unreadable = str(tmp_path / "d" / "rose")
    real_scandir = os.scandir

    def scandir(path="."):  # shutil.rmtree, cleaning tmp_path, lists folders by file descriptor (an int)
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) == unreadable:
            raise PermissionError(13, "Permission denied", unreadable)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read the folder .*/d/rose: Permission denied"):
        resolve_data(tmp_path / "d")
    with pytest.raises(DataError, match=r"cannot read the folder .*/d/rose"):
        class_folders(unreadable)
    assert len(scan_tree(tmp_path / "d", ["daisy"])) == 4  # the readable class is read as before


def _bomb(tmp_path, megabytes: int = 5):
    """A small .tar.gz holding one image name and `megabytes` of zeros: a ratio of about 1000."""
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("bomb/daisy/0.png")
        info.size = megabytes << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return archive


def test_an_archive_bomb_is_refused_before_unpacking_naming_the_archive_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(archives, "RATIO_FLOOR_BYTES", 1 << 20)  # the 1 GB floor, scaled to a 5 MB test
    archive = _bomb(tmp_path)
    assert archive.stat().st_size < 50_000
    with pytest.raises(DataError, match=r"bomb\.tar\.gz would unpack to 0\.01 GB .*100x the archive's size.*"
                                         r"--max-unpack-gb 1\b"):
        resolve_data(archive)
    assert not list((tmp_path / "cache" / "datasets").iterdir())  # nothing was written
    # the flag raises the cap: the archive unpacks (and is then just a bad image)
    assert archives.unpack_archive(archive, max_unpack_gb=1).is_dir()


def test_the_default_cap_and_an_explicit_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    archive = _bomb(tmp_path, megabytes=3)
    assert archives.unpack_archive(archive).is_dir()  # under the 1 GB floor: small archives always unpack
    monkeypatch.setattr(archives, "DEFAULT_MAX_UNPACK_GB", 0.002)
    archive.touch()  # a changed archive unpacks again
    os.utime(archive, (1, 1))
    with pytest.raises(DataError, match="the default cap of 0.002 GB"):
        archives.unpack_archive(archive)
    with pytest.raises(DataError, match=r"over the limit of 0\.00 GB \(--max-unpack-gb 0\.001\)"):
        archives.unpack_archive(archive, max_unpack_gb=0.001)


def test_scratch_folders_left_by_a_killed_unpack_are_removed_by_the_next(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    datasets = tmp_path / "cache" / "datasets"
    dead = 2**22 + 12345  # above the kernel's pid_max default: no process has it
    (datasets / f"flowers-0123456789ab.tmp{dead}" / "daisy").mkdir(parents=True)
    (datasets / f"other.tmp{dead}.npy").write_bytes(b"half")
    alive = datasets / f"flowers-0123456789ab.tmp{os.getppid()}"  # a running process: still unpacking
    alive.mkdir()
    keep = datasets / "pets-ba9876543210"
    keep.mkdir()
    archive = _tar(tmp_path / "flowers.tar.gz", _tree(tmp_path / "flowers"), "flowers")
    resolve_data(archive)
    names = sorted(p.name for p in datasets.iterdir())
    assert f"flowers-0123456789ab.tmp{dead}" not in names and f"other.tmp{dead}.npy" not in names
    assert alive.name in names and keep.name in names


# audit with random weights: its default backbone's weights, checked first, are not what this test is about
@pytest.mark.parametrize("command", [["train", "--model", "resnet18"], ["eval", "resnet18", "--pretrained", "none"],
                                     ["audit", "--pretrained", "none"]])
def test_every_command_taking_archives_refuses_a_bomb_and_names_its_flag(tmp_path, monkeypatch, capsys, command):
    from visionzoo.cli import main

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(archives, "RATIO_FLOOR_BYTES", 1 << 20)
    archive = _bomb(tmp_path)
    assert main([*command, "--data", str(archive), "--max-unpack-gb", "0.001"]) == 2
    assert "--max-unpack-gb 1" in capsys.readouterr().err
