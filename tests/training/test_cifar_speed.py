"""`--recipe cifar-speed` (airbench94's recipe) and the data-dependent initialisation `train` gives a model
that has `init_from_data` (training.data_init): on a fresh run from scratch, never on resume."""

from __future__ import annotations

import json

import pytest
import torch

import visionzoo
from visionzoo.cli import main as cli_main
from visionzoo.models.airbench import AirbenchNet
from visionzoo.training.recipes import CIFAR_SPEED
from visionzoo.training.settings import TrainSettings, resolve_settings

SHAPES = "builtin:shapes?size=32&train=48&val=16"
QUIET = dict(progress=False, plots=False, tensorboard=False, calibrate=False, reject=False, workers=0)


def _tiny_airbench() -> AirbenchNet:
    return visionzoo.create_model("airbench_cifar_w32", widths=(8, 16, 16))


def _training_images() -> torch.Tensor:
    """SHAPES' training images as the network receives them: the evaluation view, with CIFAR's normalisation."""
    from visionzoo.data.datasets import ImageDataset
    from visionzoo.data.sources import resolve_data
    from visionzoo.data.transforms import eval_transform
    from visionzoo.factory import data_config

    dataset = ImageDataset(resolve_data(SHAPES).train, eval_transform(data_config("airbench_cifar_w32"), 32))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_the_recipe_sets_airbench94s_settings_and_says_so():
    resolved = resolve_settings(TrainSettings(recipe="cifar-speed"), "airbench_cifar", num_train=50_000, num_val=10_000,
                                native_size=32)
    for name, value in CIFAR_SPEED.items():
        assert getattr(resolved, name) == value, name
        assert resolved.sources[name].startswith("recipe cifar-speed"), (name, resolved.sources[name])
    assert resolved.lr == pytest.approx(1.5)  # base_lr 0.375 per 256 at batch 1024
    assert resolved.warmup_steps == round(0.23 * 10 * 49) and "23%" in resolved.sources["warmup_steps"]
    assert resolved.val_every == 10 and resolved.sources["val_every"].startswith("recipe cifar-speed")
    assert resolved.precision in ("bf16", "auto") and resolved.sources["precision"].startswith("recipe cifar-speed")


def test_settings_the_user_gives_win_over_the_recipe_even_at_their_defaults():
    """`--no-tta-flip` and `--lookahead 0` are the dataclass defaults: `train` records them as given (`sources`),
    so the recipe's True and 5 do not replace them."""
    requested = TrainSettings(recipe="cifar-speed", tta_flip=False, lookahead=0, epochs=4, batch_size=256,
                              sources={"tta_flip": "user", "lookahead": "user", "epochs": "user", "batch_size": "user"})
    resolved = resolve_settings(requested, "airbench_cifar", num_train=1000, num_val=100, native_size=32)
    assert not resolved.tta_flip and resolved.lookahead == 0 and resolved.epochs == 4 and resolved.batch_size == 256
    assert {resolved.sources[n] for n in ("tta_flip", "lookahead", "epochs", "batch_size")} == {"user"}
    assert resolved.val_every == 4 and resolved.warmup_steps == round(0.23 * 4 * 4)  # follow the run's epochs
    assert resolved.lr == pytest.approx(0.375)  # still the recipe's base_lr, at the user's batch
    # without the record (a TrainSettings made by hand), a value equal to the default is taken as not given
    unrecorded = resolve_settings(TrainSettings(recipe="cifar-speed", tta_flip=False), "airbench_cifar", num_train=1000)
    assert unrecorded.tta_flip


