"""`visionzoo train` and `visionzoo eval`: argument definitions and the thin commands over
`visionzoo.train` and `visionzoo.evaluation.evaluate` (kept here so cli.py needs one line)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from visionzoo.errors import SettingError
from visionzoo.resolve import PRETRAINED_HELP, parse_pretrained

__all__ = ["add_commands", "cmd_train", "cmd_eval", "add_settings_arguments", "settings_from_args"]


def _settings_from_args(args: argparse.Namespace) -> dict:
    from visionzoo.training.settings import TrainSettings

    names = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if isinstance(settings.get("image_size"), list):  # --image-size S or H W
        settings["image_size"] = _one_or_two(settings["image_size"])
    return settings


def settings_from_args(args: argparse.Namespace) -> dict:
    """The `TrainSettings` fields given on the command line (for lr-find and tune, which train too)."""
    return _settings_from_args(args)


def add_settings_arguments(p, shared) -> None:
    """train's recipe, optimisation, augmentation, adaptation and data-loading arguments, for the commands
    that run training steps of their own (lr-find, tune)."""
    from visionzoo.data.presets import PRESETS
    from visionzoo.training.settings import RECIPES

    recipe = p.add_argument_group("recipe (as for train)")
    recipe.add_argument("--recipe", choices=RECIPES, help="default: auto with --pretrained, else scratch")
    recipe.add_argument("--epochs", type=int, help="default: 10, or the transfer recipes' data-size rule")
    recipe.add_argument("--batch-size", type=int, help="default: 64, or the transfer recipes' data-size rule")
    recipe.add_argument("--image-size", type=int, metavar="S", help="default: the model's")
    recipe.add_argument("--seed", type=int, help="default: 0")
    _add_optimisation_arguments(p.add_argument_group("optimisation"))
    _add_augmentation_arguments(p.add_argument_group("augmentation"), PRESETS)
    _add_adaptation_arguments(p.add_argument_group("adaptation and distillation"))
    _add_data_arguments(p.add_argument_group("data"))
    shared.add_device_argument(p, default=None)


def cmd_train(args: argparse.Namespace) -> int:
    from visionzoo.training.trainer import NonFiniteLossError, train

    settings = _settings_from_args(args)
    if args.resume:
        run = lambda: train(None, None, resume=args.resume, **settings)  # noqa: E731
    else:
        if not args.model or not args.data:
            raise SettingError("train needs a model (MODEL or --model MODEL) and --data (or --resume RUN_DIR)")
        pretrained = parse_pretrained(args.pretrained)
        run = lambda: train(args.model, args.data, pretrained=pretrained or False,  # noqa: E731
                            out=args.out, overwrite=args.overwrite, **settings)
    try:
        result = run()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    if args.json:
        summary = json.loads((result.run_dir / "summary.json").read_text()) if (
            result.run_dir / "summary.json").exists() else {}
        metric = summary.get("best_metric", "val_top1")
        print(json.dumps({"run_dir": str(result.run_dir), f"best_{metric}": result.best_metric, "best_metric": metric,
                          "history": result.history, "interrupted": result.interrupted}))
    return 130 if result.interrupted else 0


def _one_or_two(sides: list[int] | None) -> int | tuple[int, int] | None:
    """`--image-size S` or `--image-size H W` as a side or (H, W)."""
    if sides is None:
        return None
    if len(sides) > 2:
        raise SettingError(f"--image-size takes one side or H W, got {' '.join(map(str, sides))}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from visionzoo.evaluation import evaluate
    from visionzoo.heads import printable

    out = args.out
    if out is None:  # next to the model when it is a folder, else under runs/
        data_name = Path(str(args.data).split("?")[0].replace("builtin:", "")).name.split(".")[0] or "data"
        model_path = Path(args.model)
        out = model_path / f"eval-{data_name}" if model_path.is_dir() else Path("runs") / f"eval-{args.model}-{data_name}"
    # The one --pretrained rule: a folder carries its own weights, a registered name gets its default ones.
    pretrained = args.pretrained if args.pretrained is not None or Path(args.model).exists() else "default"
    result = evaluate(args.model, args.data, pretrained=pretrained, batch_size=args.batch_size, device=args.device,
                      workers=args.workers or 0, image_size=_one_or_two(args.image_size), tta_flip=args.tta_flip,
                      tta_shift=args.tta_shift, out=out, ood=args.ood, max_unpack_gb=args.max_unpack_gb,
                      resize_mode=args.resize_mode)
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}))
        return 0
    # as the CLI's console: piped output keeps tables whole and lines unwrapped
    piped = not sys.stdout.isatty()
    console = Console(width=1000 if piped else None, soft_wrap=piped)
    if result["task"] == "multilabel":
        console.print(f"{result['data']}: {result['count']} images, mAP {result['mAP']:.2%}, micro F1 "
                      f"{result['micro_f1']:.4f}, macro F1 {result['macro_f1']:.4f}, precision {result['precision']:.4f}, "
                      f"recall {result['recall']:.4f}, exact match {result['exact_match']:.2%}", highlight=False)
        table = Table(title="per class (at the saved thresholds)")
        for column in ("class", "AP", "threshold", "precision", "recall", "F1", "support"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for name, row in result["per_class"].items():
            table.add_row(Text(printable(name)), "-" if row["ap"] is None else f"{row['ap']:.3f}", f"{row['threshold']:.3f}",
                          f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    else:
        top5 = f"top-5 {result['top5']:.2%}, " if "top5" in result else ""  # only with more than 5 classes
        console.print(f"{result['data']}: {result['count']} images, top-1 {result['top1']:.2%}, {top5}"
                      f"balanced accuracy {result['balanced_accuracy']:.2%}, ECE {result['ece']:.4f}, "
                      f"macro F1 {result['macro_f1']:.4f}", highlight=False)
        table = Table(title="per class")
        for column in ("class", "precision", "recall", "F1", "support"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for name, row in result["per_class"].items():
            table.add_row(Text(printable(name)), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                          str(row["support"]))
    console.print(table)
    calibration = result["calibration"]
    console.print(f"calibration: temperature {calibration['temperature']:.3f}, ECE {calibration['ece_before']:.4f} -> "
                  f"{calibration['ece_after']:.4f}, NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}"
                  f" (reliability diagram: {result.get('reliability_png', '-')})", highlight=False)
    if result.get("ood"):
        ood = result["ood"]
        line = (f"unknowns ({ood['images']} images): {ood['score']} AUROC {ood['auroc']:.4f}, FPR at 95% TPR "
                f"{ood['fpr95']:.4f}")
        if "rejected" in ood:
            line += (f"; the saved rule calls {ood['rejected']:.1%} of them and {ood['rejected_in_distribution']:.1%} "
                     "of the evaluation images unknown")
        console.print(line, highlight=False)
    if result.get("skipped"):
        console.print(f"{len(result['skipped'])} unreadable images skipped (first: {result['skipped'][0]['path']}: "
                      f"{result['skipped'][0]['reason']})")
    if result.get("confusion_matrix_png"):
        console.print(f"confusion matrix: {result['confusion_matrix_png']}")
    if result.get("per_class_recall_png"):
        console.print(f"per-class recall: {result['per_class_recall_png']}")
    if result.get("per_class_ap_png"):
        console.print(f"per-class AP: {result['per_class_ap_png']}")
    return 0


# What a setting left out gets, in the help: the recipe for the model's family picks most of them.
_BY_RECIPE = "default: the recipe's"


def add_commands(commands, shared) -> None:
    """Add `train` and `eval` to the CLI's subcommand parsers. `shared` is `visionzoo.cli.common`,
    whose argument helpers every command uses (passed in: this layer does not import the CLI's)."""
    from visionzoo.data.presets import PRESETS
    from visionzoo.data.resize import RESIZE_HELP, RESIZE_MODES
    from visionzoo.training.settings import RECIPES

    p = commands.add_parser(
        "train", help="train or fine-tune a classifier on a folder, CSV, archive or builtin:shapes",
        description="Train or fine-tune a classifier. Settings left out come from the recipe for the model's "
                    "family; the resolved settings are written to the run folder's config.json.")
    data = p.add_argument_group("data")
    data.add_argument("--data", help="class-per-folder tree, CSV of path,label (multi-label: path,labels with "
                      "'|' between labels, or 0/1 class columns), a folder with labels.csv, .tar/.tar.gz of a tree, "
                      "or builtin:shapes (required unless --resume)")
    model = p.add_argument_group("model")
    shared.add_model_argument(model, "registered model name (see `visionzoo list`); required unless --resume")
    model.add_argument("--pretrained", metavar="W",
                       help=f"start from {PRETRAINED_HELP} (default: none, random weights, the scratch recipe)")
    model.add_argument("--drop-path-rate", type=float, help=f"stochastic depth ({_BY_RECIPE})")
    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--recipe", choices=RECIPES, help="scratch (default without --pretrained), auto (default with "
                        "it: settings from the data size), finetune, linear-probe, or cifar-speed (airbench94's "
                        "CIFAR-10 recipe, for --model airbench_cifar*)")
    recipe.add_argument("--epochs", type=int, help="default: 10, or the transfer recipes' data-size rule")
    recipe.add_argument("--batch-size", type=int, help="global batch size, split across torchrun processes "
                        "(default: 64, or the transfer recipes' data-size rule)")
    recipe.add_argument("--image-size", type=int, nargs="+", metavar="S",
                        help="train and validation resolution: one side, or H W for rectangular inputs (convolutional "
                             "models and ViTs; default: the model's; small images from scratch: their own)")
    recipe.add_argument("--resize-mode", choices=RESIZE_MODES, help=RESIZE_HELP)
    recipe.add_argument("--seed", type=int, help="default: 0")
    recipe.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                        help="deterministic kernels, slower (default: off)")
    _add_optimisation_arguments(p.add_argument_group("optimisation"))
    _add_augmentation_arguments(p.add_argument_group("augmentation"), PRESETS)
    _add_adaptation_arguments(p.add_argument_group("adaptation and distillation"))
    _add_data_arguments(data)
    _add_head_arguments(p.add_argument_group("the head: multi-label, calibration, unknowns"))
    _add_output_arguments(p.add_argument_group("output and run"), shared)
    p.set_defaults(func=cmd_train)
    _add_eval(commands, shared)


