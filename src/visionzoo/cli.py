"""The `visionzoo` command: parses arguments and calls library functions, nothing more.

Each subcommand is a `cmd_*` function taking the parsed arguments and returning an exit
code. Errors a user can fix (bad names, missing files, bad values) are printed as one
line on stderr with exit code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from rich.console import Console
from rich.table import Table

import visionzoo
from visionzoo.errors import UnknownModelError, UsageError

console = Console()
err_console = Console(stderr=True)


# --- list / info -------------------------------------------------------------------------


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
    rows = _model_rows(names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"{len(rows)} models")
    for column, justify in [("name", "left"), ("family", "left"), ("year", "right"),
                            ("params (M)", "right"), ("GMACs", "right"), ("input size", "right")]:
        table.add_column(column, justify=justify)
    for row in rows:
        size = row["input_size"]
        table.add_row(row["name"], row["family"], str(row["year"]), f"{row['params'] / 1e6:.1f}",
                      f"{row['gmacs']:.2f}", f"{size[1]}x{size[2]}")
    console.print(table)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = visionzoo.model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
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
    return 0


# --- the parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionzoo",
        description="Image classification architectures: list, inspect, train, evaluate, deploy.",
    )
    parser.add_argument("--version", action="version", version=f"visionzoo {visionzoo.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("list", help="list registered models", description="List registered models.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'resnet*'")
    p.add_argument("--family", help="only this family")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("info", help="show a model's card", description="Show a model's card.")
    p.add_argument("model", help="registered model name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except (UsageError, ValueError, UnknownModelError, OSError, NotImplementedError) as error:
        err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
