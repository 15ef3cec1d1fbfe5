"""One tool, not sixteen (issue 30): the same flag for the same thing in every command, one
`--pretrained` rule, a grouped `train --help` that states each default, output that survives a
pipe, and the words of the training lines."""

from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys

import pytest

from visionzoo.cli import build_parser, main
from visionzoo.cli.common import PRETRAINED_RULE, settle_model_argument

MODEL_COMMANDS = {"predict", "export", "embed", "eval", "explain", "serve", "info", "train", "audit"}
LONG_COMMANDS = {"train", "eval", "embed", "audit", "advise", "benchmark", "export"}
IMAGE_SIZE_COMMANDS = {"export", "benchmark", "audit", "train", "eval", "advise"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def test_flags_that_mean_the_same_are_spelled_the_same():
    for name, parser in _commands().items():
        options = _options(parser)
        shown = {o for o, a in options.items() if a.help != argparse.SUPPRESS}
        assert "--img-size" not in shown, name  # the one spelling shown is --image-size
        if name in IMAGE_SIZE_COMMANDS:
            assert "--image-size" in shown, name
        if name in LONG_COMMANDS:
            assert "--no-progress" in shown and options["--no-progress"].dest == "progress", name
        if "--device" in options:
            device = options["--device"]
            assert device.metavar == "DEVICE" and "default" in device.help and device.choices is None, name
        if "--devices" in options:  # several processes, one per device: the bake-off only
            assert name == "advise"
        if name in MODEL_COMMANDS:
            positional = [a for a in parser._actions if not a.option_strings and a.dest == "model"]
            assert positional and options["--model"].dest == "model_option", name


@pytest.mark.parametrize("command,old,dest", [("export", "--img-size", "image_size"),
                                              ("benchmark", "--img-size", "img_size")])
def test_the_old_image_size_spelling_is_still_read(command, old, dest):
    args = build_parser().parse_args([command, "resnet18", old, "160"])
    assert getattr(args, dest) == 160
    assert getattr(build_parser().parse_args([command, "resnet18", "--image-size", "160"]), dest) == 160


@pytest.mark.parametrize("argv", [["info", "resnet50"], ["info", "--model", "resnet50"],
                                  ["eval", "resnet50", "--data", "d"], ["eval", "--model", "resnet50", "--data", "d"],
                                  ["train", "resnet50", "--data", "d"], ["train", "--model", "resnet50", "--data", "d"],
                                  ["audit", "resnet50", "--data", "d"], ["audit", "--model", "resnet50", "--data", "d"]])
def test_the_model_is_read_either_way(argv):
    args = build_parser().parse_args(argv)
    settle_model_argument(args)
    assert args.model == "resnet50"


def test_a_model_flag_before_images_leaves_every_image_an_image():
    args = build_parser().parse_args(["predict", "--model", "resnet18", "a.jpg", "b.jpg"])
    settle_model_argument(args)
    assert args.model == "resnet18" and args.images == ["a.jpg", "b.jpg"]
    args = build_parser().parse_args(["explain", "resnet18", "a.jpg"])
    settle_model_argument(args)
    assert args.model == "resnet18" and args.images == ["a.jpg"]
    args = build_parser().parse_args(["benchmark", "--model", "resnet18", "--model", "resnet50"])
    assert args.models + args.model_options == ["resnet18", "resnet50"]


def test_a_model_given_twice_or_not_at_all_is_one_line(capsys):
    assert main(["info", "resnet50", "--model", "resnet18"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["export"]) == 2
    err = capsys.readouterr().err
    assert "needs a model" in err and len(err.strip().splitlines()) == 1
    assert main(["predict", "resnet18"]) == 2
    assert "needs a model and at least one image" in capsys.readouterr().err


def test_info_takes_the_model_flag(capsys):
    assert main(["info", "--model", "resnet50", "--json"]) == 0
    assert '"name": "resnet50"' in capsys.readouterr().out


def test_pretrained_states_one_rule_in_every_help():
    commands = _commands()
    for name in ("predict", "export", "serve", "explain", "audit", "eval", "embed"):
        help_text = _options(commands[name])["--pretrained"].help
        assert PRETRAINED_RULE in help_text, name
    assert "saved model or run folder carries its own weights" in PRETRAINED_RULE
    assert "unless --pretrained none" in PRETRAINED_RULE
    # train states its own: from scratch unless weights are given
    assert "default: none" in _options(commands["train"])["--pretrained"].help


def test_embed_and_eval_give_a_registered_name_its_default_weights(monkeypatch):
    seen = {}

    def fake_build_backbone(spec, allow_random=False):
        seen["embed"] = spec["pretrained"]
        raise KeyboardInterrupt  # stop before any work

    def fake_evaluate(model, data, **kwargs):
        seen["eval"] = kwargs["pretrained"]
        raise KeyboardInterrupt

    import visionzoo.embed.embeddings as embeddings
    import visionzoo.evaluation as evaluation

    monkeypatch.setattr(embeddings, "build_backbone", fake_build_backbone)
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    assert main(["embed", "resnet18", "--data", "d", "--out", "o.safetensors"]) == 130
    assert main(["eval", "resnet18", "--data", "d"]) == 130
    assert seen == {"embed": True, "eval": "default"}


def test_train_help_is_grouped_and_every_flag_states_its_default():
    train = _commands()["train"]
    titles = {group.title for group in train._action_groups}
    assert {"data", "model", "recipe", "optimisation", "augmentation"} <= titles
    assert any(t.startswith("adaptation") for t in titles) and any(t.startswith("output") for t in titles)
    flags = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)
    missing = [a.option_strings[0] for a in train._actions
               if a.option_strings and a.help != argparse.SUPPRESS and not isinstance(a, flags)
               and "default" not in (a.help or "") and "required" not in (a.help or "")]
    assert not missing, f"train options whose help states no default: {missing}"
    assert len([a for a in train._actions if a.option_strings]) > 70


def _run(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)


def test_a_piped_table_keeps_long_names_whole():
    import visionzoo

    longest = max(visionzoo.list_models(), key=len)
    result = _run(f"{sys.executable} -m visionzoo.cli list '{longest}' | cat")
    assert result.returncode == 0, result.stderr
    assert longest in result.stdout and "…" not in result.stdout
    assert result.stdout.splitlines()[0].strip() == "1 model"  # the title counts in the singular


def test_json_into_head_prints_no_broken_pipe():
    # the weight catalog as JSON is far larger than a pipe's buffer: the writer meets a closed pipe
    result = _run(f"set -o pipefail; {sys.executable} -m visionzoo.cli list --pretrained --json | head -c 10")
    assert result.stdout == '[\n  {\n    '
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 0


def test_a_port_in_use_is_one_line_before_any_serving_line(capsys):
    pytest.importorskip("uvicorn")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "resnet18", "--pretrained", "none", "--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 2 and "serving" not in out
    assert f"cannot serve on 127.0.0.1:{port}" in err and "--port" in err and len(err.strip().splitlines()) == 1


def test_the_progress_bar_shows_the_running_loss_and_lr_from_the_first_step(tmp_path):
    import torch

    from visionzoo.training.hooks import RunLogger
    from visionzoo.training.settings import TrainSettings

    logger = RunLogger(tmp_path, True, TrainSettings(tensorboard=False, progress=True))
    try:
        logger.start_epoch(1, 3, total=20, done=0)
        fields = logger.progress.tasks[0].fields
        assert fields["stats"] == ""  # nothing known yet: no "nan", no lr 0
        # step 2 of an epoch: the trainer has not read the loss back (`loss` nan), its device sum is there
        logger.step({"step": 12, "loss": float("nan"), "lr": 0.05, "log": False,
                     "loss_sum": torch.tensor(9.0), "images": 4}, 1)
        assert logger.progress.tasks[0].fields["stats"] == "loss 2.2500  lr 5.00e-02"
        logger.step({"step": 13, "loss": float("nan"), "lr": 0.04, "log": True,
                     "loss_sum": torch.tensor(12.0), "images": 8}, 1)
        assert logger.progress.tasks[0].fields["stats"].endswith("lr 4.00e-02")  # the lr of this very step
    finally:
        logger.close()
    logged = (tmp_path / "metrics_steps.jsonl").read_text()
    assert "loss_sum" not in logged and '"lr": 0.04' in logged


def test_counts_are_singular_for_one():
    from visionzoo.measure import counted

    assert counted(1, "epoch") == "1 epoch" and counted(3, "epoch") == "3 epochs"
    assert counted(1, "class", "classes") == "1 class" and counted(2, "class", "classes") == "2 classes"
    assert counted(1, "process", "processes") == "1 process" and counted(4, "process", "processes") == "4 processes"
    assert counted(1200, "image") == "1,200 images"


def test_full_adaptation_says_what_the_recipe_froze():
    import torch.nn as nn

    from visionzoo.training.adapt import apply_adaptation
    from visionzoo.training.settings import TrainSettings

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))  # 112 + 8 + 10
    model[0].requires_grad_(False)  # as --freeze-stages does before adaptation
    line = apply_adaptation(model, TrainSettings(freeze_stages=0), set()).describe(model)
    assert "every parameter but the stem, frozen" in line and "18 of 130 parameters trainable" in line
    model[0].requires_grad_(True)
    line = apply_adaptation(model, TrainSettings(), set()).describe(model)
    assert line.startswith("adapt full (every parameter): 130 of 130")
    line = apply_adaptation(model, TrainSettings(adapt="lp-ft", lp_epochs=1, epochs=4), {"3.weight"}).describe(model)
    assert "linear probe for 1 epoch, then" in line


