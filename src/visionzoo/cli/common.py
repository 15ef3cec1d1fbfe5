"""What the command modules share: the consoles (piped output full width) and the arguments that
mean the same thing in every command, each made by one helper."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from visionzoo.errors import UsageError
from visionzoo.heads import printable
from visionzoo.resolve import PRETRAINED_HELP

__all__ = ["console", "err_console", "add_pretrained_argument", "add_model_argument", "settle_model_argument",
           "add_image_size_argument", "add_device_argument", "add_progress_argument", "PRETRAINED_RULE", "warn",
           "print_engine_choice", "shown", "shown_markup", "add_resize_mode_argument"]

# Piped or redirected output is read by programs and pagers, not a terminal 80 columns wide: tables
# keep every cell whole and lines are not wrapped (rich would otherwise cut names to "effi…").
_PIPED_WIDTH = 1000


def _console() -> Console:
    piped = not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty())
    return Console(width=_PIPED_WIDTH if piped else None, soft_wrap=piped)


console = _console()
err_console = Console(stderr=True)

# `--pretrained`'s default, the same in every command that builds a model to use (train, which may
# start from scratch, states its own).
PRETRAINED_RULE = ("default: a saved model or run folder carries its own weights; a registered name gets its "
                   "default weights unless --pretrained none")


def shown(text: object) -> Text:
    """A name from the user's data (a class, a file) as a table cell: never read as markup, control
    characters shown as '?' (a class named `[/]` or holding an ANSI escape prints as it is)."""
    return Text(printable(text))


def shown_markup(text: object) -> str:
    """`shown` for a line printed with markup: the name escaped."""
    return escape(printable(text))


def add_pretrained_argument(parser: argparse.ArgumentParser, default: str | None = None,
                            rule: str = PRETRAINED_RULE) -> None:
    """`--pretrained none|default|ARCH.TAG|PATH`, read by `visionzoo.resolve.parse_pretrained` in every command."""
    parser.add_argument("--pretrained", metavar="W", default=default, help=f"{PRETRAINED_HELP} ({rule})")


def add_model_argument(parser: argparse.ArgumentParser, help: str, metavar: str = "MODEL") -> None:
    """The model, as `COMMAND MODEL ...` or `COMMAND --model MODEL ...`: either spelling in every command.
    `settle_model_argument` joins the two after parsing."""
    parser.add_argument("model", metavar=metavar, nargs="?", help=f"{help} (or --model {metavar})")
    parser.add_argument("--model", dest="model_option", metavar=metavar, help=argparse.SUPPRESS)


def settle_model_argument(args: argparse.Namespace, required: bool = True) -> None:
    """`args.model` from whichever spelling was used. A command that also takes positional images
    (predict, explain) reads `--model M IMAGE...` with the first positional as an image."""
    option = getattr(args, "model_option", None)
    if option is not None:
        if args.model is not None:
            if not hasattr(args, "images"):
                raise UsageError(f"the model is given twice ({args.model!r} and --model {option!r}); give it once")
            args.images = [args.model, *args.images]
        args.model = option
    elif required and args.model is None:
        if hasattr(args, "images"):  # argparse gave the one argument to the images
            raise UsageError(f"visionzoo {args.command} needs a model and at least one image: "
                             f"visionzoo {args.command} MODEL IMAGE [IMAGE ...]")
        raise UsageError(f"visionzoo {args.command} needs a model: a registered name or a saved model folder, "
                         "as the first argument or --model")


def add_image_size_argument(parser: argparse.ArgumentParser, help: str, dest: str = "image_size") -> None:
    """`--image-size S` (the older `--img-size` still read, not shown)."""
    parser.add_argument("--image-size", dest=dest, type=int, metavar="S", help=help)
    parser.add_argument("--img-size", dest=dest, type=int, metavar="S", help=argparse.SUPPRESS)


def add_resize_mode_argument(parser: argparse.ArgumentParser) -> None:
    """`--resize-mode crop|squash|letterbox` (`visionzoo.data.resize`), the same in every command."""
    from visionzoo.data.resize import RESIZE_HELP, RESIZE_MODES

    parser.add_argument("--resize-mode", choices=RESIZE_MODES, help=RESIZE_HELP)


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    """`--device`: one torch device (several processes, where a command has them, take `--devices D1,D2`)."""
    parser.add_argument("--device", default=default, metavar="DEVICE",
                        help="torch device: cpu, cuda, cuda:1, ... (default: "
                             + (f"{default})" if default else "cuda when available, else cpu)"))


def add_progress_argument(parser: argparse.ArgumentParser, draws: bool = True) -> None:
    """`--no-progress`, on every command that can take a while, so a script can pass it to each;
    `draws=False` for one that has no bar to hide (its help says so)."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (default: progress on stderr, none with --json)" if draws
                        else "accepted as by every long command; this one draws no progress bar")


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
