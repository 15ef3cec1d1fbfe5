"""`visionzoo audit` on generated data with planted errors: label flips, exact and near duplicates,
a train/validation leak and a broken file; the CSVs, the JSON keys, the HTML page in Chromium,
and `train --exclude`."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionzoo
from visionzoo.data.exclude import exclude_files, read_path_list
from visionzoo.data.sources import resolve_data

COLOURS = {"red": (215, 40, 35), "green": (40, 190, 50), "blue": (35, 45, 215)}


def _image(rng: np.random.Generator, colour) -> Image.Image:
    # a colour with noise and a random gradient: the class is the colour, every image is distinct
    ramp = np.linspace(-40, 40, 40)[None, :, None] * rng.uniform(-1, 1)
    pixels = np.array(colour)[None, None] + ramp + rng.normal(0, 20, (40, 40, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_planted(root: Path) -> dict:
    """train/ (20 per class) and val/ (6 per class) with what an audit must find."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("val", 6)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _image(rng, colour).save(root / split / name / f"{i:02d}.png")
    train = root / "train"
    flips = []
    for source, wrong in (("red/03.png", "green"), ("blue/07.png", "red")):  # a red image labelled green, ...
        target = train / wrong / f"flipped-{Path(source).stem}.png"
        shutil.move(train / source, target)
        flips.append(str(target))
    exact = train / "green" / "copy-of-05.png"
    shutil.copyfile(train / "green" / "05.png", exact)
    near = train / "blue" / "near-of-11.jpg"
    with Image.open(train / "blue" / "11.png") as image:
        image.resize((41, 41), Image.BICUBIC).save(near, quality=80)
    leak = root / "val" / "red" / "leak-of-12.jpg"
    with Image.open(train / "red" / "12.png") as image:
        image.resize((39, 39), Image.BICUBIC).save(leak, quality=70)
    broken = train / "red" / "broken.png"
    broken.write_bytes((train / "red" / "14.png").read_bytes()[:60])
    return {"flips": flips, "exact": (str(exact), str(train / "green" / "05.png")),
            "near": (str(near), str(train / "blue" / "11.png")), "leak": (str(leak), str(train / "red" / "12.png")),
            "broken": str(broken)}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    planted = make_planted(root / "data")
    out = root / "audit"
    report = visionzoo.audit(root / "data", model="resnet18", pretrained=False, out=out, progress=False)
    return planted, report, out


def test_audit_finds_the_planted_label_flips(audited):
    planted, report, _ = audited
    flagged = {e["path"]: e for e in report["label_issues"]}
    assert set(planted["flips"]) <= set(flagged), report["label_issues"]
    assert flagged[planted["flips"][0]]["given"] == "green" and flagged[planted["flips"][0]]["suggested"] == "red"
    assert flagged[planted["flips"][1]]["given"] == "red" and flagged[planted["flips"][1]]["suggested"] == "blue"
    assert len(flagged) <= 2 * len(planted["flips"])  # precise as well: the other 76 images are labelled right
    assert all(0 <= e["score"] <= 1 for e in report["label_issues"])


def test_audit_finds_exact_and_near_duplicates_and_the_leak_first(audited):
    planted, report, _ = audited
    pairs = {(e["path"], e["duplicate_of"]): e for e in report["duplicates"]}
    assert planted["exact"] in pairs and pairs[planted["exact"]]["kind"] == "exact"
    assert planted["near"] in pairs and pairs[planted["near"]]["kind"] == "near"
    assert [(e["path"], e["duplicate_of"]) for e in report["leaks"]] == [planted["leak"]]
    leak = report["leaks"][0]
    assert leak["split"] == "val" and leak["duplicate_split"] == "train" and leak["similarity"] > 0.9
    assert len(report["duplicates"]) == 2  # nothing else is a duplicate
    assert list(report)[:1] == ["leaks"]  # the JSON (and the page) open with the leaks


