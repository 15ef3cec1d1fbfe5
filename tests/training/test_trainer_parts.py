"""The trainer's parts alone, without a training run: `train_step` (gradient accumulation), `RunState`
(a checkpoint round trip resumes bit for bit), the hooks (early stopping, checkpoint timing,
metrics files), the loss and the loaders. One short run checks the after-training seam."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from visionzoo.data.loaders import build_loaders
from visionzoo.data.sources import resolve_data
from visionzoo.training.checkpoint import load_checkpoint
from visionzoo.training.hooks import BestModelTracker, CheckpointHook, RunLogger
from visionzoo.training.losses import build_loss
from visionzoo.training.settings import TrainSettings, resolve_settings
from visionzoo.training.state import ExponentialMovingAverage, new_run_state
from visionzoo.training.step import train_step

SHAPES = "builtin:shapes?size=16&train=24&val=8"


def _settings(**changes) -> TrainSettings:
    return resolve_settings(TrainSettings(lr=0.1, weight_decay=1e-3, warmup_epochs=0.5, epochs=2, **changes), None)


def _state(model: nn.Module, settings: TrainSettings, *, steps_per_epoch: int = 4, classes=("a", "b", "c")):
    ema = ExponentialMovingAverage(model, settings.ema_decay) if settings.ema else None
    return new_run_state(model, settings, classes=list(classes), head_names=set(), steps_per_epoch=steps_per_epoch,
                         device=torch.device("cpu"), ema=ema)


def _mlp(dtype=torch.float32, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3)).to(dtype)


def test_accumulated_micro_batches_step_like_one_big_batch(one_thread):
    """Four micro-batches of 2 with grad_accum 4 take the same step as one batch of 8, clipping
    (which must see the summed gradient, not each part's) and EMA included."""
    settings = _settings(grad_accum=4, clip_grad=0.05, ema=True, ema_decay=0.5, lookahead=2)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 8, 6, generator=generator, dtype=torch.float64)  # two steps of 8 images
    labels = torch.randint(0, 3, (2, 8), generator=generator)

    def loss_fn(logits, targets):  # float64 throughout, so the comparison can be tight
        return nn.functional.cross_entropy(logits, targets)

    whole, parts = _state(_mlp(torch.float64), settings), _state(_mlp(torch.float64), settings)
    for step in range(2):
        total_whole, total_parts = torch.zeros(()), torch.zeros(())
        seen_whole = train_step(whole, [(images[step], labels[step])], loss_fn, grad_accum=1,
                                clip_grad=settings.clip_grad, loss_sum=total_whole)
        micro = [(images[step, i:i + 2], labels[step, i:i + 2]) for i in range(0, 8, 2)]
        seen_parts = train_step(parts, iter(micro), loss_fn, grad_accum=4, clip_grad=settings.clip_grad,
                                loss_sum=total_parts)
        assert seen_whole == seen_parts == 8
        torch.testing.assert_close(total_parts, total_whole, rtol=1e-6, atol=0)  # summed in float32
    assert whole.global_step == parts.global_step == 2
    assert whole.scheduler.last_epoch == parts.scheduler.last_epoch == 2
    moved = False
    for (name, a), b in zip(whole.model.state_dict().items(), parts.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
        moved |= not torch.equal(a, _mlp(torch.float64).state_dict()[name])
    assert moved
    for a, b in zip(whole.ema.module.parameters(), parts.ema.module.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    # Without the division by grad_accum the parts would take a four times larger step: the test can fail.
    unscaled = _state(_mlp(torch.float64), settings)
    train_step(unscaled, micro, loss_fn, grad_accum=1, micro_steps=4)
    assert not torch.allclose(unscaled.model[0].weight, parts.model[0].weight)


def test_run_state_round_trip_resumes_bit_exactly(tmp_path, one_thread):
    """Three steps, a checkpoint through the background writer, two more steps; a fresh state restored
    from the checkpoint takes the same two steps to the same bits (dropout draws from the restored RNG;
    optimizer momentum, schedule, EMA and Lookahead's slow weights come back)."""
    settings = _settings(ema=True, ema_decay=0.9, lookahead=2, momentum=0.9)
    generator = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 6, generator=generator), torch.randint(0, 3, (4,), generator=generator)) for _ in range(5)]
    loss_fn = build_loss(settings, [0, 1, 2], 3, torch.device("cpu"))

    first = _state(_mlp(dropout=0.5), settings)
    for batch in data[:3]:
        train_step(first, [batch], loss_fn, grad_accum=1)
    first.epoch, first.batches_done, first.best_metric, first.best_epoch, first.stale_epochs = 0, 3, 0.25, 0, 1
    first.history.append({"epoch": 1, "train_loss": 1.5})
    first.bad_files["broken.jpg"] = "truncated"
    hook = CheckpointHook(tmp_path / "checkpoint", every=None)
    hook.save(first)
    hook.flush()
    for batch in data[3:]:
        train_step(first, [batch], loss_fn, grad_accum=1)

    torch.manual_seed(123)  # the restore must bring back the RNG of the checkpoint's moment
    model = _mlp(dropout=0.5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # different weights, overwritten by the restore
    resumed = _state(model, settings)
    resumed.restore(*load_checkpoint(tmp_path / "checkpoint"))
    assert (resumed.global_step, resumed.epoch, resumed.batches_done) == (3, 0, 3)
    assert (resumed.best_metric, resumed.best_epoch, resumed.stale_epochs) == (0.25, 0, 1)
    assert resumed.history == [{"epoch": 1, "train_loss": 1.5}] and resumed.bad_files == {"broken.jpg": "truncated"}
    for batch in data[3:]:
        train_step(resumed, [batch], loss_fn, grad_accum=1)
    assert resumed.global_step == first.global_step == 5
    for (name, a), b in zip(first.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(first.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(first.lookahead.state_dict(), resumed.lookahead.state_dict()):
        assert torch.equal(a, b)
    assert first.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()

    other = _state(_mlp(dropout=0.5), settings, classes=("a", "b", "x"))
    with pytest.raises(ValueError, match="differ from the checkpoint's"):
        other.restore(*load_checkpoint(tmp_path / "checkpoint"))


def test_checkpoint_keys_are_the_on_disk_format():
    weights, state = _state(_mlp(), _settings()).checkpoint()
    assert set(weights) == set(_mlp().state_dict())
    assert set(state) == {"optimizer", "scheduler", "scaler", "ema", "lookahead", "epoch", "batches_done",
                          "epoch_loss_sum", "epoch_images", "global_step", "rng", "best_metric", "best_epoch", "stale_epochs", "history", "classes",
                          "settings", "bad_files", "visionzoo_version"}


def test_early_stopping_after_patience_validations_without_improvement():
    state = _state(_mlp(), _settings())
    tracker = BestModelTracker(patience=2)
    seen = []
    for epoch, top1 in enumerate([0.5, 0.7, 0.7, None, 0.6]):  # None: an epoch left unvalidated
        metrics = None if top1 is None else {"top1": top1}
        seen.append((tracker.update(state, epoch, metrics), state.stale_epochs, tracker.should_stop(state)))
    assert seen == [(True, 0, False), (True, 0, False), (False, 1, False), (False, 1, False), (False, 2, True)]
    assert (state.best_metric, state.best_epoch) == (0.7, 1) and tracker.best_val == {"top1": 0.7}
    assert not BestModelTracker(patience=None).should_stop(state)  # no patience: never stops
    assert tracker.update(state, 5, {"top1": 0.71}) and not tracker.should_stop(state)  # improving resets it


def test_checkpoint_hook_times_mid_epoch_checkpoints_and_writes_on_rank_0_only(tmp_path):
    hook = CheckpointHook(tmp_path / "ckpt", every=3)
    assert [hook.due(step, step, 9) for step in range(1, 10)] == [False, False, True, False, False, True,
                                                                   False, False, False]  # step 9 ends the epoch
    assert not CheckpointHook(tmp_path, every=None).due(3, 3, 9)
    silent = CheckpointHook(tmp_path / "other_rank", every=1, enabled=False)
    silent.save(_state(_mlp(), _settings()))
    silent.flush()
    assert not (tmp_path / "other_rank").exists()


def test_run_logger_writes_one_csv_header_and_the_step_log(tmp_path):
    logger = RunLogger(tmp_path, True, TrainSettings(tensorboard=False, progress=False))
    columns = ["epoch", "step", "train_loss", "val_top1"]
    logger.step({"step": 1, "loss": 2.0, "lr": 0.1, "log": False}, 1)
    logger.step({"step": 2, "loss": 1.5, "lr": 0.1, "log": True}, 1)
    logger.epoch({"epoch": 1, "step": 2, "train_loss": 1.5}, "epoch 1", columns)
    logger.epoch({"epoch": 2, "step": 4, "train_loss": 1.2, "val_top1": 0.5}, "epoch 2", columns)
    logger.close()
    assert (tmp_path / "metrics_epochs.csv").read_text().splitlines() == [
        "epoch,step,train_loss,val_top1", "1,2,1.5,", "2,4,1.2,0.5"]
    assert [json.loads(line) for line in (tmp_path / "metrics_steps.jsonl").read_text().splitlines()] == [
        {"step": 2, "loss": 1.5, "lr": 0.1}]
    RunLogger(tmp_path / "rank1", False, TrainSettings()).epoch({"epoch": 1}, "", ["epoch"])  # other ranks: nothing
    assert not (tmp_path / "rank1").exists()


def test_class_weighted_loss_weighs_each_class_as_much_in_total():
    loss_fn = build_loss(_settings(class_balance="weights", label_smoothing=0.0), [0, 0, 0, 1], 2, torch.device("cpu"))
    logits, targets = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    per_image = nn.functional.cross_entropy(logits, targets, reduction="none")
    weights = torch.tensor([4 / (3 * 2), 4 / (1 * 2)])
    torch.testing.assert_close(loss_fn(logits, targets), (per_image * weights).sum() / weights.sum())


def test_build_loaders_picks_the_input_path(one_thread):
    splits = resolve_data(SHAPES)
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0, "interpolation": "bilinear"}
    common = dict(data_config=config, image_size=16, batch_size=8, val_batch_size=64, num_classes=len(splits.classes),
                  workers=0, device=torch.device("cpu"))
    resident = build_loaders(splits.train, splits.val, augment="crop", **common)
    assert resident.resident and resident.normalize is not None and resident.batches_per_epoch == 3
    images, labels, _, _ = next(iter(resident.train))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 16, 16) and len(labels) == 8
    transformed = build_loaders(splits.train, splits.val, augment="light", **common)
    assert not transformed.resident and transformed.normalize is None
    images, _, _, _ = next(iter(transformed.train))
    assert images.dtype == torch.float32
    balanced = build_loaders(splits.train, None, augment="crop", balanced=True, **common)
    assert balanced.val is None and balanced.sampler.weights is not None
    counts = np.bincount(splits.train.labels, minlength=len(splits.classes))
    torch.testing.assert_close(balanced.sampler.weights.numpy(), 1.0 / np.maximum(counts, 1)[splits.train.labels])
    with pytest.raises(ValueError, match="alternate_flip works with the crop augmentation"):
        build_loaders(splits.train, splits.val, augment="light", alternate_flip=True, **common)


def test_after_training_steps_get_the_best_model_and_its_validation(tmp_path, one_thread, monkeypatch):
    import visionzoo
    from visionzoo.training import after

    seen = []
    monkeypatch.setattr(after, "after_training_steps", lambda settings: [seen.append])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    result = visionzoo.train(model, SHAPES, out=tmp_path / "run", epochs=2, batch_size=8, workers=0,
                             progress=False, plots=False, tensorboard=False)
    (run,) = seen
    assert run.best_dir == result.run_dir / "best" and run.classes == resolve_data(SHAPES).classes
    from safetensors.torch import load_file

    saved = load_file(run.best_dir / "model.safetensors")
    assert all(torch.equal(run.model.state_dict()[key], saved[key]) for key in saved)
    assert run.validation["_logits"].shape == (8, 10) and run.validation["top1"] == result.best_metric