def test_cli_trains_airbench_with_the_recipe_and_records_it(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli_main(["train", "--model", "airbench_cifar_w32", "--pretrained", "none", "--recipe", "cifar-speed",
                     "--data", SHAPES, "--epochs", "1", "--batch-size", "24", "--precision", "fp32", "--no-tta-flip",
                     "--out", "run", "--no-progress", "--no-calibrate", "--no-reject", "--workers", "0"])
    assert code == 0
    captured = capfd.readouterr()
    out = captured.out + captured.err  # the run's log lines go to stderr
    assert "init_from_data: weights computed from 48 training images" in out and "cifar-speed recipe" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    resolved, sources = config["resolved"], config["settings_source"]
    assert resolved["recipe"] == "cifar-speed" and resolved["lookahead"] == 5 and resolved["alternate_flip"]
    assert sources["lookahead"].startswith("recipe cifar-speed") and sources["label_smoothing"].startswith("recipe cifar-speed")
    assert resolved["tta_flip"] is False and sources["tta_flip"] == "user"  # the flag given, though it is the default
    assert resolved["batch_size"] == 24 and sources["batch_size"] == "user"
    assert config["data_config"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])  # the card's CIFAR statistics
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] == 1


class _Interrupting:
    """Raises KeyboardInterrupt in the model's `limit`-th training forward (Ctrl-C in the middle of a run)."""

    def __init__(self, model: torch.nn.Module, limit: int):
        self.calls, self.limit, self.forward = 0, limit, model.forward
        model.forward = self

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.limit:
            raise KeyboardInterrupt
        return self.forward(x)


def test_train_initialises_from_data_once_and_resume_does_not_again(tmp_path, one_thread, monkeypatch):
    """A fresh run calls init_from_data once, before its first step (the whitening filters it leaves whiten the
    training patches and never train); resumed after Ctrl-C, the run does not call it again and ends on the
    uninterrupted run's weights, bit for bit."""
    calls = []
    original = AirbenchNet.init_from_data

    def counting(self, images):
        calls.append(images.shape)
        return original(self, images)

    monkeypatch.setattr(AirbenchNet, "init_from_data", counting)
    settings = dict(recipe="cifar-speed", epochs=2, batch_size=16, precision="fp32", deterministic=True, **QUIET)

    torch.manual_seed(0)
    whole_model = _tiny_airbench()
    random_filters = whole_model[0].weight.detach().clone()
    visionzoo.train(whole_model, SHAPES, out=tmp_path / "whole", **settings)
    assert calls == [torch.Size([48, 3, 32, 32])]  # every training image (fewer than INIT_SAMPLE), normalised
    whole = visionzoo.load_model(tmp_path / "whole" / "last").state_dict()
    assert not torch.equal(whole["0.weight"], random_filters)
    initialised = _tiny_airbench()  # the filters the run kept are those of its sample (frozen: never trained)
    original(initialised, _training_images())  # not counted
    torch.testing.assert_close(whole["0.weight"], initialised[0].weight)

    torch.manual_seed(0)
    cut_model = _tiny_airbench()
    _Interrupting(cut_model, limit=5)  # 3 steps an epoch: stops in the second epoch
    assert visionzoo.train(cut_model, SHAPES, out=tmp_path / "cut", **settings).interrupted
    assert len(calls) == 2
    resumed_model = _tiny_airbench()  # random whitening: only the checkpoint can make it right
    visionzoo.train(resumed_model, None, resume=tmp_path / "cut", progress=False)
    assert len(calls) == 2, "resume ran init_from_data again"
    resumed = visionzoo.load_model(tmp_path / "cut" / "last").state_dict()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_a_run_from_weights_is_not_initialised_from_data(tmp_path, one_thread, monkeypatch):
    """Weights already hold what init_from_data would compute: a run that starts from them keeps them."""
    calls = []
    monkeypatch.setattr(AirbenchNet, "init_from_data", lambda self, images: calls.append(images.shape))
    visionzoo.train(_tiny_airbench(), SHAPES, out=tmp_path / "scratch", epochs=1, batch_size=16, precision="fp32",
                    **QUIET)
    assert len(calls) == 1
    visionzoo.save_model(visionzoo.create_model("airbench_cifar_w32"), tmp_path / "saved",
                         classes=[str(i) for i in range(10)])
    visionzoo.train("airbench_cifar_w32", SHAPES, pretrained=str(tmp_path / "saved"), out=tmp_path / "tuned",
                    recipe="scratch", epochs=1, batch_size=16, precision="fp32", **QUIET)
    assert len(calls) == 1