def test_a_dropped_classifier_is_not_said_to_start_at_random(caplog):
    import torch.nn as nn

    from visionzoo.weights.adapt import fit_state_dict

    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    source = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 5)).state_dict()
    with caplog.at_level(logging.WARNING):
        fit_state_dict(model, dict(source), source="test", classifier=("1",), name="tiny")
    assert "random initialisation" not in caplog.text and "starts it at zero" in caplog.text


def test_transforms_convert_to_an_image_once():
    import visionzoo

    for train in (False, True):
        pipeline = visionzoo.transforms("resnet18", train=train)
        assert sum(type(t).__name__ == "ToImage" for t in pipeline.transforms) == 1
        assert repr(pipeline).count("ToImage()") == 1


def test_training_output_into_a_file_has_no_stray_blank_line(tmp_path, capsys):
    from visionzoo.training.hooks import RunLogger
    from visionzoo.training.settings import TrainSettings

    logger = RunLogger(tmp_path, True, TrainSettings(tensorboard=False, progress=True))
    logger.start_epoch(0, 1, total=2, done=0)
    logger.step({"step": 1, "loss": 1.0, "lr": 0.1, "log": False}, 1)
    logger.print("epoch 1/1  train loss 1.0000")
    logger.close()
    assert capsys.readouterr().err == "epoch 1/1  train loss 1.0000\n"  # the bar's stop adds no empty line


def test_torch_cuda_home_warning_stays_out_of_command_output(capsys):
    assert main(["info", "resnet18", "--json"]) == 0
    assert logging.getLogger("torch.utils.cpp_extension").getEffectiveLevel() >= logging.ERROR
