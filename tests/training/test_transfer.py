"""Transfer runs: the new head's initialisation, LP-FT's probe start, the data-size rules (a schedule in
optimizer steps with a floor), the decoded-uint8 cache of large photos (each JPEG decoded once),
thread counts, the time split, and freezing stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import visionzoo
from visionzoo.data import datasets
from visionzoo.training.freeze import freeze_stages, stage_prefixes
from visionzoo.training.recipes import size_rule, transfer_plan
from visionzoo.training.settings import TrainSettings, resolve_settings
from visionzoo.training.timing import plan_threads
from visionzoo.training.transfer import init_new_head_

QUIET = {"workers": 0, "plots": False, "tensorboard": False, "progress": False}


class Small(torch.nn.Module):
    """A two-layer net: trainer mechanics without a real network's cost."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def _photos(root: Path, train: int = 6, val: int = 3, size=(64, 48), classes=("cat", "dog")) -> Path:
    """Two separable classes of JPEG 'photos' larger than the training size."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((size[1], size[0], 3)) * 80).astype(np.uint8)
                pixels[..., label] += 150
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def _random_weights(tmp_path: Path, name: str = "resnet18") -> Path:
    """An ImageNet-shaped (1000-class) checkpoint standing in for real weights."""
    torch.manual_seed(0)
    path = tmp_path / f"{name}.safetensors"
    save_file(visionzoo.create_model(name).state_dict(), path)
    return path


def test_a_new_head_starts_at_zero_in_transfer_runs_and_from_the_reference_from_scratch(tmp_path, one_thread):
    data, weights = _photos(tmp_path / "photos"), _random_weights(tmp_path)
    # lr 0: the exported head is the initial one
    common = dict(epochs=1, batch_size=4, lr=0.0, image_size=32, **QUIET)
    visionzoo.train("resnet18", data, pretrained=str(weights), out=tmp_path / "ft", recipe="finetune", **common)
    head = load_file(tmp_path / "ft" / "last" / "model.safetensors")
    assert head["fc.weight"].shape == (2, 512)
    assert torch.count_nonzero(head["fc.weight"]) == 0 and torch.count_nonzero(head["fc.bias"]) == 0
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["new_head"] == {"init": "zeros"} and "BiT" in config["settings_source"]["head_init_std"]

    head = torch.nn.Linear(512, 10)
    assert init_new_head_(torch.nn.Sequential(head), {"0.weight", "0.bias"}, 0.01)
    assert 0.009 < float(head.weight.detach().std()) < 0.011 and torch.count_nonzero(head.bias) == 0

    torch.manual_seed(0)
    visionzoo.train(visionzoo.create_model("resnet18", num_classes=2), data, out=tmp_path / "scratch", **common)
    scratch = load_file(tmp_path / "scratch" / "last" / "model.safetensors")["fc.weight"]
    assert float(scratch.abs().max()) > 0.02  # torchvision's U(-1/sqrt(512), 1/sqrt(512)), kept


def test_reset_classifier_by_the_trainer_gives_a_transfer_head(tmp_path, one_thread):
    data = _photos(tmp_path / "photos")
    model = visionzoo.create_model("resnet18", num_classes=7)  # the trainer resets it to 2 classes
    visionzoo.train(model, data, out=tmp_path / "run", recipe="finetune", epochs=1, batch_size=4, lr=0.0,
                    image_size=32, **QUIET)
    assert torch.count_nonzero(load_file(tmp_path / "run" / "last" / "model.safetensors")["fc.weight"]) == 0


def test_auto_is_the_default_with_weights_and_probe_init_starts_the_head_from_a_linear_probe(tmp_path, one_thread):
    data, weights = _photos(tmp_path / "photos", train=8), _random_weights(tmp_path)
    result = visionzoo.train("resnet18", data, pretrained=str(weights), out=tmp_path / "auto", epochs=1, lr=0.0,
                             image_size=32, probe_init=True, **QUIET)
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["resolved"]["recipe"] == "auto" and "--pretrained" in config["settings_source"]["recipe"]
    assert config["new_head"] == {"init": "linear probe (LP-FT)"}
    assert config["settings_source"]["batch_size"].startswith("data-size rule")
    head = load_file(tmp_path / "auto" / "last" / "model.safetensors")["fc.weight"]
    assert torch.count_nonzero(head) > 0
    assert result.best_metric == 1.0  # the probe alone separates the two colours (lr 0: nothing else trained)
    auto = resolve_settings(TrainSettings(), "resnet18", pretrained=True, num_train=100)
    assert auto.recipe == "auto" and auto.head_init_std == 0 and not auto.probe_init and auto.freeze_stages == 2
    scratch = resolve_settings(TrainSettings(), "resnet18")
    assert scratch.recipe == "scratch" and scratch.head_init_std is None and not scratch.cache


def test_the_schedule_is_counted_in_steps_with_a_floor_for_tiny_sets():
    tiny = transfer_plan(80)  # 5 steps per epoch at batch 16: 20 epochs reach the floor of 100 steps
    batch, epochs, warmup = (tiny[k][0] for k in ("batch_size", "epochs", "warmup_steps"))
    steps = epochs * math.ceil(80 / batch)
    assert batch == 16 and steps >= size_rule(80).min_steps and epochs == 20 and warmup == round(0.1 * steps)
    assert "floor of 100 optimizer steps" in tiny["epochs"][1]
    # the transfer benchmark's 300 photos: 19 steps per epoch, so 6 epochs reach the floor
    assert transfer_plan(300)["epochs"][0] == 6
    big = transfer_plan(100_000)
    assert big["batch_size"][0] == 64 and big["epochs"][0] == size_rule(100_000).epochs
    assert transfer_plan(80, epochs=3)["epochs"] == (3, "user")
    resolved = resolve_settings(TrainSettings(recipe="finetune"), "resnet18", num_train=80, num_val=400)
    assert resolved.warmup_steps == warmup and resolved.epochs == epochs
    assert resolved.val_every == resolved.epochs  # 400 val images cost more than an epoch on 80
    assert resolved.sources["batch_size"].startswith("data-size rule") and resolved.sources["lr"].startswith("base_lr")


def test_a_tiny_set_gets_the_floor_of_optimizer_steps_and_the_warmup_in_steps(tmp_path, one_thread):
    data = _photos(tmp_path / "photos", train=5, val=1)  # 10 training images
    result = visionzoo.train(Small(), data, out=tmp_path / "run", recipe="finetune", image_size=16, lr=0.01,
                             early_stopping=0, **QUIET)  # every step of the plan, however the validation goes
    plan = transfer_plan(10)
    steps = plan["epochs"][0] * math.ceil(10 / plan["batch_size"][0])
    assert result.history[-1]["step"] == steps >= 50  # 5 epochs of batch 8 would be 10 steps
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["warmup_steps"] == round(0.1 * steps)


def test_large_photos_are_decoded_once_into_the_cache_and_never_again(tmp_path, one_thread, monkeypatch):
    data = _photos(tmp_path / "photos", train=6, val=3, size=(120, 90))
    decodes = []
    original = datasets.decode_image
    monkeypatch.setattr(datasets, "decode_image", lambda path, **kw: decodes.append(path) or original(path, **kw))
    visionzoo.train(Small(), data, out=tmp_path / "run", recipe="finetune", epochs=3, batch_size=4, image_size=32,
                    **QUIET)
    assert len(decodes) == 18 and len(set(decodes)) == 18  # 12 train + 6 val files, once each, over 3 epochs
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    cache = config["cache"]
    # room for RandomResizedCrop: 32 / sqrt(0.35) = 55 px, within the photos' 90 px shorter side
    assert cache["in_memory"] and cache["train_side"] == 55 and cache["eval_resize"] == 36
    assert config["settings_source"]["cache"].startswith("recipe finetune")


def test_the_cache_is_memory_mapped_when_it_does_not_fit_and_trains_the_same(tmp_path, one_thread, monkeypatch):
    from visionzoo.data import cache

    data = _photos(tmp_path / "photos", train=4, val=2, size=(80, 60))
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))

    def run(out):
        torch.manual_seed(0)
        visionzoo.train(Small(), data, out=tmp_path / out, recipe="finetune", epochs=1, batch_size=4, image_size=32,
                        deterministic=True, **QUIET)
        return load_file(tmp_path / out / "last" / "model.safetensors")

    in_memory = run("memory")
    monkeypatch.setattr(cache, "memory_budget", lambda: 0)
    mapped = run("mapped")
    assert len(list((tmp_path / "cache" / "pixels").glob("*.npy"))) == 2  # train and val files
    for key in in_memory:
        torch.testing.assert_close(mapped[key], in_memory[key], rtol=0, atol=0, msg=key)


def test_threads_plus_loader_workers_stay_within_the_cores(tmp_path, one_thread):
    assert plan_threads(workers=1, current=2, cores=2) == 1
    assert plan_threads(workers=0, current=2, cores=2) == 2
    assert plan_threads(workers=3, current=8, cores=2) == 1
    assert plan_threads(workers=0, current=1, cores=16) == 1  # a user's lower setting is kept
    before = torch.get_num_threads()
    data = _photos(tmp_path / "photos", train=2, val=1)
    visionzoo.train(Small(), data, out=tmp_path / "run", recipe="finetune", epochs=1, batch_size=4, image_size=16,
                    plots=False, tensorboard=False, progress=False, workers=1)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    cores = len(__import__("os").sched_getaffinity(0))
    assert config["threads"]["loader_workers"] == 1
    assert config["threads"]["intra_op"] + 1 <= max(cores, 2) and torch.get_num_threads() == before
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["time"]) >= {"data", "forward_backward", "optimizer", "validation", "cache"}
    assert summary["time"]["forward_backward"] > 0


def test_stage_prefixes_follow_feature_info():
    with torch.device("meta"):
        resnet = visionzoo.create_model("resnet18")
        lite = visionzoo.create_model("efficientnet_lite0")
        vit = visionzoo.create_model("vit_tiny_patch16_224")
    assert stage_prefixes(resnet) == ["layer1", "layer2", "layer3", "layer4"]  # act1 belongs to the stem
    assert stage_prefixes(lite) == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert stage_prefixes(vit)[:2] == ["blocks.0", "blocks.1"]
    with pytest.raises(ValueError, match="between 0 .* and 4"):
        freeze_stages(resnet, 5)


def test_freeze_stages_leaves_frozen_weights_and_statistics_unchanged(tmp_path, one_thread):
    data = _photos(tmp_path / "photos", train=4, val=1)
    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    visionzoo.train(model, data, out=tmp_path / "run", recipe="finetune", epochs=1, batch_size=4, image_size=32,
                    lr=0.1, freeze_stages=1, **QUIET)
    after = load_file(tmp_path / "run" / "last" / "model.safetensors")
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen if k in after)
    assert "bn1.running_mean" in frozen  # BatchNorm statistics of frozen stages stay too
    assert not torch.equal(after["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])


def test_the_transfer_settings_come_from_the_command_line():
    from visionzoo.cli import build_parser
    from visionzoo.training.command import _settings_from_args

    args = build_parser().parse_args(["train", "--model", "resnet18", "--data", "photos", "--recipe", "auto",
                                      "--freeze-stages", "1", "--no-probe-init", "--head-init-std", "0.01",
                                      "--warmup-steps", "5", "--no-cache"])
    settings = _settings_from_args(args)
    assert (settings["recipe"], settings["freeze_stages"], settings["probe_init"], settings["head_init_std"],
            settings["warmup_steps"], settings["cache"]) == ("auto", 1, False, 0.01, 5, False)
    resolved = resolve_settings(TrainSettings(**settings), "resnet18", pretrained=True, num_train=100)
    assert resolved.sources["freeze_stages"] == "user" and resolved.warmup_steps == 5 and not resolved.cache
    assert resolve_settings(TrainSettings(freeze_stages=-1), "resnet18").freeze_stages is None


def test_freeze_bn_keeps_the_running_statistics_and_trains_the_affine_weights(tmp_path, one_thread):
    data = _photos(tmp_path / "photos", train=4, val=1)
    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    visionzoo.train(model, data, out=tmp_path / "run", recipe="finetune", epochs=1, batch_size=4, image_size=32,
                    lr=0.1, freeze_bn=True, freeze_stages=-1, **QUIET)
    after = load_file(tmp_path / "run" / "last" / "model.safetensors")
    statistics = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(statistics) > 30 and all(torch.equal(after[k], before[k]) for k in statistics)
    assert not torch.equal(after["layer4.1.bn2.weight"], before["layer4.1.bn2.weight"])  # affine weights train
    # without it, training-mode BatchNorm updates its statistics
    visionzoo.train(model, data, out=tmp_path / "plain", recipe="finetune", epochs=1, batch_size=4, image_size=32,
                    lr=0.1, freeze_bn=False, freeze_stages=-1, **QUIET)
    plain = load_file(tmp_path / "plain" / "last" / "model.safetensors")
    assert not torch.equal(plain["layer4.1.bn2.running_mean"], after["layer4.1.bn2.running_mean"])


def test_auto_transfer_of_a_convnet_freezes_batchnorm_and_runs_channels_last():
    convnet = resolve_settings(TrainSettings(), "efficientnet_lite0", pretrained=True, num_train=300)
    assert convnet.freeze_bn and convnet.channels_last and "channels-last" in convnet.sources["channels_last"]
    assert convnet.sources["momentum"] == "default"  # a dataclass default, not the user's choice
    vit = resolve_settings(TrainSettings(), "vit_tiny_patch16_224", pretrained=True, num_train=300)
    assert not vit.freeze_bn and vit.channels_last  # every run: the layout of eval and predict (factory.layout)
    scratch = resolve_settings(TrainSettings(), "resnet18", num_train=300)
    assert scratch.recipe == "scratch" and not scratch.freeze_bn and scratch.channels_last
    given = resolve_settings(TrainSettings(channels_last=False, freeze_bn=False, momentum=0.8), "resnet18",
                             pretrained=True, num_train=300)
    assert not given.channels_last and not given.freeze_bn
    assert given.sources["channels_last"] == given.sources["momentum"] == "user"


def test_auto_picks_lora_for_a_big_transformer_on_a_small_set_and_says_so():
    big = resolve_settings(TrainSettings(), "vit_base_patch16_224", pretrained=True, num_train=300)
    assert big.adapt == "lora" and "M-parameter vit backbone on 300 images" in big.sources["adapt"]
    assert resolve_settings(TrainSettings(), "vit_small_patch16_224", pretrained=True, num_train=300).adapt == "full"
    assert resolve_settings(TrainSettings(), "vit_base_patch16_224", pretrained=True, num_train=50_000).adapt == "full"
    assert resolve_settings(TrainSettings(), "resnet152", pretrained=True, num_train=300).adapt == "full"  # no targets
    given = resolve_settings(TrainSettings(adapt="full"), "vit_base_patch16_224", pretrained=True, num_train=300)
    assert given.adapt == "full" and given.sources["adapt"] == "user"


def test_one_class_or_no_validation_image_is_one_line_before_training(tmp_path, capsys):
    from visionzoo.cli import main
    from visionzoo.errors import DataError

    one_class = _photos(tmp_path / "one", classes=("cat",))
    with pytest.raises(DataError, match=r"holds one class \('cat'\); a classifier needs at least two"):
        visionzoo.train(Small(), one_class, out=tmp_path / "run", epochs=1, **QUIET)
    no_val = _photos(tmp_path / "noval", val=0)  # val/cat and val/dog hold no image
    with pytest.raises(DataError, match=r"has no validation image"):
        visionzoo.train(Small(), no_val, out=tmp_path / "run", epochs=1, **QUIET)
    assert not (tmp_path / "run").exists()
    assert main(["train", "--model", "resnet18", "--data", str(one_class), "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert "training" not in out and len(err.strip().splitlines()) == 1 and "one class" in err
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("name, recipe, settings", [
    ("resnet18", "linear-probe", {"probe_init": False}),
    ("resnet18", "finetune", {"adapt": "freeze"}),
    ("vit_tiny_patch16_224", "finetune", {"adapt": "lora"}),  # weights at 224 px, resampled for 32
], ids=["linear-probe", "freeze", "lora"])
def test_the_worst_mistakes_plot_draws_grad_cams_whatever_the_recipe_froze(tmp_path, one_thread, monkeypatch,
                                                                            name, recipe, settings):
    pytest.importorskip("pytorch_grad_cam")
    if settings.get("adapt") == "lora":
        pytest.importorskip("peft")
    from visionzoo.diagnose import explanation

    drawn = []
    cam_maps = explanation.cam_maps

    def recording_cam_maps(model, batch, **options):
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        maps, probabilities = cam_maps(model, batch, **options)
        drawn.append((model, frozen, maps))
        return maps, probabilities

    monkeypatch.setattr(explanation, "cam_maps", recording_cam_maps)
    data, weights = _photos(tmp_path / "photos", train=2, val=2), _random_weights(tmp_path, name)
    # lr 0 and a zero head: every image gets the first class, so the second class's are the mistakes
    visionzoo.train(name, data, pretrained=str(weights), out=tmp_path / "run", recipe=recipe, epochs=1, batch_size=4,
                    lr=0.0, image_size=32, workers=0, tensorboard=False, progress=False, **settings)
    assert (tmp_path / "run" / "worst_mistakes.png").is_file()
    assert len(drawn) == 1
    model, frozen, maps = drawn[0]
    assert frozen and maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    # the plot changed nothing: the same parameters are frozen, and none was left a gradient by it
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