def test_audit_json_keys_bad_files_class_counts_and_csvs(audited):
    planted, report, out = audited
    on_disk = json.loads((out / "audit.json").read_text())
    assert {"label_issues", "leaks", "duplicates", "outliers", "bad_files", "class_counts"} <= set(on_disk)
    assert on_disk["leaks"] == report["leaks"]
    for entry in on_disk["label_issues"]:
        assert {"path", "given", "suggested", "score"} <= set(entry)
    for entry in on_disk["leaks"] + on_disk["duplicates"]:
        assert {"path", "duplicate_of", "split", "similarity"} <= set(entry)
    assert all({"path", "score"} <= set(e) for e in on_disk["outliers"])
    assert [e["path"] for e in on_disk["bad_files"]] == [planted["broken"]]
    assert on_disk["class_counts"]["train"] == {"blue": 20, "green": 22, "red": 20}  # broken counted, moved ones moved
    assert on_disk["class_counts"]["val"] == {"blue": 6, "green": 6, "red": 7}
    for finding, column in (("label_issues", "given"), ("leaks", "duplicate_of"), ("duplicates", "duplicate_of"),
                            ("outliers", "score"), ("bad_files", "reason")):
        with open(out / f"{finding}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["path"] for r in rows] == [e["path"] for e in on_disk[finding]]
        assert all(column in r for r in rows)
    assert (out / "class_counts.csv").read_text().splitlines()[0] == "class,train,val"
    assert list(out.glob("embeddings-*.safetensors"))  # the embedding cache of `visionzoo embed`


def test_audit_cli_json_prints_the_same_object_and_reuses_the_cache(audited, capsys):
    from visionzoo.cli import main

    planted, report, out = audited
    data = Path(planted["leak"][0]).parents[2]
    assert main(["audit", "--data", str(data), "--model", "resnet18", "--pretrained", "none", "--out", str(out),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "audit.json").read_text())
    assert printed["label_issues"] == report["label_issues"]


def test_audit_html_opens_in_chromium_with_its_sections(audited):
    from serve.test_serve_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, _require_browser

    _require_browser()
    from playwright.sync_api import sync_playwright

    _, report, out = audited
    page_text = (out / "audit.html").read_text()
    assert "http://" not in page_text and "https://" not in page_text  # self-contained: nothing fetched
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "audit-page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto((out / "audit.html").as_uri())
            for section in ("leaks", "label-issues", "duplicates", "outliers", "bad-files", "class-counts"):
                assert page.locator(f"section#{section} h2").is_visible()
            assert page.locator("section#leaks h2").inner_text().startswith("Leaks across splits (1)")
            images = page.locator("section#label-issues img")
            assert images.count() == len(report["label_issues"])
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            order = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
            assert order[0] == "leaks"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not blank


def test_exclude_list_reads_audit_csvs_and_plain_lists(audited, tmp_path):
    planted, _, out = audited
    data = Path(planted["leak"][0]).parents[2]
    listed = read_path_list(out / "label_issues.csv")
    assert set(planted["flips"]) <= listed
    plain = tmp_path / "drop.txt"
    plain.write_text(f"# comment\n{planted['exact'][0]}\n\n{os.path.relpath(planted['near'][0], tmp_path)}\n")
    assert read_path_list(plain) == {planted["exact"][0], planted["near"][0]}

    splits = resolve_data(data)
    kept, removed = exclude_files(splits, out / "leaks.csv")
    assert removed == 1 and planted["leak"][0] not in kept.val.paths and len(kept.train) == len(splits.train)
    with pytest.raises(ValueError, match="none of the"):
        nowhere = tmp_path / "nowhere.txt"
        nowhere.write_text("/no/such/image.png\n")
        exclude_files(splits, nowhere)


def test_train_exclude_trains_without_the_listed_files(audited, tmp_path, one_thread, capsys):
    from visionzoo.cli import main

    planted, _, out = audited
    data = Path(planted["leak"][0]).parents[2]
    issues = json.loads((out / "audit.json").read_text())["label_issues"]
    in_train = sum(1 for e in issues if e["split"] == "train")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", str(data), "--exclude", str(out / "label_issues.csv"),
                 "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--no-progress", "--out", str(run)]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    # 63 training files (the broken one included: training skips it itself) and 19 validation files, less the listed
    assert f"{len(issues)} files excluded by {out / 'label_issues.csv'}" in printed
    assert f"{63 - in_train} train / {19 - (len(issues) - in_train)} val images" in printed
    assert json.loads((run / "config.json").read_text())["requested"]["exclude"] == str(out / "label_issues.csv")


