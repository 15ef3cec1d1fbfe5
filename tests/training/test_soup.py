"""Model soups: the greedy soup never validates below its best ingredient, the soup is a run folder
the other commands load, and models that cannot be averaged are refused with the reason."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo.cli import main
from visionzoo.errors import SettingError
from visionzoo.evaluation import evaluate
from visionzoo.prediction import predict
from visionzoo.training.soup import average_weights, greedy_soup

SHAPES = "builtin:shapes?size=16&train=48&val=40"
QUIET = dict(workers=0, plots=False, tensorboard=False, progress=False, batch_size=16)


@pytest.fixture(scope="module")
def fine_tunes(tmp_path_factory):
    """A short run and two models near it (its weights plus noise, as fine-tunes from its weights would
    be): the first is a run folder, whose validation split judges the soup."""
    root = tmp_path_factory.mktemp("soup")
    torch.set_num_threads(1)
    base = visionzoo.train("mobilenetv3_small_050", SHAPES, out=root / "base", epochs=1, lr=0.1, **QUIET).run_dir
    generator = torch.Generator().manual_seed(0)
    runs = [base]
    for scale in (0.02, 0.3):
        model = visionzoo.load_model(base / "best")
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.numel() > 1:
                    parameter.add_(scale * parameter.std() * torch.randn(parameter.shape, generator=generator))
        runs.append(visionzoo.save_model(model, root / f"noisy{scale}"))
    return root, runs


def test_greedy_soup_keeps_an_ingredient_only_when_validation_does_not_drop():
    scores = {"a": 0.6, "b": 0.8, "c": 0.7}
    soups = {("b", "c"): 0.75, ("b", "a"): 0.85}  # c lowers the soup, a raises it
    chosen, best = greedy_soup(list(scores), scores, lambda names: soups[tuple(names[-2:])] if len(names) == 2
                               else pytest.fail("c should have been left out"))
    assert chosen == ["b", "a"] and best == 0.85
    states = [{"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}, {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}]
    averaged = average_weights(states)
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0])) and int(averaged["n"]) == 5


def test_greedy_soup_is_never_worse_than_its_best_run_and_loads_everywhere(fine_tunes, tmp_path, capsys):
    root, runs = fine_tunes
    result = visionzoo.soup(runs, out=tmp_path / "greedy")
    assert set(result.ingredients) == {str(run) for run in runs}
    assert result.score >= max(result.ingredients.values())
    assert result.chosen[0] == max(result.ingredients, key=result.ingredients.get)
    summary = json.loads((tmp_path / "greedy" / "summary.json").read_text())
    assert summary["best_val_top1"] == result.score and summary["soup"]["chosen"] == result.chosen
    # a run folder as any other: eval reads its best/ and agrees with the soup's own validation
    assert evaluate(tmp_path / "greedy", SHAPES)["top1"] == pytest.approx(result.score)
    image = tmp_path / "one.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    predictions = predict(tmp_path / "greedy", [image], topk=2)
    assert len(predictions) == 1
    capsys.readouterr()
    assert main(["soup", *map(str, runs), "--method", "uniform", "--out", str(tmp_path / "uniform"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["chosen"] == [str(run) for run in runs] and printed["ingredients"] == result.ingredients


def test_models_that_cannot_be_averaged_are_refused(fine_tunes, tmp_path, capsys):
    root, runs = fine_tunes
    classes = [f"c{i}" for i in range(10)]
    other = visionzoo.save_model(visionzoo.create_model("mobilenetv3_small_075", num_classes=10), tmp_path / "other",
                                 classes=classes)
    with pytest.raises(SettingError, match="different architectures"):
        visionzoo.soup([runs[0], other], out=tmp_path / "a")
    renamed = visionzoo.save_model(visionzoo.load_model(runs[0] / "best"), tmp_path / "renamed", classes=classes)
    with pytest.raises(SettingError, match="classes differ"):
        visionzoo.soup([runs[0], renamed], out=tmp_path / "b")
    scratch = tmp_path / "scratch"
    shutil.copytree(runs[0], scratch)
    config = json.loads((scratch / "config.json").read_text())
    (scratch / "config.json").write_text(json.dumps({**config, "pretrained": "other-start.safetensors"}))
    with pytest.raises(SettingError, match="fine-tuned from different weights"):
        visionzoo.soup([runs[0], scratch], out=tmp_path / "c")
    assert main(["soup", str(runs[0]), "--out", str(tmp_path / "d")]) == 2
    assert "at least two runs" in capsys.readouterr().err