def _add_optimisation_arguments(group) -> None:
    from visionzoo.training.balance import BALANCE_MODES

    group.add_argument("--lr", type=float, help="peak learning rate (default: base lr x batch / 256)")
    group.add_argument("--optimizer", choices=["sgd", "adamw"], help=_BY_RECIPE)
    group.add_argument("--weight-decay", type=float, help=_BY_RECIPE)
    group.add_argument("--warmup-epochs", type=float, help=_BY_RECIPE)
    group.add_argument("--warmup-steps", type=int,
                       help="warm-up in optimizer steps, overrides --warmup-epochs (default: the transfer recipes')")
    group.add_argument("--warmup-start-ratio", type=float, help="the warm-up starts at lr x this (default: 0)")
    group.add_argument("--schedule", choices=["cosine", "linear"], help="lr decay after warm-up (default: cosine)")
    group.add_argument("--min-lr-ratio", type=float, help="the decay ends at lr x this (default: 0)")
    group.add_argument("--norm-lr-scale", type=float, metavar="X",
                       help="lr multiplier for normalisation layers' parameters (default: 1)")
    group.add_argument("--norm-weight-decay", action=argparse.BooleanOptionalAction, default=None,
                       help="decay normalisation parameters and biases too, as much per step as the weights "
                            "(default: off)")
    group.add_argument("--lookahead", type=int, metavar="STEPS",
                       help="Lookahead: sync slow weights every N steps (default: 0, off)")
    group.add_argument("--lookahead-decay", type=float,
                       help="the slow weights' decay at the end of training (default: 0.774)")
    group.add_argument("--layer-decay", type=float, help=f"layer-wise lr decay, ViT-style fine-tuning ({_BY_RECIPE})")
    group.add_argument("--head-lr-scale", type=float, help=f"head lr / backbone lr ({_BY_RECIPE})")
    group.add_argument("--label-smoothing", type=float, help=_BY_RECIPE)
    group.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                       help="keep an EMA of the weights, validated beside them; best/ holds the better "
                            "(default: off)")
    group.add_argument("--ema-decay", type=float, help="default: 0.9998; in transfer runs, an average over a third "
                       "of the optimizer steps (1 - 3 / steps, within 0.9 and 0.9998)")
    group.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default: 1)")
    group.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value (default: no clipping)")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                       help="default: auto (bf16 or fp16 autocast on a GPU that has it, else fp32)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last memory (default: on, the layout eval, predict, explain and serve run the model in; off, validation differs from theirs by float rounding)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the model (default: off)")
    group.add_argument("--class-balance", choices=BALANCE_MODES,
                       help="for imbalanced classes: none, weights (inverse frequency), effective (Cui et al.'s "
                            "effective-number weights), sampler (class-balanced draws), logit-adjust (Menon et al.'s "
                            "loss; inference unchanged); default auto: none below an imbalance of 10, else effective")
    group.add_argument("--balance-beta", type=float, metavar="B",
                       help="effective: the effective number's beta (default: 0.999)")
    group.add_argument("--balance-tau", type=float, metavar="T", help="logit-adjust: the prior's scale (default: 1)")
    group.add_argument("--early-stopping", type=int, metavar="N",
                       help="stop after N validations without improvement of val top-1 (mAP when multi-label); "
                            "best/ keeps the best epoch (default: 2 in transfer runs, auto and finetune; never in "
                            "others; 0: never)")


