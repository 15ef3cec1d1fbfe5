"""What the command modules share: the consoles and the `--pretrained` argument."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from visionzoo.resolve import PRETRAINED_HELP

__all__ = ["console", "err_console", "add_pretrained_argument", "warn"]

console = Console()
err_console = Console(stderr=True)


def add_pretrained_argument(parser: argparse.ArgumentParser, default: str | None = None,
                            when_absent: str = "the default weights") -> None:
    """`--pretrained none|default|ARCH.TAG|PATH`, read by `visionzoo.resolve.parse_pretrained` in every command."""
    parser.add_argument("--pretrained", metavar="W", default=default,
                        help=f"{PRETRAINED_HELP} (default: {when_absent})")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)
