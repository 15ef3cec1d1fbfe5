"""--adapt: LoRA targets per family, the adapter-only save round trip, the merged export, frozen
stages, lp-ft's phases; and distillation (losses, the teacher cache, kill -9 and resume)."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import visionzoo
from visionzoo.errors import SettingError
from visionzoo.factory import ModelSpec, with_spec
from visionzoo.registry import family_facts, get_card, list_families, list_models
from visionzoo.training.adapt import Adaptation, lora_targets, parameter_counts
from visionzoo.training.distill import DistillTargets, Teacher, distillation_loss
from visionzoo.training.settings import TrainSettings
from visionzoo.weights.lora import ADAPTER_FILE, BASE_FILE, adapter_state_dict, add_lora

SHAPES = "builtin:shapes?size=16&train=48&val=16"
QUIET = dict(workers=0, plots=False, tensorboard=False, progress=False)


@pytest.mark.parametrize("family", [f for f in list_families() if family_facts(f).lora_targets])
def test_lora_targets_exist_in_every_family_that_declares_them(family):
    names = [n for n in list_models() if get_card(n).family == family]
    assert names, f"no registered model of the family '{family}'"
    for name in names[:: max(1, len(names) // 3)]:  # about three variants per family, smallest to largest
        with torch.device("meta"):
            model = visionzoo.create_model(name)
        for mlp in (False, True):
            pattern = re.compile(lora_targets(family, mlp))
            matched = {n: m for n, m in model.named_modules() if pattern.fullmatch(n)}
            assert matched, f"{name}: no module matches {pattern.pattern}"
            assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in matched.values()), name
        blocks = {n.rsplit(".", 2)[0] for n in matched}
        assert len(blocks) > 1, f"{name}: LoRA targets only {blocks}"


def test_lora_refuses_a_family_without_targets():
    with pytest.raises(ValueError, match="no target modules declared for the family 'resnet'"):
        lora_targets("resnet")


def _tiny_vit(num_classes=4):
    return visionzoo.create_model("vit_tiny_patch16_224", img_size=32, num_classes=num_classes)


def _lora_facts(**extra):
    return {"method": "lora", "rank": 4, "alpha": 8, "targets": lora_targets("vit"), "head": ["head"],
            "base": "vit_tiny_patch16_224", **extra}


def test_saved_adapter_round_trips_and_the_merged_export_verifies(tmp_path, one_thread, monkeypatch):
    torch.manual_seed(0)
    base_dir = visionzoo.save_model(_tiny_vit(), tmp_path / "base")
    model = visionzoo.load_model(base_dir)
    add_lora(model, _lora_facts(base_weights=str(base_dir)))
    with_spec(model, adapter=_lora_facts(base_weights=str(base_dir)))
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.normal_(0, 0.05)
    saved = visionzoo.save_model(model, tmp_path / "adapted")
    files = sorted(p.name for p in saved.iterdir())
    assert files == ["adapter.safetensors", "config.json"], files  # the base is named, not copied
    adapter = load_file(saved / ADAPTER_FILE)
    assert set(adapter) == set(adapter_state_dict(model)) and all("lora_" in k or "modules_to_save" in k for k in adapter)
    config = json.loads((saved / "config.json").read_text())
    assert config["adapter"]["base_weights"] == str(base_dir) and config["adapter"]["adapter_bytes"] > 0

    loaded = visionzoo.load_model(saved)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)

    from visionzoo.deploy.export import export_model

    report = export_model(loaded, tmp_path / "merged.onnx", img_size=32, exporter="torchscript")
    assert report.verified and report.merged_adapter and report.max_relative_difference < 1e-4

    # the check can fail: unloading without merging loses the adapter, and the export is refused
    import visionzoo.deploy.export as export_package

    def unload_only(module):
        from visionzoo.weights.lora import merge_lora

        for _, layer in module.named_modules():
            if hasattr(layer, "lora_B"):
                for b in layer.lora_B.values():
                    b.weight.data.zero_()
        return merge_lora(module)

    monkeypatch.setattr(export_package, "merge_lora", unload_only)
    with pytest.raises(RuntimeError, match="does not match PyTorch"):
        export_model(loaded, tmp_path / "broken.pt", img_size=32, format="torchscript")


def test_random_base_is_saved_with_the_adapter(tmp_path, one_thread):
    torch.manual_seed(1)
    model = _tiny_vit()
    add_lora(model, _lora_facts(base_weights=None))
    with_spec(model, adapter=_lora_facts(base_weights=None))
    saved = visionzoo.save_model(model, tmp_path / "adapted")
    assert (saved / BASE_FILE).exists()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(visionzoo.load_model(saved)(x), model.eval()(x), rtol=0, atol=0)


def test_lora_run_trains_only_the_adapter_and_head(tmp_path, one_thread):
    base_dir = visionzoo.save_model(_tiny_vit(10), tmp_path / "base")
    result = visionzoo.train(visionzoo.load_model(base_dir), SHAPES, pretrained=str(base_dir), out=tmp_path / "run",
                             epochs=1, batch_size=8, image_size=32, adapt="lora", lora_rank=2, lr=1e-2, **QUIET)
    best = result.run_dir / "best"
    assert not (best / "model.safetensors").exists() and (best / ADAPTER_FILE).exists()
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["adapt"] == "lora" and 0 < summary["trainable_params"] < summary["total_params"] / 20
    assert summary["peak_memory_mb"] > 0 and summary["step_time_s"] > 0
    assert summary["adapter_bytes"] == (best / ADAPTER_FILE).stat().st_size
    assert summary["grad_checkpointing"] is True  # LoRA's default: activations are what LoRA does not save
    loaded, base = visionzoo.load_model(best), load_file(base_dir / "model.safetensors")
    state = loaded.state_dict()
    compared = 0
    for key, value in state.items():  # the frozen base is the base it started from
        if "lora_" in key or "modules_to_save" in key or key.startswith("head."):
            continue
        torch.testing.assert_close(value, base[key.replace(".base_layer.", ".")], rtol=0, atol=0, msg=key)
        compared += 1
    assert compared > 100
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k), "the adapter did not train"


def test_lora_checkpoints_activations_with_the_same_gradients(one_thread):
    """LoRA turns gradient checkpointing on by default; the gradients are those of the plain backward."""
    from visionzoo.training.adapt import apply_adaptation
    from visionzoo.training.optim import head_parameter_names

    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    grads = {}
    for checkpointing in (None, False):
        torch.manual_seed(0)
        model = _tiny_vit()
        adaptation = apply_adaptation(model, TrainSettings(adapt="lora", lora_rank=2, grad_checkpointing=checkpointing),
                                      head_parameter_names(model, 4))
        assert adaptation.grad_checkpointing is (checkpointing is None) and model.grad_checkpointing is (checkpointing is None)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(parameter, std=0.1)  # B starts at zero: give A a gradient too
        nn.functional.cross_entropy(model(x), y).backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert "gradient checkpointing" in adaptation.describe(model) or checkpointing is False
    assert grads[None].keys() == grads[False].keys() and any("lora_A" in n for n in grads[None])
    for name, grad in grads[None].items():
        torch.testing.assert_close(grad, grads[False][name], rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(SettingError, match="set_grad_checkpointing"):
        apply_adaptation(visionzoo.create_model("resnet18", num_classes=4), TrainSettings(grad_checkpointing=True),
                         {"fc.weight", "fc.bias"})


def test_frozen_stages_keep_their_weights(tmp_path, one_thread):
    model = visionzoo.create_model("resnet18", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = visionzoo.train(model, SHAPES, out=tmp_path / "run", epochs=1, batch_size=8, adapt="freeze",
                             freeze_stages=2, lr=0.1, **QUIET)
    after = load_file(result.run_dir / "last" / "model.safetensors")
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for key, value in before.items():
        if key.startswith(frozen):  # weights and BatchNorm statistics
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])


def test_lp_ft_probes_the_head_first_then_trains_everything():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    adaptation = Adaptation("lp-ft", {"3.weight", "3.bias"}, lp_epochs=2)
    for epoch, probing in ((0, True), (1, True), (2, False)):
        model.train()
        adaptation.start_epoch(model, epoch)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == ({"3.weight", "3.bias"} if probing else {n for n, _ in model.named_parameters()})
        assert model[1].training is not probing and model[3].training


def test_distillation_losses():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    ce = lambda logits, y: nn.functional.cross_entropy(logits.float(), y)  # noqa: E731
    soft = distillation_loss(ce, TrainSettings(distill="soft", distill_alpha=0.3, distill_temperature=2.0))
    t = 2.0
    kl = (teacher / t).softmax(1) * ((teacher / t).log_softmax(1) - (student / t).log_softmax(1))
    expected = 0.7 * ce(student, labels) + 0.3 * t * t * kl.sum(1).mean()
    torch.testing.assert_close(soft(student, DistillTargets(labels, teacher)), expected)
    hard = distillation_loss(ce, TrainSettings(distill="hard", distill_alpha=0.5))
    torch.testing.assert_close(hard(student, DistillTargets(labels, teacher)),
                               0.5 * ce(student, labels) + 0.5 * ce(student, teacher.argmax(1)))
    # DeiT's distilled student: the class token takes the labels, the distillation token the teacher
    distilled = torch.randn(6, 5)
    torch.testing.assert_close(hard((student, distilled), DistillTargets(labels, teacher)),
                               0.5 * ce(student, labels) + 0.5 * ce(distilled, teacher.argmax(1)))


def test_teacher_cache_serves_views_seen_before():
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 8, 8)}
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with_spec(net, ModelSpec("net", {}, config, None, None))
    teacher = Teacher(net, "net", device=torch.device("cpu"), student_config=config, cache=True)
    raw = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    images = (raw.float() / 255 - 0.5) / 0.25
    first = teacher.logits(images, Teacher.keys(raw))
    again = teacher.logits(images[[2, 0]], Teacher.keys(raw[[2, 0]]))
    assert (teacher.hits, teacher.misses) == (2, 4)
    torch.testing.assert_close(again, first[[2, 0]], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(first, net(images))


def test_distillation_with_a_random_teacher_resumes_exactly_after_sigkill(tmp_path):
    from test_train import COMMON, _kill_mid_epoch, _run, _script, _weights

    teacher = visionzoo.save_model(visionzoo.create_model("mobilenetv3_small_050", num_classes=10),
                                   tmp_path / "teacher")
    script = _script(tmp_path)
    settings = {**COMMON, "teacher": str(teacher), "distill_alpha": 0.7, "distill_temperature": 3.0}
    _run(script, {**settings, "out": str(tmp_path / "whole")})
    killed = _kill_mid_epoch(script, settings, tmp_path / "killed", steps_per_epoch=12)
    _run(script, {"resume": str(killed)})
    whole, resumed = _weights(tmp_path / "whole"), _weights(killed)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["distill"]["method"] == "soft"


def test_parameter_counts():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    assert parameter_counts(model) == (6, 8)


def test_cli_parses_adapt_and_distillation_settings():
    from visionzoo.cli import build_parser
    from visionzoo.training.command import _settings_from_args

    args = build_parser().parse_args(["train", "--model", "vit_small_patch16_224", "--data", "d", "--adapt", "lora",
                                      "--lora-rank", "4", "--lora-alpha", "16", "--lora-mlp", "--teacher", "runs/t",
                                      "--distill", "hard", "--distill-alpha", "0.4", "--distill-temperature", "2",
                                      "--teacher-cache", "--freeze-stages", "1", "--lp-epochs", "2",
                                      "--no-grad-checkpointing"])
    settings = _settings_from_args(args)
    assert settings == {**settings, "adapt": "lora", "lora_rank": 4, "lora_alpha": 16.0, "lora_mlp": True,
                        "teacher": "runs/t", "distill": "hard", "distill_alpha": 0.4, "distill_temperature": 2.0,
                        "teacher_cache": True, "freeze_stages": 1, "lp_epochs": 2,
                        "grad_checkpointing": False}
    TrainSettings(**settings)  # every flag is a training setting
