"""The trainer: run folder contents, recipes, exact resume after SIGKILL, Ctrl-C, non-finite loss,
and a 2-process gloo run agreeing with one process.

Runs that must be bit-comparable happen in subprocesses with one thread each, so thread
scheduling on this shared machine cannot change reduction orders between them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import visionzoo
from visionzoo.errors import UsageError
from visionzoo.training.checkpoint import load_checkpoint
from visionzoo.training.optim import Lookahead, build_optimizer, build_schedule, head_parameter_names, layer_ids
from visionzoo.training.settings import TrainSettings, resolve_settings
from visionzoo.training.trainer import NonFiniteLossError

SHAPES = "builtin:shapes?size=16&train=96&val=32"


class TinyNet(nn.Module):
    """A small conv net without BatchNorm (so per-process batches equal one big batch under DDP).
    `VISIONZOO_TEST_STEP_SLEEP` slows its forward so a test can kill a run mid-epoch reliably."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)  # exercises the RNG state in checkpoints
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        delay = float(os.environ.get("VISIONZOO_TEST_STEP_SLEEP", "0"))
        if delay and self.training:
            time.sleep(delay)
        return self.fc(self.dropout(self.features(x)))


RUN_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_train import TinyNet
    import visionzoo
    torch.manual_seed(0)
    kwargs = json.loads(sys.argv[1])
    resume = kwargs.pop("resume", None)
    data = kwargs.pop("data", {data!r})
    model = TinyNet(kwargs.pop("num_classes", 10), dropout=kwargs.pop("dropout", 0.1))
    result = visionzoo.train(model, None if resume else data, resume=resume, **kwargs)
    print("BEST", result.best_metric)