def _add_augmentation_arguments(group, presets: tuple[str, ...]) -> None:
    group.add_argument("--augment", choices=presets,
                       help=f"train-time augmentation preset ({_BY_RECIPE}; crop for small images from scratch)")
    group.add_argument("--crop-padding", type=int, metavar="PX",
                       help="largest shift of the crop preset (default: image size / 8)")
    group.add_argument("--alternate-flip", action=argparse.BooleanOptionalAction, default=None,
                       help="crop preset: mirror each image every other epoch instead of at random (default: off)")
    group.add_argument("--mixup", type=float, help="mixup alpha (default: 0, off)")
    group.add_argument("--cutmix", type=float, help="cutmix alpha (default: 0, off)")
    group.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                       help="validation also averages the mirrored image (default: off)")
    group.add_argument("--tta-shift", type=int, metavar="PIXELS",
                       help="validation also averages views shifted by this many pixels (default: 0; small images: 1)")


def _add_data_arguments(group) -> None:
    group.add_argument("--val-fraction", type=float, help="held out when the data has no val/ folder (default: 0.1)")
    group.add_argument("--val-every", type=int, metavar="N",
                       help="validate every N epochs and after the last (default: 1)")
    group.add_argument("--exclude", metavar="FILE", help="leave out the files listed: a CSV with a path column "
                       "(e.g. audit/label_issues.csv from `visionzoo audit`) or one path a line (default: none)")
    group.add_argument("--workers", type=int, help="data loader processes (default: by the CPUs and the data)")
    group.add_argument("--max-unpack-gb", type=float, metavar="GB", help="let a .tar/.tar.gz unpack to this many GB "
                       "(default: at most 100x its size, at least 1 GB, at most 50 GB)")
    group.add_argument("--image-column", metavar="NAME", help="the image column of a Hugging Face dataset, or the "
                       "image member of tar shards' samples (default: found)")
    group.add_argument("--label-column", metavar="NAME", help="the label column of a Hugging Face dataset, or the "
                       "label member of tar shards' samples (default: the ClassLabel column; cls)")
    group.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                       help="decode once into a uint8 cache (in memory when it fits, else memory-mapped; "
                            "default: on for transfer recipes)")
    group.add_argument("--cache-size", type=int, help="side of cached images (default: image size / crop pct)")
    group.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                       help="decode every file first and write bad_files.txt (default: off)")


