"""The README as a newcomer walks it: every ```bash command, run offline and small, through the CLI.

Every command of README.md's bash blocks is in `WALK` (run, in README order) or in `SKIPPED` (with
the reason it cannot run here); `test_every_readme_command_is_walked_or_skipped` fails on a README
command that is in neither, so the README and the walk cannot drift apart.

What a walked command has rewritten, and only that (`rewrite`): `builtin:shapes` gets a small size
query; `--epochs` becomes 1 (and `train` gets `--epochs 1` where the README leaves it to the
recipe); weights from the Hub (`--pretrained default`, `ARCH.TAG`, `hf-hub:`, and a registered
name whose default weights would be downloaded) become a local file written with `torch.save` of
the registered model's state_dict; `[optional]` parts are included (`a|b`: the first); README
placeholders (`runs/.../best`) name the folders earlier commands of the walk wrote; a `Step` may
swap in a smaller model of the same family, a smaller image size or an `--out`, each saying why.
The files the README names (`photos/`, `cat.jpg`, `labels.csv`, ...) are made from generated
shapes in a temporary folder, the working directory of every command. A `Step` marked `slow`
(tens of CPU-seconds, and tested elsewhere) is reported as a skip with its reason, and walked
with `VISIONZOO_README_WALK=full`.

The walk is split into chains (`Step.chain`): the commands of a chain run in README order in their
own folder, because a later one reads what an earlier one wrote (`mine`: train, then eval and audit
its run); a command nothing depends on is a chain alone. Each chain is one test, so pytest-xdist
spreads the walk over its workers. The quick-start run, which three chains use, is trained once per
test run (`quickstart_run`: the first chain to need it trains it under a file lock; the others wait,
then hard-link its folder).

A newcomer's shell starts one Python process per command, and importing PyTorch costs seconds
each time on two cores; so the commands run in forked children of one process per pytest worker
that imported visionzoo once (`CommandRunner`): each child has its own folder, cache, exit code,
output and timeout, and runs `visionzoo.cli.main` as the `visionzoo` script does. `visionzoo --help`
runs the real console script, so the entry point is walked too.

Numbers two commands report about the same model and data must agree: train's best validation
top-1 and eval's top-1 of `best/` on the same data; predict's probability and explain's for the
same image (the `quickstart` chain). Each chain's test lists every problem it met; `logs/` in its
folder keeps each command's output and `logs/times.txt` what each cost.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
VISIONZOO_SCRIPT = Path(sys.executable).parent / "visionzoo"

SHAPES_QUERY = {"size": "32", "train": "200", "val": "100"}  # what every builtin:shapes gets
COMMAND_TIMEOUT_S = 300  # generous: two shared cores under load run ten times slower than idle
FAILURE_MARKS = ("Traceback (most recent call last)", "this is a bug in visionzoo")
WEIGHT_SUFFIXES = {".pth", ".pt", ".bin", ".safetensors"}


@dataclass(frozen=True)
class Step:
    """How the walk runs one README command (the defaults: as written, rewritten by `rewrite`)."""

    swap: dict[str, str] = field(default_factory=dict)  # text replaced before rewriting, for speed or data
    extra: tuple[str, ...] = ()  # arguments added, e.g. an --out a later placeholder names
    placeholders: dict[str, str] = field(default_factory=dict)  # README placeholder -> sandbox path or glob
    epochs: int = 1  # what --epochs becomes
    shapes: dict[str, str] = field(default_factory=dict)  # builtin:shapes options over SHAPES_QUERY
    why: str = ""  # why anything above is needed
    slow: str = ""  # why it is left out of the default walk (VISIONZOO_README_WALK=full runs it)
    chain: str = ""  # the commands of one chain run in order in one folder (a command's output is a later one's input)


SKIPPED: dict[str, str] = {
    "python3 -m venv .venv": "creates a virtual environment; the walk runs in one already",
    ".venv/bin/pip install -e .": "installs from the package index",
    ".venv/bin/pip install -e '.[dev]'": "installs from the package index",
    ".venv/bin/python -m pytest -q -n auto": "the test suite itself, this file included",
    "pip install -e '.[export]'": "installs from the package index",
    "pip install -e '.[openvino]'": "installs from the package index",
    "pip install -e '.[litert,executorch,coreml]'": "installs from the package index",
    "pip install -e '.[serve]'": "installs from the package index",
    "visionzoo push runs/quickstart --repo OWNER/shapes-resnet18 --export onnx": "uploads to the Hugging Face Hub",
    "visionzoo train resnet50 --data 's3://bucket/train-{000000..000099}.tar'":
        "reads shards from a bucket on the network (tests/data/test_shards.py reads brace patterns and file:// URLs)",
    "visionzoo train resnet50 --data hf://datasets/OWNER/NAME --image-column img --label-column fine_label":
        "downloads a dataset from the Hub (tests/data/test_hf_dataset.py names the columns of a local one)",
    "torchrun --nproc-per-node 4 -m visionzoo.cli train resnet50 --data shards/":
        "four processes: tests/training/test_streaming_ddp.py trains shards in two gloo processes",
    "torchrun --nproc-per-node 4 -m visionzoo.cli embed resnet50 --data shards/ --out emb/":
        "four processes: tests/embed/test_embed_shards.py embeds shards in two",
    "torchrun --nproc_per_node 4 -m visionzoo.cli train --model vit_base_patch16_224 --pretrained default "
    "--recipe finetune --data photos/ --batch-size 256":
        "four processes fine-tuning ViT-B: more than two shared cores hold in the walk's time",
    "visionzoo advise --data photos/ --target edge --latency-ms 20 --max-params 10 --commercial --candidates 8 "
    "--finetune-top 2 --budget-min 30 --out bakeoff/ --plot pareto.png [--json]":
        "chooses among the catalog's published weights, downloaded from the Hub; its offline variant is the "
        "README's next line (--weights NAME=FILE), which the full walk runs",
    "visionzoo advise --data photos/ --devices cuda:0,cuda:1 --target gpu": "needs two CUDA devices",
}

QUICKSTART_TRAIN = ".venv/bin/visionzoo train --model resnet18 --data builtin:shapes --epochs 10 --lr 0.2 --out runs/quickstart"
QUICKSTART_EVAL = "visionzoo eval runs/quickstart/best --data builtin:shapes --json"
EXPLAIN = "visionzoo explain runs/cifar/best cat.jpg dog.jpg --method gradcam"
SERVE = "visionzoo serve resnet50 --port 8000"
CURL = "curl -F file=@cat.jpg 'http://127.0.0.1:8000/v1/classify?topk=5'"
HELP = "visionzoo --help"
MULTILABEL = {"photos/": "multilabel-photos/"}
QUICKSTART_SHAPES = {"train": "600"}
QUICKSTART_WHY = ("at lr 0.2 a few steps leave a model that answers one class for every image; 30 steps give one "
                  "whose top-1 agreeing with eval's, on the same 100 validation images, means something")
SMALL = ("--image-size", "64")
SMALL_WHY = "a convolutional network computes the same function at 64 px as at 224, in a twelfth of the time"
MULTILABEL_WHY = "the multi-label section's photos/ holds labels.csv with rows such as 'img/001.jpg,cat|dog'"
# The quick-start run is trained once per session (`quickstart_run`) and copied into these chains' folders.
QUICKSTART, QUICKSTART_DEPLOY, QUICKSTART_SHARE = "quickstart", "quickstart-deploy", "quickstart-share"
ON_QUICKSTART = (QUICKSTART, QUICKSTART_DEPLOY, QUICKSTART_SHARE)

WALK: dict[str, Step] = {
    QUICKSTART_TRAIN: Step(epochs=3, shapes=QUICKSTART_SHAPES, why=QUICKSTART_WHY, chain=QUICKSTART),
    # Training on your images
    "visionzoo train --model convnext_tiny --pretrained default --recipe finetune --data photos/ --epochs 10":
        Step(extra=SMALL, why=SMALL_WHY),
    "visionzoo train --model convnext_tiny --pretrained convnext_tiny.pth --recipe finetune --data photos/ --epochs 10":
        Step(extra=SMALL, why=SMALL_WHY),
    "visionzoo train --model resnet50 --pretrained default --recipe linear-probe --data labels.csv":
        Step(extra=SMALL, why=SMALL_WHY),
    "visionzoo train --model resnet18 --data images.tar.gz --scan --cache": Step(chain="archive"),
    "visionzoo train --resume runs/resnet18-shapes-20260101-120000": Step(
        placeholders={"runs/resnet18-shapes-20260101-120000": "runs/resnet18-images-*"},
        why="the README's run folder stands for a resnet18 run; the archive's run is one", chain="archive"),
    "visionzoo train --model resnet18 --data photos/ --out runs/mine --overwrite": Step(chain="mine"),
    QUICKSTART_EVAL: Step(shapes=QUICKSTART_SHAPES, why=QUICKSTART_WHY, chain=QUICKSTART),
    "visionzoo train --model efficientnet_lite0 --pretrained efficientnet-lite0.pth --data photos/":
        Step(extra=SMALL, why=SMALL_WHY),
    # Adapting big backbones cheaply, and distilling into a small one
    "visionzoo train --model vit_base_patch16_224 --pretrained default --recipe finetune --data photos/ --adapt lora "
    "--lora-rank 8": Step(swap={"vit_base_patch16_224": "vit_tiny_patch16_224"}, extra=("--out", "runs/vit-lora"),
                          why="ViT-B's 86M parameters take minutes on two cores, ViT-Ti the same code seconds; "
                              "the export below names runs/vit-lora", chain="vit-lora"),
    "visionzoo train --model convnext_tiny --pretrained default --recipe finetune --data photos/ --adapt freeze "
    "--freeze-stages 2": Step(extra=SMALL, why=SMALL_WHY),
    "visionzoo train --model resnet50 --pretrained default --recipe finetune --data photos/ --adapt lp-ft":
        Step(extra=SMALL, why=SMALL_WHY, chain="teacher"),
    "visionzoo train --model mobilenetv3_small_100 --data photos/ --teacher runs/resnet50-photos-.../ --distill soft":
        Step(placeholders={"runs/resnet50-photos-.../": "runs/resnet50-photos-*"}, extra=SMALL, why=SMALL_WHY,
             chain="teacher"),
    "visionzoo export runs/vit-lora/best --out vit.onnx": Step(chain="vit-lora"),
    # Multi-label data, calibrated probabilities and "unknown"
    "visionzoo train --model resnet50 --pretrained default --recipe finetune --data photos/ --epochs 10": Step(
        swap=MULTILABEL, extra=("--out", "runs/multilabel", *SMALL),
        why=MULTILABEL_WHY + "; runs/.../best below is this run; " + SMALL_WHY, chain="multilabel"),
    "visionzoo train --model resnet18 --data builtin:shapes?task=multilabel --loss asl": Step(),
    "visionzoo eval runs/.../best --data photos/ --json": Step(
        swap=MULTILABEL, placeholders={"runs/.../best": "runs/multilabel/best"}, why=MULTILABEL_WHY,
        chain="multilabel"),
    "visionzoo predict runs/.../best photo.jpg --json": Step(placeholders={"runs/.../best": "runs/multilabel/best"},
                                                              chain="multilabel"),
    "visionzoo eval runs/.../best --data photos/ --ood not-my-classes/": Step(
        placeholders={"runs/.../best": "runs/mine/best"}, why="unknowns are scored for single-label models",
        chain="mine"),
    # Auditing data, explaining predictions
    "visionzoo audit --data photos/ --model resnet50 --out audit": Step(chain="audit"),
    "visionzoo audit --data labels.csv --model runs/cifar/best --out audit-csv --json": Step(
        placeholders={"runs/cifar/best": "runs/mine/best"}, why="a model trained on the photos", chain="mine"),
    "visionzoo train --model resnet50 --data photos/ --exclude audit/label_issues.csv": Step(chain="audit"),
    EXPLAIN: Step(placeholders={"runs/cifar/best": "runs/quickstart/best"}, why="a model trained on shapes",
                  chain=QUICKSTART),
    # Command line
    "visionzoo list": Step(),  # instant: the package ships every model's params and GMACs (factory/complexity.json)
    "visionzoo list 'resnet*' --json": Step(),
    "visionzoo list --family resnet": Step(),
    "visionzoo info resnet50": Step(),
    "visionzoo list 'convnext*' --pretrained": Step(),
    "visionzoo predict resnet50 cat.jpg photos/ --topk 5 [--pretrained resnet50.tv_in1k] [--json]": Step(),
    "visionzoo predict resnet50 cat.jpg --pretrained resnet50.pth": Step(),
    "visionzoo embed vit_base_patch14_dinov2 --pretrained default --data photos/ --out photos.safetensors": Step(
        swap={"vit_base_patch14_dinov2": "vit_small_patch14_dinov2"},
        why="DINOv2 ViT-B embeds at 518 px, minutes on two cores; ViT-S is the same code", chain="embed"),
    "visionzoo probe --features photos.safetensors --method linear --save-model probe/": Step(chain="embed"),
    "visionzoo zero-shot cat.jpg --labels \"cat,dog,car\" --pretrained W": Step(
        swap={"--pretrained W": "--pretrained none"},
        why="W stands for CLIP weights (600 MB for ViT-B-32); 'none' runs the same path with random weights",
        slow="building CLIP ViT-B-32 (150M parameters) costs 15 CPU-seconds (tests/models/test_clip.py covers it)"),
    HELP: Step(),
    # Choosing an architecture
    "visionzoo advise --data photos/ --weights efficientnet_lite0=lite0.pth --weights resnet18=my-ckpt.pth": Step(
        extra=("--finetune-epochs", "1", *SMALL),
        why="the bake-off fine-tunes with the transfer recipe, at least 100 steps per candidate; one epoch is what "
            "--epochs 1 is to train; " + SMALL_WHY,
        slow="latency, probes and two fine-tunes: about 40 CPU-seconds (tests/choose/test_bakeoff.py covers it)"),
    "visionzoo benchmark resnet50 convnext_tiny --batch-sizes 1,8,64 [--vs-timm] [--train] [--json|--csv FILE]": Step(
        swap={"1,8,64": "1", "[--train] ": ""},
        why="batch 64 at 224 px takes seconds a step on two cores, and --train's measurement 50 CPU-seconds more "
            "(tests/choose covers it)",
        slow="four models measured after warm-ups: about 15 CPU-seconds (tests/choose/test_choose.py covers it)"),
    "visionzoo advise --target edge --latency-ms 20 --images-per-class 50 --plot advice.png": Step(
        slow="measures the latency of every candidate here: about 36 CPU-seconds (tests/choose/test_choose.py)"),
    "visionzoo advise --target gpu --min-top1 85 --no-measure --json": Step(),
    "visionzoo evolution --plot evolution.png": Step(),
    # Deploying
    "visionzoo export resnet50 --format onnx --out resnet50.onnx": Step(chain="onnx"),
    "visionzoo export resnet50 --pretrained resnet50.pth --out resnet50.onnx": Step(),
    "visionzoo export runs/quickstart/best --fold-bn --int8 --calib photos/train --eval-data photos/val": Step(
        chain=QUICKSTART_DEPLOY),
    "visionzoo export convnext_tiny --format torchscript": Step(),
    "visionzoo predict resnet50.onnx cat.jpg --topk 5 --json": Step(chain="onnx"),
    "visionzoo export resnet50 --format openvino --out resnet50.xml": Step(),
    "visionzoo export resnet50 --format openvino --int8 --calib photos/train": Step(),
    "visionzoo export runs/quickstart/best --engine auto --calib photos/train --eval-data photos/val": Step(
        chain=QUICKSTART_DEPLOY),
    "visionzoo benchmark resnet50 --engine all": Step(
        slow="torch.compile and six more engines of ResNet-50 at 224 px: minutes on two cores "
             "(tests/deploy/test_engines.py checks each engine)"),
    # Phones: each export is tens of CPU-seconds; tests/deploy/test_litert.py, test_executorch.py and
    # test_coreml.py export, run and verify each format on a small model
    "visionzoo export efficientnet_lite0 --format litert --int8 --calib photos/train --verify photos/val": Step(
        slow="LiteRT conversion and int8 calibration of Lite0 (tests/deploy/test_litert.py)", chain="litert"),
    "visionzoo export efficientnet_lite0 --format executorch --int8 --calib photos/train --verify photos/val": Step(
        slow="two XNNPACK lowerings of Lite0 (tests/deploy/test_executorch.py)"),
    "visionzoo export efficientnet_lite0 --format coreml --int8": Step(
        slow="two Core ML conversions of Lite0 (tests/deploy/test_coreml.py)"),
    "visionzoo predict efficientnet_lite0.tflite cat.jpg --topk 5": Step(
        slow="needs the LiteRT export above (tests/deploy/test_litert.py predicts without PyTorch)", chain="litert"),
    "visionzoo benchmark efficientnet_lite0 --engine litert-fp32,litert-int8,executorch-int8,onnxruntime-int8": Step(
        slow="four exports of Lite0 and their timing (tests/deploy/test_litert.py, test_executorch.py)"),
    # Sets larger than a folder
    "visionzoo data pack photos/ --out shards/ --shard-size 1GB": Step(chain="shards"),
    "visionzoo train resnet50 --data shards/": Step(extra=SMALL, why=SMALL_WHY, chain="shards"),
    "visionzoo train resnet50 --data my_dataset/": Step(
        swap={"my_dataset/": "hf-photos/"}, extra=SMALL,
        why="my_dataset/ stands for a Hugging Face dataset saved with save_to_disk; the walk saves the photos as "
            "one; " + SMALL_WHY),
    # Sharing and comparing runs
    "visionzoo push runs/quickstart --repo OWNER/shapes-resnet18 --to-folder shapes-card": Step(chain=QUICKSTART_SHARE),
    "visionzoo predict hf-hub:OWNER/shapes-resnet18 cat.jpg": Step(
        swap={"hf-hub:OWNER/shapes-resnet18": "shapes-card"}, why="the pushed folder is what the Hub serves",
        chain=QUICKSTART_SHARE),
    "visionzoo train --model resnet18 --data photos/ --track mlflow": Step(),
    "visionzoo runs runs/ --sort top1 --plot top1 --against time": Step(chain="teacher"),  # two runs to compare
    # Serving: the server runs in the background while the README's curl line asks it
    SERVE: Step(chain="serve"),
    CURL: Step(chain="serve"),
}


# ---------------------------------------------------------------------------------------------
# Reading the README


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of README.md's ```bash blocks, in order: comments dropped, continuation lines
    joined, and `a && b` chains split into their commands."""
    text = README.read_text() if text is None else text
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = _without_comment(line).strip()
            if line:
                commands.extend(" ".join(part.split()) for part in line.split(" && "))
    return commands


