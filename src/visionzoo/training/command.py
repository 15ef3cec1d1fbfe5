"""`visionzoo train` and `visionzoo eval`: argument definitions and the thin commands over
`visionzoo.train` and `visionzoo.evaluation.evaluate` (kept here so cli.py needs one line)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from visionzoo.errors import SettingError
from visionzoo.resolve import PRETRAINED_HELP, parse_pretrained

__all__ = ["add_commands", "cmd_train", "cmd_eval"]


def _settings_from_args(args: argparse.Namespace) -> dict:
    from visionzoo.training.settings import TrainSettings

    names = {f.name for f in dataclasses.fields(TrainSettings)}
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from visionzoo.training.trainer import NonFiniteLossError, train

    settings = _settings_from_args(args)
    if args.resume:
        run = lambda: train(None, None, resume=args.resume, **settings)  # noqa: E731
    else:
        if not args.model or not args.data:
            raise SettingError("train needs --model and --data (or --resume RUN_DIR)")
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


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from visionzoo.evaluation import evaluate
    from visionzoo.heads import printable

    out = args.out
    if out is None:  # next to the model when it is a folder, else under runs/
        from pathlib import Path

        data_name = Path(str(args.data).split("?")[0].replace("builtin:", "")).name.split(".")[0] or "data"
        model_path = Path(args.model)
        out = model_path / f"eval-{data_name}" if model_path.is_dir() else Path("runs") / f"eval-{args.model}-{data_name}"
    result = evaluate(args.model, args.data, pretrained=args.pretrained, batch_size=args.batch_size,
                      workers=args.workers or 0, image_size=args.image_size, tta_flip=args.tta_flip,
                      tta_shift=args.tta_shift, out=out, ood=args.ood, max_unpack_gb=args.max_unpack_gb)
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}))
        return 0
    console = Console()
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
                      f"ECE {result['ece']:.4f}, macro F1 {result['macro_f1']:.4f}", highlight=False)
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
    if result.get("per_class_ap_png"):
        console.print(f"per-class AP: {result['per_class_ap_png']}")
    return 0


def add_commands(commands) -> None:
    """Add `train` and `eval` to the CLI's subcommand parsers."""
    from visionzoo.data.presets import PRESETS
    from visionzoo.training.settings import RECIPES

    p = commands.add_parser(
        "train", help="train or fine-tune a classifier on a folder, CSV, archive or builtin:shapes",
        description="Train or fine-tune a classifier. Settings left out come from the recipe for the model's "
                    "family; the resolved settings are written to the run folder's config.json.")
    p.add_argument("--model", help="registered model name (see `visionzoo list`)")
    p.add_argument("--data", help="class-per-folder tree, CSV of path,label (multi-label: path,labels with "
                   "'|' between labels, or 0/1 class columns), a folder with labels.csv, .tar/.tar.gz of a tree, "
                   "or builtin:shapes")
    p.add_argument("--pretrained", metavar="W", help=f"start from {PRETRAINED_HELP} (default: none, from scratch)")
    p.add_argument("--recipe", choices=RECIPES, help="scratch (default without --pretrained), auto (default with it: "
                   "settings from the data size), finetune or linear-probe")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/MODEL-DATA-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in a non-empty --out folder (only the files a run writes are removed)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: base lr x batch / 256)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--warmup-steps", type=int, help="warm-up in optimizer steps (overrides --warmup-epochs)")
    p.add_argument("--freeze-stages", type=int, metavar="N",
                   help="freeze the stem and the first N stages (0: the stem only; -1: nothing)")
    p.add_argument("--head-init-std", type=float, metavar="STD",
                   help="a new classifier's weights ~ N(0, STD), 0 for zeros (transfer default: 0)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm layers keep their pretrained running statistics while their weights train "
                        "(default: on in auto transfer runs of the convolutional families)")
    p.add_argument("--probe-init", action=argparse.BooleanOptionalAction, default=None,
                   help="start a new head from a linear probe on the training embeddings (LP-FT's first phase)")
    p.add_argument("--warmup-start-ratio", type=float, help="the warm-up starts at lr x this (default 0)")
    p.add_argument("--schedule", choices=["cosine", "linear"], help="lr decay after warm-up (default cosine)")
    p.add_argument("--min-lr-ratio", type=float, help="the decay ends at lr x this (default 0)")
    p.add_argument("--norm-lr-scale", type=float, metavar="X",
                   help="lr multiplier for normalisation layers' parameters (default 1)")
    p.add_argument("--norm-weight-decay", action=argparse.BooleanOptionalAction, default=None,
                   help="decay normalisation parameters and biases too (as much per step as the weights)")
    p.add_argument("--lookahead", type=int, metavar="STEPS", help="Lookahead: sync slow weights every N steps (0: off)")
    p.add_argument("--lookahead-decay", type=float, help="the slow weights' decay at the end of training (default 0.774)")
    p.add_argument("--layer-decay", type=float, help="layer-wise lr decay (ViT-style fine-tuning)")
    p.add_argument("--head-lr-scale", type=float, help="head lr / backbone lr")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", choices=PRESETS, help="train-time augmentation preset")
    p.add_argument("--crop-padding", type=int, metavar="PX", help="largest shift of the crop preset (default: image size / 8)")
    p.add_argument("--alternate-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="crop preset: mirror each image every other epoch instead of at random")
    p.add_argument("--mixup", type=float, help="mixup alpha (0 = off)")
    p.add_argument("--cutmix", type=float, help="cutmix alpha (0 = off)")
    p.add_argument("--drop-path-rate", type=float)
    p.add_argument("--image-size", type=int, help="train and validation resolution")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="keep an EMA of the weights")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    _add_data_and_head_arguments(p)
    p.set_defaults(func=cmd_train)
    _add_eval(commands)