def _add_adaptation_arguments(group) -> None:
    from visionzoo.training.settings import ADAPT_METHODS

    group.add_argument("--adapt", choices=ADAPT_METHODS,
                       help="what trains: full (default), lora (peft, per-family targets; the head in full), freeze "
                            "(the stem and first --freeze-stages N stages, default half) or lp-ft (linear probe, "
                            "then full)")
    group.add_argument("--freeze-stages", type=int, metavar="N",
                       help=f"freeze the stem and the first N stages (0: the stem only; -1: nothing; {_BY_RECIPE})")
    group.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                       help="BatchNorm layers keep their pretrained running statistics while their weights train "
                            "(default: on in auto transfer runs of the convolutional families)")
    group.add_argument("--lora-rank", type=int, metavar="R", help="LoRA rank (default: 8)")
    group.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA scale numerator (default: 2 x rank)")
    group.add_argument("--lora-mlp", action=argparse.BooleanOptionalAction, default=None,
                       help="LoRA on the MLP layers too, not only attention (default: off)")
    group.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                       help="recompute each block's activations in the backward pass: less memory, about a third "
                            "more compute (default: on under --adapt lora, for the families that support it)")
    group.add_argument("--lp-epochs", type=int, metavar="N", help="lp-ft: epochs of linear probing (default: a quarter)")
    group.add_argument("--teacher", metavar="RUN_DIR_OR_MODEL",
                       help="distil from this run folder, saved model or registered model, with its default weights "
                            "(default: no distillation)")
    group.add_argument("--distill", choices=["soft", "hard"],
                       help="soft: KL at a temperature plus CE (default); hard: DeiT's")
    group.add_argument("--distill-alpha", type=float, metavar="A", help="weight of the teacher's term (default: 0.5)")
    group.add_argument("--distill-temperature", type=float, metavar="T",
                       help="soft distillation temperature (default: 4)")
    group.add_argument("--teacher-cache", action=argparse.BooleanOptionalAction, default=None,
                       help="reuse the teacher's logits for views seen before (seeded crop/none augmentation; "
                            "README; default: off)")