def _without_comment(line: str) -> str:
    """The line up to a shell comment: a `#` at its start or after a space, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def test_readme_commands_are_read_as_a_shell_would():
    text = "```bash\na --x 1 \\\n    --y 2   # note\n# a comment\nb && c 'q#r'\n```\n```python\nd\n```\n"
    assert readme_commands(text) == ["a --x 1 --y 2", "b", "c 'q#r'"]


def test_every_readme_command_is_walked_or_skipped():
    commands = readme_commands()
    unaccounted = [c for c in commands if c not in WALK and c not in SKIPPED]
    assert not unaccounted, f"README commands neither walked nor in SKIPPED with a reason: {unaccounted}"
    stale = sorted((set(WALK) | set(SKIPPED)) - set(commands))
    assert not stale, f"the walk names commands the README no longer has: {stale}"
    assert not set(WALK) & set(SKIPPED)
    assert all(reason.strip() for reason in SKIPPED.values())
    for command, step in WALK.items():
        assert not (step.swap or step.extra or step.shapes or step.epochs != 1) or step.why, f"{command!r} changes more than the rules without a why"


# ---------------------------------------------------------------------------------------------
# Rewriting a README command into a small offline one

# Commands whose registered-name model argument means that name's default (Hub) weights.
DEFAULT_WEIGHTS_COMMANDS = {"predict", "export", "serve", "explain", "audit"}


def rewrite(command: str, step: Step, sandbox: Path, weights_for) -> list[str]:
    """The argv (after `visionzoo`) that runs README `command` small, offline, in `sandbox`."""
    for old, new in {**step.swap, **step.placeholders}.items():
        if old in step.placeholders:
            new = _one_match(sandbox, new)
        command = command.replace(old, new)
    command = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split("|")[0], command)  # [--a|--b X] -> --a
    argv = shlex.split(command)
    assert Path(argv[0]).name == "visionzoo", command
    argv = argv[1:] + list(step.extra)
    out: list[str] = []
    for i, token in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if token.startswith("builtin:shapes"):
            token = _small_shapes(token, step.shapes)
        elif previous == "--epochs":
            token = str(step.epochs)
        elif previous == "--pretrained" and _is_download(token):
            token = str(weights_for(_model_of(argv)))
        out.append(token)
    subcommand = out[0] if out else ""
    if subcommand == "train" and "--epochs" not in out and "--resume" not in out:
        out += ["--epochs", "1"]
    if (subcommand in DEFAULT_WEIGHTS_COMMANDS and "--pretrained" not in out
            and (model := _model_of(out)) in _registered()):
        out += ["--pretrained", str(weights_for(model))]
    return out


def _one_match(sandbox: Path, pattern: str) -> str:
    if "*" not in pattern:
        return pattern
    matches = sorted(sandbox.glob(pattern))
    assert len(matches) == 1, f"placeholder {pattern!r} matches {matches} in the walk's folder"
    return str(matches[0].relative_to(sandbox)) + ("/" if pattern.endswith("/") else "")


def _small_shapes(token: str, overrides: dict[str, str]) -> str:
    name, _, query = token.partition("?")
    options = {**SHAPES_QUERY, **overrides, **dict(part.split("=", 1) for part in query.split("&") if part)}
    return name + "?" + "&".join(f"{k}={v}" for k, v in options.items())


def _is_download(value: str) -> bool:
    """`default`, `hf-hub:...` or a catalog tag `arch.tag`: weights that come from the Hub."""
    if value in ("default",) or value.startswith("hf-hub:"):
        return True
    return "." in value and "/" not in value and Path(value).suffix not in WEIGHT_SUFFIXES


def _model_of(argv: list[str]) -> str:
    if "--model" in argv:
        return argv[argv.index("--model") + 1]
    return argv[1] if len(argv) > 1 else ""


def _registered() -> set[str]:
    import visionzoo

    return set(visionzoo.list_models())


def test_rewrite_changes_only_what_must_change(tmp_path):
    def weights(model):
        return tmp_path / f"{model}.pth"

    (tmp_path / "runs" / "resnet18-images-1").mkdir(parents=True)
    assert rewrite(QUICKSTART_TRAIN, WALK[QUICKSTART_TRAIN], tmp_path, weights) == [
        "train", "--model", "resnet18", "--data", "builtin:shapes?size=32&train=600&val=100", "--epochs", "3",
        "--lr", "0.2", "--out", "runs/quickstart"]
    assert rewrite("visionzoo predict resnet50 cat.jpg [--pretrained resnet50.tv_in1k] [--json|--csv F]", Step(),
                   tmp_path, weights) == ["predict", "resnet50", "cat.jpg", "--pretrained", str(weights("resnet50")),
                                          "--json"]
    assert rewrite("visionzoo export resnet50 --out r.onnx", Step(), tmp_path, weights)[-2:] == [
        "--pretrained", str(weights("resnet50"))]
    assert rewrite("visionzoo train --resume runs/x", Step(placeholders={"runs/x": "runs/resnet18-images-*"}),
                   tmp_path, weights) == ["train", "--resume", "runs/resnet18-images-1"]
    assert rewrite("visionzoo train --model r --data builtin:shapes?task=multilabel --pretrained w.pth", Step(),
                   tmp_path, weights)[4:] == ["builtin:shapes?size=32&train=200&val=100&task=multilabel",
                                              "--pretrained", "w.pth", "--epochs", "1"]


# ---------------------------------------------------------------------------------------------
# The files the README names


def make_sandbox(root: Path) -> None:
    """photos/ (train/ and val/ of two classes), labels.csv, images.tar.gz, cat.jpg, dog.jpg, photo.jpg,
    not-my-classes/, multilabel-photos/ (labels.csv with 'a|b' rows) and hf-photos/ (photos/ as a Hugging Face
    dataset), all generated shapes."""
    from PIL import Image

    from visionzoo.data.shapes import SHAPE_CLASSES, make_shape_sets, make_shapes

    samples = make_shapes(60, size=48, seed=7)
    images = [Image.fromarray(samples.images[i]) for i in range(len(samples.labels))]
    labels = [SHAPE_CLASSES[int(label)] for label in samples.labels]
    kept = [i for i, label in enumerate(labels) if label in ("circle", "square")]  # 12 images of the two classes
    rows = []
    for n, i in enumerate(kept):
        split = "val" if n % 4 == 3 else "train"
        path = root / "photos" / split / labels[i] / f"{n:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        images[i].save(path, quality=95)
        rows.append(f"photos/{split}/{labels[i]}/{n:03d}.jpg,{labels[i]}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with tarfile.open(root / "images.tar.gz", "w:gz") as archive:
        archive.add(root / "photos", arcname="images")
    images[kept[0]].save(root / "cat.jpg")
    images[kept[1]].save(root / "dog.jpg")
    images[kept[2]].save(root / "photo.jpg")
    unknown = root / "not-my-classes"
    unknown.mkdir()
    for n, i in enumerate(i for i, label in enumerate(labels) if label in ("star", "arrow")):
        images[i].save(unknown / f"{n:03d}.jpg")
    sets = make_shape_sets(24, size=48, seed=11)
    folder = root / "multilabel-photos" / "img"
    folder.mkdir(parents=True)
    lines = []
    for n in range(len(sets.labels)):
        Image.fromarray(sets.images[n]).save(folder / f"{n:03d}.jpg")
        names = [SHAPE_CLASSES[k] for k in range(len(SHAPE_CLASSES)) if sets.labels[n][k]]
        lines.append(f"img/{n:03d}.jpg,{'|'.join(names)}")
    (root / "multilabel-photos" / "labels.csv").write_text("path,labels\n" + "\n".join(lines) + "\n")
    _save_hf_photos(root, images, labels, kept)


def _save_hf_photos(root: Path, images: list, labels: list[str], kept: list[int]) -> None:
    """hf-photos/: photos/' images as a Hugging Face dataset saved with save_to_disk (train and validation)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["circle", "square"])})
    split = {"train": [i for n, i in enumerate(kept) if n % 4 != 3], "validation": [i for n, i in enumerate(kept) if n % 4 == 3]}
    datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {"image": [images[i] for i in chosen], "label": [labels[i] for i in chosen]}, features=features)
        for name, chosen in split.items()}).save_to_disk(str(root / "hf-photos"))