""")


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "run_tiny.py"
    path.write_text(RUN_SCRIPT.format(tests=str(Path(__file__).parent), data=SHAPES))
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _run(script: Path, kwargs: dict, **env) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(script), json.dumps(kwargs)], env=_env(**env),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


COMMON = dict(epochs=2, batch_size=8, seed=3, deterministic=True, lr=0.05, workers=0, plots=False,
              tensorboard=False, progress=False)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "last" / "model.safetensors")


def _photo_folder(root: Path, train: int = 24, val: int = 4) -> Path:
    """JPEGs larger than the training size, in two classes: the decoded-uint8 cache's input."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((30, 40, 3)) * 200).astype(np.uint8)
                pixels[..., label] += 55
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def _kill_mid_epoch(script: Path, settings: dict, killed: Path, steps_per_epoch: int) -> Path:
    """Run `script` with checkpoints every 3 steps, SIGKILL it once step 3 (mid-epoch) is on disk,
    and return its run folder, ready to resume."""
    process = subprocess.Popen([sys.executable, str(script),
                                json.dumps({**settings, "out": str(killed), "checkpoint_every": 3})],
                               env=_env(VISIONZOO_TEST_STEP_SLEEP="0.15"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    pointer = killed / "checkpoint" / "latest.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 3:
            break
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads(pointer.read_text())["step"] % steps_per_epoch != 0, "the kill should land mid-epoch"
    assert not (killed / "last").exists()
    return killed


@pytest.mark.parametrize("source", ["shapes", "photo-cache"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, source):
    """Both input paths: arrays in memory (crop preset), and JPEG files decoded once into the
    uint8 cache and augmented there by RandomResizedCrop + flip (the transfer recipes' path)."""
    script = _script(tmp_path)
    settings, steps_per_epoch = dict(COMMON), 12  # 96 images / batch 8
    if source == "photo-cache":
        settings.update(data=str(_photo_folder(tmp_path / "photos")), num_classes=2, recipe="finetune",
                        augment="light", image_size=16, cache=True, epochs=2, batch_size=8)
        steps_per_epoch = 6  # 48 images / batch 8
    _run(script, {**settings, "out": str(tmp_path / "whole")})

    killed = _kill_mid_epoch(script, settings, tmp_path / "killed", steps_per_epoch)
    _, state = load_checkpoint(killed / "checkpoint")
    assert 0 < state["batches_done"] < steps_per_epoch

    _run(script, {"resume": str(killed), "num_classes": settings.get("num_classes", 10)})
    whole, resumed = _weights(tmp_path / "whole"), _weights(killed)
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_two_gloo_processes_agree_with_one(tmp_path):
    script = _script(tmp_path)
    settings = {**COMMON, "epochs": 1, "dropout": 0.0}  # dropout masks differ with the per-process batch
    _run(script, {**settings, "out": str(tmp_path / "single")})
    port = str(29500 + os.getpid() % 1000)
    processes = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, str(script), json.dumps({**settings, "out": str(tmp_path / "ddp")})],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    single, ddp = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2


def test_bad_files_seen_by_every_gloo_rank_reach_bad_files_txt(tmp_path):
    """Each rank's loader skips the bad files in its own shard; rank 0 writes them all."""
    from PIL import Image

    bad = []
    for label, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        folder = tmp_path / "data" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
        for i in range(3):
            (folder / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
            bad.append(str(folder / f"broken{i}.jpg"))
    script = _script(tmp_path)
    settings = {**COMMON, "epochs": 1, "data": str(tmp_path / "data"), "image_size": 16, "val_fraction": 0.25, "num_classes": 2,
                "out": str(tmp_path / "ddp")}
    port = str(29500 + (os.getpid() + 500) % 1000)
    processes = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, str(script), json.dumps(settings)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    from visionzoo.data.datasets import ImageDataset, ResumableSampler
    from visionzoo.data.sources import resolve_data

    train = resolve_data(tmp_path / "data", val_fraction=0.25, seed=COMMON["seed"]).train
    rank1 = {train.paths[i] for i in ResumableSampler(ImageDataset(train), num_replicas=2, rank=1,
                                                       seed=COMMON["seed"], augment_seed=False)}
    assert rank1 & set(bad), "some bad training file should fall to rank 1 for this test to mean anything"
    listed = {line.split("\t")[0] for line in (tmp_path / "ddp" / "bad_files.txt").read_text().splitlines()}
    assert set(bad) & set(train.paths) <= listed


def test_resume_of_a_run_on_in_memory_data_asks_for_the_data(tmp_path, one_thread):
    from visionzoo.data.sources import resolve_data

    splits = resolve_data(SHAPES)
    visionzoo.train(_InterruptAt(2), splits, out=tmp_path / "run", epochs=1, batch_size=16, workers=0,
                    progress=False, plots=False, tensorboard=False)
    with pytest.raises(ValueError, match="trained on data given in memory .* pass the same data again"):
        visionzoo.train(None, None, resume=tmp_path / "run", progress=False)
    resumed = visionzoo.train(TinyNet(), splits, resume=tmp_path / "run", progress=False)
    assert not resumed.interrupted and len(resumed.history) == 1


def test_run_folder_holds_config_metrics_plots_and_loadable_exports(tmp_path, one_thread):
    torch.manual_seed(0)
    result = visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "run", epochs=2, batch_size=16, lr=0.05,
                             ema=True, ema_decay=0.9, grad_accum=2, clip_grad=1.0, label_smoothing=0.1,
                             class_balance="sampler", workers=0, progress=False)
    run = result.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["optimizer"] == "sgd" and config["resolved"]["grad_accum"] == 2
    assert config["classes"][0] == "circle"
    epochs = (run / "metrics_epochs.csv").read_text().splitlines()
    assert epochs[0].startswith("epoch,step,train_loss") and len(epochs) == 3
    assert (run / "metrics_steps.jsonl").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for png in ("curves.png", "confusion_matrix.png", "worst_mistakes.png"):
        assert (run / png).stat().st_size > 1000
    assert len(result.history) == 2 and 0.0 <= result.best_metric <= 1.0
    export = json.loads((run / "best" / "config.json").read_text())
    assert export["class_names"] == config["classes"]
    state = load_file(run / "last" / "model.safetensors")
    assert state["fc.weight"].shape == (10, 16)


def test_registered_model_export_loads_and_evaluates(tmp_path, one_thread):
    from visionzoo.evaluation import evaluate

    result = visionzoo.train("resnet18", "builtin:shapes?size=32&train=40&val=20", out=tmp_path / "run", epochs=1,
                             batch_size=20, workers=0, progress=False, plots=False, tensorboard=False)
    model = visionzoo.load_model(result.run_dir / "best")
    assert model.num_classes == 10
    assert list(visionzoo.spec_of(model).class_names[:2]) == ["circle", "ring"]
    metrics = evaluate(result.run_dir, "builtin:shapes?size=32&train=40&val=20", image_size=32)
    assert metrics["count"] == 20 and set(metrics["per_class"]) == set(visionzoo.spec_of(model).class_names)


def test_non_finite_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, one_thread):
    with pytest.raises(NonFiniteLossError, match="loss became .* lower learning rate"):
        visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "run", epochs=3, batch_size=16, lr=1e12, momentum=0.0,
                        checkpoint_every=1, warmup_epochs=0, workers=0, progress=False, plots=False, tensorboard=False)
    weights, state = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_val_every_validates_every_nth_and_the_last_epoch(tmp_path, one_thread):
    result = visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "run", epochs=3, batch_size=32, val_every=2,
                             workers=0, progress=False, plots=False, tensorboard=False)
    assert ["val_top1" in record for record in result.history] == [False, True, True]
    assert result.best_epoch in (1, 2) and (tmp_path / "run" / "best" / "model.safetensors").exists()
    rows = (tmp_path / "run" / "metrics_epochs.csv").read_text().splitlines()
    assert rows[0].endswith("val_loss,val_top1,val_top5,val_ece") and rows[1].endswith(",,,,")  # one header
    with pytest.raises(ValueError, match="val-every must be at least 1"):
        visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "bad", val_every=0)