def _add_data_and_head_arguments(p: argparse.ArgumentParser) -> None:
    """`train`'s arguments for the data, validation, the head, adaptation and distillation."""
    from visionzoo.training.settings import ADAPT_METHODS

    p.add_argument("--class-balance", choices=["none", "weights", "sampler"], help="for imbalanced data")
    p.add_argument("--early-stopping", type=int, metavar="EPOCHS", help="stop after this many epochs without improvement")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--val-fraction", type=float, help="held out when the data has no val/ folder (default 0.1)")
    p.add_argument("--max-unpack-gb", type=float, metavar="GB", help="let a .tar/.tar.gz unpack to this many GB "
                   "(default: at most 100x its size, at least 1 GB, at most 50 GB)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="decode once into a uint8 cache (in memory when it fits, else memory-mapped; "
                        "default: on for transfer recipes)")
    p.add_argument("--cache-size", type=int, help="side of cached images (default: image size / crop pct)")
    p.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                   help="decode every file first and write bad_files.txt")
    p.add_argument("--exclude", metavar="FILE", help="leave out the files listed: a CSV with a path column "
                   "(e.g. audit/label_issues.csv from `visionzoo audit`) or one path a line")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also checkpoint every N optimizer steps")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation")
    p.add_argument("--tta-shift", type=int, metavar="PIXELS",
                   help="validation also averages views shifted by this many pixels (small images: 1)")
    p.add_argument("--val-every", type=int, metavar="N", help="validate every N epochs and after the last (default 1)")
    p.add_argument("--task", choices=["multiclass", "multilabel"],
                   help="multilabel: several classes per image, sigmoid outputs (default: as the data says)")
    p.add_argument("--loss", choices=["bce", "asl"], help="multi-label loss: bce (default) or asl (asymmetric loss)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="multi-label: one probability threshold for every class (default: tuned per class on val)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", default=None,
                   help="do not fit temperature scaling on validation after training")
    p.add_argument("--no-reject", dest="reject", action="store_false", default=None,
                   help="do not fit an 'unknown' threshold on validation after training")
    p.add_argument("--ood-score", choices=["energy", "msp"], help="score of the unknown rule (default: energy)")
    p.add_argument("--ood-keep", type=float, metavar="SHARE",
                   help="share of in-distribution validation images the unknown rule keeps (default: 0.95)")
    p.add_argument("--adapt", choices=ADAPT_METHODS,
                   help="what trains: full (default), lora (peft, per-family targets; the head in full), freeze "
                        "(the stem and first --freeze-stages N stages, default half) or lp-ft (linear probe, then full)")
    p.add_argument("--lora-rank", type=int, metavar="R", help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA scale numerator (default 2 x rank)")
    p.add_argument("--lora-mlp", action=argparse.BooleanOptionalAction, default=None,
                   help="LoRA on the MLP layers too, not only attention")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each block's activations in the backward pass: less memory, about a third more "
                        "compute (default: on under --adapt lora, for the families that support it)")
    p.add_argument("--lp-epochs", type=int, metavar="N", help="lp-ft: epochs of linear probing (default a quarter)")
    p.add_argument("--teacher", metavar="RUN_DIR_OR_MODEL",
                   help="distil from this run folder, saved model or registered model (default weights)")
    p.add_argument("--distill", choices=["soft", "hard"], help="soft: KL at a temperature plus CE (default); hard: DeiT's")
    p.add_argument("--distill-alpha", type=float, metavar="A", help="weight of the teacher's term (default 0.5)")
    p.add_argument("--distill-temperature", type=float, metavar="T", help="soft distillation temperature (default 4)")
    p.add_argument("--teacher-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse the teacher's logits for views seen before (seeded crop/none augmentation; README)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON at the end")


def _add_eval(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate a model: top-1/5, per-class P/R/F1, calibration, confusion matrix",
        description="Evaluate a trained model folder (a run's best/ or last/), a run folder, or a registered model.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--data", required=True, help="folder, CSV, archive or builtin:shapes (its val/test part)")
    p.add_argument("--max-unpack-gb", type=float, metavar="GB", help="let a .tar/.tar.gz unpack to this many GB "
                   "(default: at most 100x its size, at least 1 GB, at most 50 GB)")
    p.add_argument("--pretrained", metavar="W", help=f"for a registered name, {PRETRAINED_HELP} (default: none)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--tta-flip", action="store_true", help="also average over the mirrored image")
    p.add_argument("--tta-shift", type=int, default=0, metavar="PIXELS",
                   help="also average over views shifted by this many pixels (small images: 1)")
    p.add_argument("--out", metavar="DIR", help="where to write metrics.json and confusion_matrix.png "
                   "(default: MODEL_DIR/eval-DATA, or runs/eval-MODEL-DATA for a model name)")
    p.add_argument("--ood", metavar="DIR", help="a folder of images of none of the classes: report AUROC and "
                   "FPR at 95%% TPR of the unknown scores")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys task, top1, top5, per_class, ece, "
                   "calibration, ...; multi-label: task, mAP, per_class with ap / f1 / threshold, micro_f1, macro_f1)")
    p.set_defaults(func=cmd_eval)
