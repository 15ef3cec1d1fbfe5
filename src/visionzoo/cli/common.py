"""What the command modules share: the consoles and the `--pretrained` argument."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from visionzoo.heads import printable
from visionzoo.resolve import PRETRAINED_HELP

__all__ = ["console", "err_console", "add_pretrained_argument", "warn", "print_engine_choice", "shown", "shown_markup"]

console = Console()
err_console = Console(stderr=True)


def shown(text: object) -> Text:
    """A name from the user's data (a class, a file) as a table cell: never read as markup, control
    characters shown as '?' (a class named `[/]` or holding an ANSI escape prints as it is)."""
    return Text(printable(text))


def shown_markup(text: object) -> str:
    """`shown` for a line printed with markup: the name escaped."""
    return escape(printable(text))


def add_pretrained_argument(parser: argparse.ArgumentParser, default: str | None = None,
                            when_absent: str = "the default weights") -> None:
    """`--pretrained none|default|ARCH.TAG|PATH`, read by `visionzoo.resolve.parse_pretrained` in every command."""
    parser.add_argument("--pretrained", metavar="W", default=default,
                        help=f"{PRETRAINED_HELP} (default: {when_absent})")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def print_engine_choice(choice: dict) -> None:
    """`--engine auto`'s report: each engine's latency, its top-1 agreement and drop, the rule, the pick."""
    from rich.table import Table

    table = Table(title=f"engines for {choice['model']}, batch {choice['batch_size']} "
                        f"(accuracy rule on {choice['accuracy_images']})")
    for column in ["engine", "precision", "p50 ms", "p90 ms", "top-1 agreement", "top-1 drop", "rule"]:
        table.add_column(column, justify="left" if column in ("engine", "precision", "rule") else "right")
    for row in sorted(choice["rows"], key=lambda r: r["latency_ms"]["p50"]):
        accuracy = row["accuracy"] or {}
        rule = "-" if row["precision"] == "fp32" else ("pass" if row["eligible"] else f"fail: {row['reason']}")
        table.add_row(row["engine"] + (" *" if row["engine"] == choice["chosen"] else ""), row["precision"],
                      f"{row['latency_ms']['p50']:.2f}", f"{row['latency_ms']['p90']:.2f}",
                      f"{100 * accuracy['agreement']:.2f}%" if accuracy else "-",
                      f"{100 * accuracy['drop']:.2f} pts" if accuracy else "-", escape(rule))
    console.print(table)
    for name, reason in choice["skipped"].items():
        console.print(f"skipped {name}: {escape(reason)}", highlight=False)
    console.print(f"chosen: {choice['chosen']} (the fastest engine within the accuracy rule)", highlight=False)