def test_weights_embed_at_their_own_size_and_random_weights_at_the_images(tmp_path):
    """Pretrained (or trained) weights see what they were trained on: small images are upsampled
    for them; random weights embed small images at about their own size."""
    planted = tmp_path / "data"
    make_planted(planted)
    model = visionzoo.create_model("mobilenetv3_small_050", num_classes=3)
    from visionzoo.factory import data_config

    visionzoo.with_spec(model, data_config={**data_config(model), "input_size": (3, 96, 96)},
                        class_names=list(COLOURS))
    folder = visionzoo.save_model(model, tmp_path / "trained")
    trained = visionzoo.audit(planted, model=str(folder), out=None, progress=False)
    random = visionzoo.audit(planted, model="mobilenetv3_small_050", pretrained=False, out=None, progress=False)
    assert trained["summary"]["image_size"] == 96  # the model's, though the images are 40 px
    assert random["summary"]["image_size"] == 64  # the images' median side, rounded up to a multiple of 32


def test_audit_csvs_neutralise_spreadsheet_formulas_and_exclude_reads_the_paths_back(tmp_path):
    """A file or class named like a formula (`=HYPERLINK(...)`) is text in the CSVs, as is in the JSON."""
    from visionzoo.diagnose.data_audit.report import FINDINGS, write_report

    report = {finding: [] for finding in FINDINGS}
    report["label_issues"] = [{"path": '=HYPERLINK("http://evil","x").png', "given": "+cmd|' /C calc'!A0",
                               "suggested": "@SUM(1)", "score": 0.25, "split": "train"}]
    report["outliers"] = [{"path": "-1.png", "score": -0.5, "split": "train", "label": "cat"}]
    report["class_counts"] = {"train": {"=1+1": 1, "cat": 2}}
    report["summary"] = {}
    write_report(report, tmp_path)
    with open(tmp_path / "label_issues.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row == {"path": "'=HYPERLINK(\"http://evil\",\"x\").png", "given": "'+cmd|' /C calc'!A0",
                   "suggested": "'@SUM(1)", "score": "0.25", "split": "train"}
    with open(tmp_path / "outliers.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["score"] == "-0.5"  # numbers stay numbers
    assert (tmp_path / "class_counts.csv").read_text().splitlines()[1] == "'=1+1,1"
    assert json.loads((tmp_path / "audit.json").read_text())["label_issues"] == report["label_issues"]
    assert read_path_list(tmp_path / "label_issues.csv") == {str(tmp_path / '=HYPERLINK("http://evil","x").png')}
    assert read_path_list(tmp_path / "outliers.csv") == {str(tmp_path / "-1.png")}


def test_offline_the_default_backbone_fails_at_once_saying_how_to_give_weights(tmp_path, monkeypatch):
    from visionzoo.weights import WeightsNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsNotAvailableError) as raised:
        visionzoo.audit(tmp_path / "no-such-folder", out=tmp_path / "report")  # the weights are checked first
    message = str(raised.value)
    assert "\n" not in message and "resnet18" in message and "HF_HUB_OFFLINE=1" in message
    assert "--pretrained FILE" in message and "--pretrained none" in message
    assert not (tmp_path / "report").exists()