class LocalWeights:
    """A registered model's state_dict saved with torch.save, standing in for its Hub weights."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def __call__(self, model: str) -> Path:
        path = self.root / f"{model}.pth"
        if not path.exists():
            import torch

            import visionzoo

            torch.manual_seed(0)
            torch.save(visionzoo.create_model(model).state_dict(), path)
        return path


# Running commands: forked children of one process per pytest worker that imported visionzoo once

_RUNNER_SOURCE = r"""
import json, os, signal, sys, time
import torch, visionzoo, visionzoo.cli, visionzoo.training.command  # imported once, before any fork
from visionzoo.cli import main
for line in sys.stdin:
    job = json.loads(line)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os.chdir(job["cwd"])
        os.environ["VISIONZOO_CACHE"] = job["cache"]
        with open(job["log"], "wb") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        code = 1
        try:
            sys.argv = ["visionzoo", *job["argv"]]
            code = main(job["argv"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code or 0)
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - started > job["timeout"]:
            os.killpg(pid, signal.SIGKILL)
            done, status, usage = os.wait4(pid, 0)
            timed_out = True
            break
        time.sleep(0.02)
    code = -9 if timed_out else os.waitstatus_to_exitcode(status)
    print(json.dumps({"rc": code, "timed_out": timed_out, "seconds": time.monotonic() - started,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime}), flush=True)
"""


@dataclass
class Result:
    argv: list[str]
    rc: int
    output: str
    seconds: float
    timed_out: bool
    cpu_seconds: float = 0.0  # the command's own CPU time: what the walk costs, whatever the load


class CommandRunner:
    """Runs commands in any folder, each in a forked child (its own cache: `sandbox/cache`)."""

    def __init__(self, home: Path):
        self.process = subprocess.Popen([sys.executable, "-c", _RUNNER_SOURCE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=_environment(home))

    def run(self, argv: list[str], sandbox: Path, timeout: float = COMMAND_TIMEOUT_S) -> Result:
        logs = sandbox / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{len(list(logs.glob('*.log'))) + 1:02d}-{argv[0]}.log"
        job = {"argv": argv, "cwd": str(sandbox), "log": str(log), "timeout": timeout, "cache": str(sandbox / "cache")}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return Result(argv, answer["rc"], log.read_text(errors="replace"), answer["seconds"], answer["timed_out"],
                      answer["cpu_seconds"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _environment(sandbox: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", VISIONZOO_CACHE=str(sandbox / "cache"), HF_HOME=str(sandbox / "hf-home"),
               COLUMNS="200", NO_COLOR="1")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"  # one worker per core already (conftest.py); the commands follow suit
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The walk: independent chains, each a test in its own folder, so that pytest-xdist spreads them


FULL_WALK = os.environ.get("VISIONZOO_README_WALK") == "full"
SLOW = [c for c, step in WALK.items() if step.slow]


def readme_chains(walk: dict[str, Step] = WALK, full: bool = FULL_WALK) -> dict[str, list[str]]:
    """The walked commands grouped into chains, each in README order: a command with a `chain` runs after
    the earlier ones of its chain, in their folder; one without is a chain alone."""
    chains: dict[str, list[str]] = {}
    for command, step in walk.items():
        if not step.slow or full:
            chains.setdefault(step.chain or command, []).append(command)
    return chains


CHAINS = readme_chains()
LOCAL_FILES = (("efficientnet-lite0.pth", "efficientnet_lite0"), ("lite0.pth", "efficientnet_lite0"),
               ("my-ckpt.pth", "resnet18"), ("convnext_tiny.pth", "convnext_tiny"),
               ("resnet50.pth", "resnet50"))  # the local weight files the README's offline lines name


def test_chains_keep_readme_order_and_every_walked_command():
    walk = {"a": Step(chain="x"), "b": Step(), "c": Step(chain="x"), "d": Step(slow="s", chain="x")}
    assert readme_chains(walk, full=False) == {"x": ["a", "c"], "b": ["b"]}
    assert readme_chains(walk, full=True) == {"x": ["a", "c", "d"], "b": ["b"]}
    walked = [c for chain in readme_chains(full=True).values() for c in chain]
    assert sorted(walked) == sorted(WALK) and len(walked) == len(set(walked))


@pytest.fixture(scope="session")
def readme_home(tmp_path_factory):
    """This worker's files the README names (copied into each chain's folder), the local weight files (made
    once per worker, linked), and the one process the commands are forked from."""
    home = tmp_path_factory.mktemp("readme-home")
    make_sandbox(home / "files")
    runner = CommandRunner(home)
    yield home, LocalWeights(home / "weights"), runner
    runner.close()


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run shares (the worker's own one without xdist)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return tmp_path_factory.mktemp("readme-shared")
    folder = tmp_path_factory.getbasetemp().parent / f"readme-shared-{run}"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def sandbox(tmp_path, readme_home) -> Path:
    home, weights, _ = readme_home
    shutil.copytree(home / "files", tmp_path, dirs_exist_ok=True)
    for local, model in LOCAL_FILES:
        (tmp_path / local).symlink_to(weights(model))
    return tmp_path


@pytest.fixture
def quickstart_run(readme_home, shared_folder):
    """`quickstart(sandbox)`: the README's quick-start training, run once per test run (the first chain that
    needs it trains it, under a lock the other workers wait on), its run folder hard-linked into `sandbox`,
    and its result."""
    from filelock import FileLock

    home, weights, runner = readme_home

    def quickstart(sandbox: Path) -> Result:
        folder = shared_folder / "quickstart"
        with FileLock(str(shared_folder / "quickstart.lock")):
            if not (folder / "result.json").exists():
                shutil.rmtree(folder, ignore_errors=True)
                shutil.copytree(home / "files", folder)
                result = runner.run(rewrite(QUICKSTART_TRAIN, WALK[QUICKSTART_TRAIN], folder, weights), folder)
                (folder / "result.json").write_text(json.dumps(result.__dict__))
        result = Result(**json.loads((folder / "result.json").read_text()))
        if (folder / "runs" / "quickstart").exists():  # files are replaced, never edited in place: links suffice
            shutil.copytree(folder / "runs" / "quickstart", sandbox / "runs" / "quickstart", copy_function=_link)
        return result

    return quickstart


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def _json_of(output: str):
    """The JSON document a --json command printed (the first line that opens one, to the end)."""
    start = min(i for i in (output.find("{"), output.find("[")) if i >= 0)
    return json.JSONDecoder().raw_decode(output[start:])[0]


def _best_val_top1(output: str) -> float:
    found = re.findall(r"best val top-1:? ([0-9.]+)%", output)
    assert found, f"no 'best val top-1' line in train's output:\n{output[-2000:]}"
    return float(found[-1])


def walk_chain(commands: list[str], sandbox: Path, runner: CommandRunner, weights,
               quickstart) -> tuple[dict[str, Result], dict[str, str]]:
    """Run a chain's commands in order in `sandbox`; their results by README command, and the commands
    that could not be rewritten (a placeholder an earlier failure did not write)."""
    results: dict[str, Result] = {}
    failures: dict[str, str] = {}
    server = None
    try:
        for command in commands:
            step = WALK[command]
            if command == QUICKSTART_TRAIN or (step.chain in ON_QUICKSTART and QUICKSTART_TRAIN not in results):
                results[QUICKSTART_TRAIN] = quickstart(sandbox)
                if command == QUICKSTART_TRAIN:
                    continue
            if command == HELP:
                started = time.monotonic()
                done = subprocess.run([str(VISIONZOO_SCRIPT), "--help"], capture_output=True, text=True, timeout=60,
                                      cwd=sandbox, env=_environment(sandbox))
                results[command] = Result(["--help"], done.returncode, done.stdout + done.stderr,
                                          time.monotonic() - started, False)
                continue
            if command == SERVE:
                server = _start_server(sandbox, rewrite(command, step, sandbox, weights))
                continue
            if command == CURL:
                results[command] = _classify_with_curl_line(sandbox, server)
                continue
            try:
                argv = rewrite(command, step, sandbox, weights)
            except AssertionError as error:
                failures[command] = str(error)
                continue
            results[command] = runner.run(argv, sandbox)
        if EXPLAIN in commands:  # the quick-start model's probabilities for the same images, from predict and explain
            for extra in (AGREE_PREDICT, AGREE_EXPLAIN):
                results[extra] = runner.run(shlex.split(extra)[1:], sandbox)
    finally:
        if server is not None:
            server[0].kill()
            server[0].wait()
        # what each command cost, for whoever trims the walk's time
        (sandbox / "logs").mkdir(exist_ok=True)
        (sandbox / "logs" / "times.txt").write_text("".join(
            f"{r.rc:4d} {r.seconds:7.1f} s {r.cpu_seconds:7.1f} cpu-s  {command}\n" for command, r in results.items()))
    return results, failures


AGREE_PREDICT = "visionzoo predict runs/quickstart/best cat.jpg dog.jpg --json --no-reject"
AGREE_EXPLAIN = "visionzoo explain runs/quickstart/best cat.jpg dog.jpg --json --out explained-again"


def _start_server(sandbox: Path, argv: list[str]):
    port = _free_port()
    argv = [arg if arg != "8000" else str(port) for arg in argv]
    (sandbox / "logs").mkdir(exist_ok=True)
    log = open(sandbox / "logs" / "serve.log", "wb")
    process = subprocess.Popen([str(VISIONZOO_SCRIPT), *argv], cwd=sandbox, env=_environment(sandbox),
                               stdout=log, stderr=subprocess.STDOUT)
    return process, port, argv
def _classify_with_curl_line(sandbox: Path, server) -> Result:
    """The README's curl line against the server the line before started (its port replaced)."""
    process, port, argv = server
    started = time.monotonic()
    deadline = started + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    url = f"http://127.0.0.1:{port}/v1/classify?topk=5"
    if shutil.which("curl"):
        done = subprocess.run(["curl", "-sS", "--fail-with-body", "-F", "file=@cat.jpg", url], cwd=sandbox,
                              capture_output=True, text=True, timeout=60)
        rc, output = done.returncode, done.stdout + done.stderr
    else:  # the same multipart request as curl -F file=@cat.jpg
        body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\n"
                b"Content-Type: image/jpeg\r\n\r\n" + (sandbox / "cat.jpg").read_bytes() + b"\r\n--b--\r\n")
        request = urllib.request.Request(url, body, {"Content-Type": "multipart/form-data; boundary=b"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                rc, output = 0, answer.read().decode()
        except OSError as error:
            rc, output = 22, str(error)
    server_log = (sandbox / "logs" / "serve.log").read_text(errors="replace")
    return Result(["serve", *argv[1:], "+ curl"], rc, output + "\n--- server ---\n" + server_log,
                  time.monotonic() - started, False)


def _problem(command: str, result: Result) -> str | None:
    """Why `result` of README `command` is wrong, or None."""
    shown = f"README: {command}\nran: visionzoo {shlex.join(result.argv)}\n--- output ---\n{result.output[-3000:]}"
    if result.timed_out:
        return f"timed out after {result.seconds:.0f} s\n{shown}"
    marks = [mark for mark in FAILURE_MARKS if mark in result.output]
    if marks:
        return f"{marks} in the output\n{shown}"
    if result.rc != 0:
        return f"exit code {result.rc}\n{shown}"
    return None


def _chain_id(chain: str) -> str:
    """A named chain's name; a command alone as its words, e.g. `list resnet* --json`."""
    return chain if " " not in chain else " ".join(re.sub(r"[\[\]'\"|]", " ", chain).split()[1:])


@pytest.mark.parametrize("chain", list(CHAINS), ids=[_chain_id(c) for c in CHAINS])
def test_readme_chain_walks_offline_and_its_numbers_agree(chain, sandbox, readme_home, quickstart_run):
    _, weights, runner = readme_home
    results, failures = walk_chain(CHAINS[chain], sandbox, runner, weights, quickstart_run)
    problems = [f"README: {command}\n{why}" for command, why in failures.items()]
    problems += [p for command, result in results.items() if (p := _problem(command, result))]

    # train's best validation top-1 and eval's top-1 of best/ on the same validation images
    train, evaluation = results.get(QUICKSTART_TRAIN), results.get(QUICKSTART_EVAL)
    if train and evaluation and not _problem(QUICKSTART_TRAIN, train) and not _problem(QUICKSTART_EVAL, evaluation):
        trained = _best_val_top1(train.output)
        evaluated = 100 * float(_json_of(evaluation.output)["top1"])
        if abs(trained - evaluated) >= 0.006:  # train prints two decimals of a percentage
            problems.append(f"train's best val top-1 {trained:.2f}% != eval's {evaluated:.2f}% of best/ on the "
                            f"same images\n{train.output[-600:]}\n{evaluation.output[:300]}")

    # predict's probability and explain's, for the same image and model
    predicted, explained = results.get(AGREE_PREDICT), results.get(AGREE_EXPLAIN)
    if predicted and explained and not _problem(AGREE_PREDICT, predicted) and not _problem(AGREE_EXPLAIN, explained):
        top = {Path(r["path"]).name: r["predictions"][0] for r in _json_of(predicted.output)}
        for record in _json_of(explained.output):
            name = Path(record["path"]).name
            said, shown = (top[name]["label"], top[name]["prob"]), (record["label"], record["probability"])
            if said[0] != shown[0] or abs(said[1] - shown[1]) >= 1e-4:
                problems.append(f"{name}: predict says {said[0]} {said[1]:.4f}, explain {shown[0]} {shown[1]:.4f}")
    assert not problems, f"{len(problems)} problems in the README chain '{chain}':\n\n" + "\n\n".join(problems)


@pytest.mark.parametrize("command", SLOW, ids=[f"slow{i}" for i in range(len(SLOW))])
def test_slow_readme_command_is_walked_only_in_the_full_walk(command):
    if not FULL_WALK:
        pytest.skip(f"slow: {WALK[command].slow}; VISIONZOO_README_WALK=full runs it in the walk")