def test_non_finite_loss_is_caught_between_log_steps_before_any_checkpoint(tmp_path, one_thread):
    """The loss is read back from the device at log steps and before checkpoints only: a NaN in
    between still stops the run, and no checkpoint is written from the broken weights."""
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, between steps 2 and 6; .* no checkpoint had been written yet"):
        visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "run", epochs=2, batch_size=16, lr=1e12, momentum=0.0,
                        log_every=1000, warmup_epochs=0, workers=0, progress=False, plots=False, tensorboard=False)
    assert not (tmp_path / "run" / "checkpoint").exists()


class _InterruptAt(TinyNet):
    def __init__(self, calls: int):
        super().__init__()
        self.calls, self.limit = 0, calls

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.limit:
                raise KeyboardInterrupt
        return super().forward(x)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, one_thread):
    result = visionzoo.train(_InterruptAt(4), SHAPES, out=tmp_path / "run", epochs=1, batch_size=16, workers=0,
                             progress=False, plots=False, tensorboard=False)
    assert result.interrupted
    _, state = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert state["batches_done"] == 3 and state["global_step"] == 3
    resumed = visionzoo.train(TinyNet(), None, resume=tmp_path / "run", progress=False)
    assert not resumed.interrupted and len(resumed.history) == 1
    assert (tmp_path / "run" / "last" / "model.safetensors").exists()


def test_lookahead_and_alternate_flip_resume_exactly_after_ctrl_c(tmp_path, one_thread):
    """The slow weights are part of the checkpoint: interrupted between two Lookahead syncs (7 of 12
    steps done, every 2) and resumed, the run ends on the uninterrupted run's weights."""
    settings = dict(epochs=2, batch_size=16, lr=0.05, lookahead=2, lookahead_decay=0.6, alternate_flip=True,
                    schedule="linear", min_lr_ratio=0.1, deterministic=True, workers=0, progress=False, plots=False,
                    tensorboard=False)
    torch.manual_seed(0)
    visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "whole", **settings)
    torch.manual_seed(0)
    visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "plain", **{**settings, "lookahead": 0})
    torch.manual_seed(0)
    assert visionzoo.train(_InterruptAt(8), SHAPES, out=tmp_path / "cut", **settings).interrupted
    _, state = load_checkpoint(tmp_path / "cut" / "checkpoint")
    assert state["global_step"] == 7 and len(state["lookahead"]) == 6  # 3 weights, 3 biases
    visionzoo.train(TinyNet(), None, resume=tmp_path / "cut", progress=False)
    whole, resumed, plain = _weights(tmp_path / "whole"), _weights(tmp_path / "cut"), _weights(tmp_path / "plain")
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(plain["fc.weight"], whole["fc.weight"])  # Lookahead changed the run


