"""`visionzoo lr-find`, `tune` and `soup`: the tools around a fine-tune (its learning rate, its
settings, and the average of its runs)."""

from __future__ import annotations

import argparse
import json

from visionzoo.cli import common
from visionzoo.cli.common import console, shown
from visionzoo.resolve import PRETRAINED_HELP, parse_pretrained

__all__ = ["add_parsers", "cmd_lr_find", "cmd_soup", "cmd_tune"]


def cmd_lr_find(args: argparse.Namespace) -> int:
    from visionzoo.training.command import settings_from_args
    from visionzoo.training.lr_find import lr_find

    settings = settings_from_args(args)
    settings.setdefault("progress", False)
    result = lr_find(args.model, args.data, pretrained=parse_pretrained(args.pretrained) or False, out=args.out,
                     start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, **settings)
    if args.json:
        print(json.dumps({"suggested_lr": result.suggested_lr, "flag": result.flag, "plot": str(result.plot),
                          "steps": len(result.lrs)}))
        return 0
    console.print(shown(f"swept {len(result.lrs)} steps from lr {result.lrs[0]:.2g} to {result.lrs[-1]:.2g}; "
                        f"curve: {result.plot}"))
    console.print(shown(f"suggested: {result.flag}"))
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    from visionzoo.training.soup import soup

    result = soup(args.runs, args.data, method=args.method, out=args.out, overwrite=args.overwrite,
                  device=args.device)
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "method": result.method, result.metric: result.score,
                          "ingredients": result.ingredients, "chosen": result.chosen}))
        return 0
    for run, score in sorted(result.ingredients.items(), key=lambda item: -item[1]):
        mark = "  in the soup" if run in result.chosen else ""
        console.print(shown(f"{run}: {result.metric} {score:.2%}{mark}"))
    console.print(shown(f"{result.method} soup of {len(result.chosen)} runs: {result.metric} {result.score:.2%} "
                        f"(best run {max(result.ingredients.values()):.2%}); run folder: {result.run_dir}"))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from visionzoo.choose.tune import tune

    settings = {"device": args.device} if args.device else {}
    result = tune(args.model, args.data, pretrained=parse_pretrained(args.pretrained) or False, trials=args.trials,
                  budget_min=args.budget_min, out=args.out, seed=args.seed, **settings)
    if args.json:
        print(json.dumps({"folder": str(result.folder), "best_value": result.best_value,
                          "best_settings": result.best_settings, "best_run": str(result.best_run),
                          "command": result.command, "trials": result.trials}))
        return 0
    console.print(shown(f"{result.trials} trials ({result.pruned} pruned) in {result.folder}; best val top-1 "
                        f"{result.best_value:.2%} by {result.best_run}"))
    console.print(shown(f"the best run's settings: {result.command}"))
    if result.importance_plot:
        console.print(shown(f"importance of each setting: {result.importance_plot}"))
    return 0


def add_parsers(commands) -> None:
    from visionzoo.training.command import add_settings_arguments

    p = commands.add_parser(
        "lr-find", help="learning-rate range test: sweep the lr over a short run and suggest --lr",
        description="Train a copy of the model for a few hundred steps at most while the learning rate grows "
                    "exponentially; write the smoothed loss curve with the suggested rate marked (lr_find.png) and "
                    "print it as the flag to pass to train. The run's own recipe applies (--recipe, --batch-size, ...).")
    common.add_model_argument(p, "registered model name, or a run folder (its model, settings and data)",
                              metavar="RUN_OR_MODEL")
    p.add_argument("--data", help="as for train (default for a run folder: its data)")
    p.add_argument("--pretrained", metavar="W", help=f"start from {PRETRAINED_HELP} (default: none)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="default: 1e-7")
    p.add_argument("--end-lr", type=float, default=10.0, help="default: 10")
    p.add_argument("--steps", type=int, help="optimizer steps of the sweep (default: 5 epochs' worth, 30 to 200)")
    p.add_argument("--out", metavar="DIR", help="where to write lr_find.png and lr_find.json (default: the run "
                   "folder given, else runs/lr-find-MODEL-TIME)")
    p.add_argument("--json", action="store_true", help="print the suggestion as JSON")
    add_settings_arguments(p, common)
    p.set_defaults(func=cmd_lr_find)

    p = commands.add_parser(
        "soup", help="average the weights of runs fine-tuned from the same weights (model soups)",
        description="Uniform or greedy soup (Wortsman et al. 2022) of run folders fine-tuned from the same "
                    "weights, judged on the validation set; written as a run folder every command loads.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (their best/) or saved-model folders")
    p.add_argument("--data", help="judge on this data's validation images (default: the first run's validation split)")
    p.add_argument("--method", choices=("greedy", "uniform"), default="greedy",
                   help="greedy: add runs best first while validation does not drop (default); uniform: all")
    p.add_argument("--out", metavar="DIR", help="the soup's run folder (default: runs/soup-METHOD-RUN)")
    p.add_argument("--overwrite", action="store_true", help="replace what a non-empty --out holds")
    common.add_device_argument(p, default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_soup)

    p = commands.add_parser(
        "tune", help="search fine-tuning settings with Optuna (TPE, successive-halving pruning)",
        description="Each trial is a training run with settings drawn by Optuna's TPE sampler (lr, weight decay, "
                    "frozen stages, label smoothing, mixup / cutmix, --freeze-bn, epochs); poor trials are pruned "
                    "by successive halving on their validation top-1. Resumable: run the same command again.")
    common.add_model_argument(p, "registered model name")
    p.add_argument("--data", required=True, help="as for train")
    p.add_argument("--pretrained", metavar="W", default="default",
                   help=f"start from {PRETRAINED_HELP} (default: default)")
    p.add_argument("--trials", type=int, default=20, help="default: 20")
    p.add_argument("--budget-min", type=float, help="stop starting trials after this many minutes (default: none)")
    p.add_argument("--out", metavar="DIR", help="the tuning folder (default: runs/tune-MODEL-DATA); "
                   "run again with the same --out to continue")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default: 0)")
    common.add_device_argument(p, default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_tune)
