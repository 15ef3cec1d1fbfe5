"""`visionzoo list` and `visionzoo info`: the registered models and their published weights."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

import visionzoo
from visionzoo.cli.common import add_model_argument, console, err_console
from visionzoo.errors import UsageError
from visionzoo.measure import counted

__all__ = ["add_parsers", "cmd_list", "cmd_info"]


def _model_rows(names: list[str]) -> list[dict]:
    from rich.progress import Progress

    rows = []
    with Progress(console=err_console, transient=True, disable=len(names) < 8) as progress:
        task = progress.add_task("measuring models", total=len(names))
        for name in names:
            info = visionzoo.model_info(name)
            rows.append({
                "name": name,
                "family": info["family"],
                "year": info["year"],
                "params": info["params"],
                "gmacs": info["gmacs"],
                "input_size": info["input_size"],
            })
            progress.advance(task)
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    names = visionzoo.list_models(args.pattern, family=args.family)
    if not names:
        raise UsageError(f"no model matches '{args.pattern}'" + (f" in family '{args.family}'" if args.family else ""))
    if args.pretrained:
        return _print_weights(names, args.json, title="pretrained weights")
    rows = _model_rows(names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=counted(len(rows), "model"))
    for column, justify in [("name", "left"), ("family", "left"), ("year", "right"),
                            ("params (M)", "right"), ("GMACs", "right"), ("input size", "right")]:
        table.add_column(column, justify=justify)
    for row in rows:
        size = row["input_size"]
        table.add_row(row["name"], row["family"], str(row["year"]), f"{row['params'] / 1e6:.1f}",
                      f"{row['gmacs']:.2f}", f"{size[1]}x{size[2]}")
    console.print(table)
    return 0


def _print_weights(names: list[str], as_json: bool, title: str) -> int:
    from visionzoo.weights import list_weights

    entries = [e for name in names for e in list_weights(name)]
    if as_json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    table = Table(title=f"{len(entries)} {title} ('*' marks each architecture's default)")
    table.add_column("weight", no_wrap=True)
    for column in ("top-1", "top-5", "size"):  # numbers are never cut; the text columns wrap instead
        table.add_column(column, justify="right", no_wrap=True, min_width=5)
    wide = console.width >= 140  # training data and license need room; --json always has them
    for column in ("classes", "pretraining", "license") if wide else ("classes",):
        table.add_column(column, overflow="fold")
    for e in entries:
        acc = e.imagenet or {}
        row = [("* " if e.default else "  ") + e.name, f"{acc['top1']:.2f}" if acc else "-",
               f"{acc['top5']:.2f}" if acc.get("top5") is not None else "-", str(acc.get("eval_size", "-")), e.label_set or str(e.num_classes)]
        table.add_row(*row, *((e.pretraining, e.license) if wide else ()))
    console.print(table)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from visionzoo.weights import list_weights

    info = visionzoo.model_info(args.model)
    if args.json:
        print(json.dumps({**info, "weights": [e.as_dict() for e in list_weights(args.model)]}, indent=2))
        return 0
    table = Table(show_header=False, title=args.model)
    table.add_column(style="bold")
    table.add_column()
    for key, value in info.items():
        if key == "params":
            value = f"{value:,} ({value / 1e6:.2f} M)"
        elif key == "input_size":
            value = "x".join(str(v) for v in value)
        table.add_row(key, str(value))
    console.print(table)
    if list_weights(args.model):
        _print_weights([args.model], False, title=f"weights for {args.model}")
    else:
        console.print(f"{args.model} has no published weights")
    return 0


def add_parsers(commands) -> None:
    p = commands.add_parser("list", help="list registered models", description="List registered models.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'resnet*'")
    p.add_argument("--family", help="only this family")
    p.add_argument("--pretrained", action="store_true", help="list the published weights instead (default marked)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("info", help="show a model's card", description="Show a model's card.")
    add_model_argument(p, "registered model name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)