def test_lookahead_pulls_live_weights_to_slow_ones_on_its_schedule():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    lookahead = Lookahead(model, every=2, max_decay=0.5, total_steps=4)

    def sgd_step(step):  # a stand-in optimizer step: every float tensor moves by +1
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(1.0)
        lookahead.step(step)

    def offset(key):
        return float((model.state_dict()[key] - start[key]).mean())

    sgd_step(1)
    assert offset("0.weight") == pytest.approx(1.0)  # no sync yet
    sgd_step(2)  # decay 0.5 * (2/4)^3 = 1/16: slow = 0 + 15/16 * 2
    assert offset("0.weight") == pytest.approx(1.875) and offset("1.running_mean") == pytest.approx(1.875)
    assert int(model[1].num_batches_tracked) == 0  # integer buffers stay out
    sgd_step(3)
    sgd_step(4)  # decay 0.5: slow = 1.875 + 0.5 * (3.875 - 1.875)
    assert offset("0.weight") == pytest.approx(2.875)
    odd = Lookahead(model, every=2, max_decay=0.5, total_steps=3)  # the last step ends on the slow weights
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    odd.step(3)
    assert torch.equal(model[0].weight, before)


def test_norm_lr_scale_and_linear_schedule():
    model = visionzoo.create_model("resnet18", num_classes=3)
    heads = head_parameter_names(model, 3)
    settings = resolve_settings(TrainSettings(lr=0.1, norm_lr_scale=64), "resnet18")
    optimizer = build_optimizer(model, settings, heads)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        expected = 6.4 if name.startswith(("bn", "layer1.0.bn")) or ".bn" in name or "downsample.1" in name else 0.1
        assert lr_of[id(parameter)] == pytest.approx(expected), name
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(0.1)  # the bar shows the base lr
    decayed = build_optimizer(model, resolve_settings(TrainSettings(lr=0.1, norm_lr_scale=64, weight_decay=1e-3,
                                                                   norm_weight_decay=True), "resnet18"), heads)
    for group in decayed.param_groups:  # every parameter decays by lr x weight decay = 1e-4 per step
        assert group["lr"] * group["weight_decay"] == pytest.approx(1e-4)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 5e-4}  # default: norms not decayed
    schedule = build_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 10, 1, 0.1, "linear")
    factors = []
    for _ in range(10):
        factors.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    assert factors[0] == pytest.approx(0.5) and factors[1] == pytest.approx(1.0)
    assert factors[5] == pytest.approx(0.1 + 0.9 * (1 - 4 / 9))  # straight line from the peak to 0.1
    triangle = build_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 10, 4, 0.07, "linear",
                              warmup_start_ratio=0.2)  # airbench's: from 0.2 up to the peak, down to 0.07
    factors = []
    for _ in range(10):
        factors.append(triangle.get_last_lr()[0])
        triangle.optimizer.step()
        triangle.step()
    assert factors[0] == pytest.approx(0.2 + 0.8 / 5) and factors[3] == pytest.approx(0.2 + 0.8 * 4 / 5)
    assert factors[4] == pytest.approx(1.0) and factors[4:] == sorted(factors[4:], reverse=True)
    with pytest.raises(ValueError, match="warmup_start_ratio must be in"):
        resolve_settings(TrainSettings(warmup_start_ratio=1.5), "resnet18")
    with pytest.raises(ValueError, match="unknown schedule"):
        resolve_settings(TrainSettings(schedule="step"), "resnet18")