def _add_head_arguments(group) -> None:
    group.add_argument("--head-init-std", type=float, metavar="STD",
                       help="a new classifier's weights ~ N(0, STD), 0 for zeros (default: 0 in transfer runs, "
                            "else the reference's initialisation)")
    group.add_argument("--probe-init", action=argparse.BooleanOptionalAction, default=None,
                       help="start a new head from a linear probe on the training embeddings, LP-FT's first phase "
                            "(default: off)")
    group.add_argument("--task", choices=["multiclass", "multilabel"],
                       help="multilabel: several classes per image, sigmoid outputs (default: as the data says)")
    group.add_argument("--loss", choices=["bce", "asl"], help="multi-label loss: bce (default) or asl (asymmetric loss)")
    group.add_argument("--threshold", type=float, metavar="P",
                       help="multi-label: one probability threshold for every class (default: tuned per class on val)")
    group.add_argument("--no-calibrate", dest="calibrate", action="store_false", default=None,
                       help="do not fit temperature scaling on validation after training")
    group.add_argument("--no-reject", dest="reject", action="store_false", default=None,
                       help="do not fit an 'unknown' threshold on validation after training")
    group.add_argument("--ood-score", choices=["energy", "msp"], help="score of the unknown rule (default: energy)")
    group.add_argument("--ood-keep", type=float, metavar="SHARE",
                       help="share of in-distribution validation images the unknown rule keeps (default: 0.95)")


def _add_output_arguments(group, shared) -> None:
    group.add_argument("--out", metavar="DIR", help="run folder (default: runs/MODEL-DATA-TIME)")
    group.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly (default: a new run)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run in a non-empty --out folder (only the files a run writes are removed)")
    group.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                       help="also checkpoint every N optimizer steps (default: at each epoch's end only)")
    group.add_argument("--track", choices=["mlflow", "wandb"],
                       help="also log parameters, metrics, plots and best/ to MLflow or W&B (pip install "
                            "'visionzoo[mlflow]' or '[wandb]'; W&B offline without an API key; default: TensorBoard only)")
    group.add_argument("--track-uri", metavar="URI",
                       help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default, mlflow.db "
                            "in the working folder); W&B: its server")
    shared.add_device_argument(group, default=None)
    shared.add_progress_argument(group)
    group.set_defaults(progress=None)  # None: the settings' default, so a resumed run keeps its own
    group.add_argument("--json", action="store_true", help="print the result as JSON at the end")


def _add_eval(commands, shared) -> None:
    from visionzoo.data.resize import RESIZE_HELP, RESIZE_MODES

    p = commands.add_parser(
        "eval", help="evaluate a model: top-1/5, per-class P/R/F1, calibration, confusion matrix",
        description="Evaluate a trained model folder (a run's best/ or last/), a run folder, or a registered model.")
    shared.add_model_argument(p, "saved model folder, run folder or registered name", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--data", required=True, help="folder, CSV, archive or builtin:shapes (its val/test part)")
    p.add_argument("--max-unpack-gb", type=float, metavar="GB", help="let a .tar/.tar.gz unpack to this many GB "
                   "(default: at most 100x its size, at least 1 GB, at most 50 GB)")
    shared.add_pretrained_argument(p)
    p.add_argument("--batch-size", type=int, default=128, help="default: 128")
    p.add_argument("--workers", type=int, help="image decoding processes (default: 0)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="S",
                   help="one side, or H W (default: the model's, as it was trained)")
    p.add_argument("--resize-mode", choices=RESIZE_MODES, help=RESIZE_HELP)
    p.add_argument("--tta-flip", action="store_true", help="also average over the mirrored image")
    p.add_argument("--tta-shift", type=int, default=0, metavar="PIXELS",
                   help="also average over views shifted by this many pixels (default: 0; small images: 1)")
    p.add_argument("--out", metavar="DIR", help="where to write metrics.json and confusion_matrix.png "
                   "(default: MODEL_DIR/eval-DATA, or runs/eval-MODEL-DATA for a model name)")
    p.add_argument("--ood", metavar="DIR", help="a folder of images of none of the classes: report AUROC and "
                   "FPR at 95%% TPR of the unknown scores")
    shared.add_device_argument(p, default=None)
    shared.add_progress_argument(p, draws=False)
    p.add_argument("--json", action="store_true", help="print one JSON object (keys task, top1, top5, per_class, ece, "
                   "calibration, ...; multi-label: task, mAP, per_class with ap / f1 / threshold, micro_f1, macro_f1)")
    p.set_defaults(func=cmd_eval)