@pytest.mark.parametrize(("setting", "message"), [(dict(lr=-1.0), "lr must be 0 or more, got -1.0"),
                                                  (dict(lr=float("nan")), "lr must be 0 or more, got nan"),
                                                  (dict(weight_decay=-1e-4), "weight_decay must be 0 or more"),
                                                  (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0")])
def test_optimiser_settings_out_of_range_are_named(setting, message):
    with pytest.raises(ValueError, match=message):
        resolve_settings(TrainSettings(**setting), "resnet18")


def test_alternate_flip_needs_the_crop_preset(tmp_path, one_thread):
    with pytest.raises(ValueError, match="alternate_flip works with the crop augmentation"):
        visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "run", augment="light", alternate_flip=True, workers=0,
                        progress=False, plots=False, tensorboard=False)


def test_checkpoint_writer_keeps_the_submitted_moment_and_reports_failures(tmp_path):
    from visionzoo.training.checkpoint import CheckpointWriter

    writer = CheckpointWriter()
    weight, momentum = torch.zeros(3), torch.ones(2)
    writer.submit(tmp_path / "ckpt", 5, {"w": weight}, {"optimizer": {"state": {0: {"m": momentum}}}, "history": [1]})
    weight.add_(7.0)  # training goes on and updates tensors in place while the thread writes
    momentum.mul_(3.0)
    writer.flush()
    weights, state = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(weights["w"], torch.zeros(3)) and torch.equal(state["optimizer"]["state"][0]["m"], torch.ones(2))
    (tmp_path / "file").write_text("not a folder")
    writer.submit(tmp_path / "file", 6, {"w": weight}, {})
    with pytest.raises(RuntimeError, match="writing a checkpoint failed"):
        writer.flush()
    writer.flush()  # the error is reported once


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="unknown training setting"):
        visionzoo.train(TinyNet(), SHAPES, epochz=3)


def test_recipes_resolve_per_family():
    scratch = resolve_settings(TrainSettings(recipe="scratch", batch_size=128), "resnet18")
    assert scratch.optimizer == "sgd" and scratch.lr == pytest.approx(0.2 * 128 / 256)
    finetune_vit = resolve_settings(TrainSettings(recipe="finetune", epochs=20), "vit_base_patch16_224")
    assert finetune_vit.optimizer == "adamw" and finetune_vit.layer_decay == 0.65
    finetune_cnn = resolve_settings(TrainSettings(recipe="finetune"), "resnet50")
    assert finetune_cnn.head_lr_scale == 10.0 and finetune_cnn.layer_decay == 1.0
    probe = resolve_settings(TrainSettings(recipe="linear-probe", lr=0.3), "resnet50")
    assert probe.freeze_backbone and probe.lr == 0.3 and probe.weight_decay == 0.0
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_settings(TrainSettings(recipe="magic"), "resnet18")


def test_recipe_style_comes_from_the_model_card():
    from visionzoo.registry import get_card
    from visionzoo.training.settings import model_style

    assert {name: model_style(name) for name in visionzoo.list_models()} == {
        name: get_card(name).recipe_style for name in visionzoo.list_models()}
    assert model_style("efficientvit_m0") == "vit" and model_style("convnext_atto") == "convnext"
    assert resolve_settings(TrainSettings(recipe="finetune"), "efficientvit_b0").optimizer == "adamw"
    assert resolve_settings(TrainSettings(recipe="finetune"), "convnext_atto").layer_decay == 0.8


def test_layer_decay_orders_depth_and_head_gets_full_lr():
    with torch.device("meta"):
        model = visionzoo.create_model("vit_base_patch16_224", num_classes=5)
    heads = head_parameter_names(model, 5)
    assert heads == {"head.weight", "head.bias"}
    ids, depth = layer_ids(model, heads)
    assert ids["cls_token"] == 0 and ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.11.mlp.fc2.weight"] == 12
    assert ids["head.weight"] == depth - 1
    settings = resolve_settings(TrainSettings(recipe="finetune", lr=1e-3), "vit_base_patch16_224")
    optimizer = build_optimizer(model, settings, heads)
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * 0.65 ** (depth - 1))


def test_finetune_convnet_gives_backbone_a_lower_lr():
    model = visionzoo.create_model("resnet18", num_classes=3)
    heads = head_parameter_names(model, 3)
    assert heads == {"fc.weight", "fc.bias"}
    settings = resolve_settings(TrainSettings(recipe="finetune", lr=0.1), "resnet18")
    optimizer = build_optimizer(model, settings, heads)
    head_ids = {id(p) for n, p in model.named_parameters() if n in heads}
    for group in optimizer.param_groups:
        is_head = any(id(p) in head_ids for p in group["params"])
        assert group["lr"] == pytest.approx(0.1 if is_head else 0.01)


def test_early_stopping_with_mixup_and_class_weights(tmp_path, one_thread):
    # lr 0: validation never improves after the first epoch, so patience 1 stops after epoch 2.
    result = visionzoo.train(TinyNet(), SHAPES, out=tmp_path / "run", epochs=5, batch_size=16, lr=0.0,
                             early_stopping=1, mixup=0.2, cutmix=1.0, class_balance="weights", workers=0,
                             progress=False, plots=False, tensorboard=False)
    assert [record["epoch"] for record in result.history] == [1, 2]
    assert result.best_epoch == 0
    assert (tmp_path / "run" / "last" / "model.safetensors").exists()


def test_device_resident_batches_train_exactly_like_the_data_loader(tmp_path, one_thread, monkeypatch):
    from visionzoo.data import loaders
    from visionzoo.data.datasets import ResidentBatches

    def run(out):
        torch.manual_seed(0)
        visionzoo.train(TinyNet(dropout=0.0), SHAPES, out=tmp_path / out, epochs=1, batch_size=16, lr=0.05,
                        workers=0, plots=False, tensorboard=False, progress=False, deterministic=True)
        return _weights(tmp_path / out)

    made = []
    monkeypatch.setattr(loaders, "ResidentBatches", lambda *args, **kwargs: made.append(1) or ResidentBatches(*args, **kwargs))
    resident = run("resident")
    assert len(made) == 2  # train and validation
    monkeypatch.setattr(loaders, "fits_on_device", lambda *args: False)
    loader = run("loader")
    assert len(made) == 2
    for key in resident:
        torch.testing.assert_close(resident[key], loader[key], rtol=0, atol=0, msg=key)


class _WritesMarker:
    """An object whose unpickling runs `open(marker, 'w')`: what a hostile run folder would hold."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_runs_code_from_a_run_folder(tmp_path, one_thread):
    """A colleague's run folder whose training state is a pickle that would create a marker file:
    `--resume` refuses it with one line naming the file, and the marker is never made. A state saved
    the current way holds JSON and safetensors only."""
    result = visionzoo.train(_InterruptAt(4), SHAPES, out=tmp_path / "run", epochs=1, batch_size=16, workers=0,
                             progress=False, plots=False, tensorboard=False)
    assert result.interrupted
    checkpoint = tmp_path / "run" / "checkpoint"
    step = json.loads((checkpoint / "latest.json").read_text())["step"]
    assert {path.name for path in checkpoint.iterdir()} == {
        "latest.json", f"model-{step}.safetensors", f"state-{step}.safetensors", f"state-{step}.json"}
    json.loads((checkpoint / f"state-{step}.json").read_text())  # plain JSON

    marker = tmp_path / "pwned"
    (checkpoint / f"state-{step}.json").unlink()
    torch.save({"epoch": 0, "payload": _WritesMarker(marker)}, checkpoint / f"state-{step}.pt")
    with pytest.raises(UsageError, match=rf"state-{step}\.pt .*could run code"):
        visionzoo.train(TinyNet(), None, resume=tmp_path / "run", progress=False)
    assert not marker.exists()

    cli = subprocess.run([sys.executable, "-m", "visionzoo.cli", "train", "--resume", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode != 0 and not marker.exists()
    assert f"state-{step}.pt" in cli.stderr and "Traceback" not in cli.stderr and "bug in visionzoo" not in cli.stderr


def test_checkpoint_state_round_trips_every_value_kind(tmp_path):
    """Ints as dict keys (an optimizer's state), tuples (Python's RNG state), NumPy arrays (NumPy's),
    non-finite floats and nested tensors come back equal and of the same types."""
    import random

    import numpy as np

    from visionzoo.training.checkpoint import save_checkpoint

    state = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 2)}},
                           "param_groups": [{"lr": 0.1, "params": [0]}]},
             "rng": {"python": random.getstate(), "numpy": np.random.get_state()},
             "best_metric": float("nan"), "low": float("-inf"), "none": None, "flag": True, "history": [{"a": 1.5}]}
    save_checkpoint(tmp_path, 7, {"w": torch.ones(2)}, state)
    weights, loaded = load_checkpoint(tmp_path)
    assert torch.equal(weights["w"], torch.ones(2))
    assert loaded["rng"]["python"] == state["rng"]["python"]
    assert isinstance(loaded["rng"]["numpy"], tuple) and np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert loaded["rng"]["numpy"][1].dtype == np.uint32
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert np.isnan(loaded["best_metric"]) and loaded["low"] == float("-inf") and loaded["flag"] is True
    assert loaded["history"] == [{"a": 1.5}]
    np.random.set_state(loaded["rng"]["numpy"])
    random.setstate(loaded["rng"]["python"])
