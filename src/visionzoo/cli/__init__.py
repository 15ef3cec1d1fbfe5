"""The `visionzoo` command: assembles the commands, each defined beside its handler.

    catalog.py   list, info               predict.py   predict
    export.py    export                   features.py  embed, probe, zero-shot
    choose.py    benchmark, advise, evolution   share.py   push, runs
    serve.py     serve                    visionzoo.training.command: train, eval
    data.py      data pack
    audit.py     audit, explain           tuning.py    lr-find, tune, soup

Each command module has `add_parsers(subparsers)`, and handlers `cmd_*(args) -> exit code`
that parse arguments and call library functions, nothing more. The arguments that mean the same
thing are made by the same helper in `cli.common` (the model, first or as `--model`; `--pretrained`
and its one default rule; `--image-size`, `--device`, `--no-progress`). Model arguments go through
`visionzoo.resolve` (one `--pretrained` syntax, one resolver). Errors a user can fix
(`visionzoo.errors.UsageError` and a missing or unreadable path) are one line on stderr with
exit code 2; anything else is a bug and prints its traceback and how to report it. Output piped
into a reader that leaves early (`| head`) ends quietly. Nothing here imports PyTorch until a
command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from rich.markup import escape

import visionzoo
from visionzoo.cli import audit, catalog, choose, common, export, features, predict, serve, tuning
from visionzoo.cli import data as data_commands
from visionzoo.cli import share as share_commands
from visionzoo.cli.common import err_console, settle_model_argument
from visionzoo.errors import UsageError
from visionzoo.runtime import tune_allocator

__all__ = ["build_parser", "main", "USER_ERRORS"]

# What a user can fix, printed as one line: the project's usage errors, and the OS's word on a
# path the user gave (missing, a folder where a file was meant, no permission).
USER_ERRORS = (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
REPORT_LINE = ("this is a bug in visionzoo; please report it with the command you ran and the traceback above "
               "at the project's issue tracker")


def build_parser() -> argparse.ArgumentParser:
    from visionzoo.training import command as training_command

    parser = argparse.ArgumentParser(
        prog="visionzoo",
        description="Image classification architectures: list, inspect, train, evaluate, deploy.",
    )
    parser.add_argument("--version", action="version", version=f"visionzoo {visionzoo.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    catalog.add_parsers(commands)
    predict.add_parsers(commands)
    export.add_parsers(commands)
    features.add_parsers(commands)
    choose.add_parsers(commands)
    training_command.add_commands(commands, common)  # train, eval
    serve.add_parsers(commands)
    audit.add_parsers(commands)  # audit, explain
    data_commands.add_parsers(commands)  # data pack
    tuning.add_parsers(commands)  # lr-find, tune, soup
    share_commands.add_parsers(commands)  # push, runs
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    tune_allocator()
    # torch.utils.cpp_extension warns "No CUDA runtime is found, using CUDA_HOME=..." when a CUDA
    # build of torch runs on a machine without a GPU: nothing a user of a command can act on
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        if hasattr(args, "model_option"):
            # audit has a default backbone; train needs none with --resume (it says so itself)
            settle_model_argument(args, required=args.command not in ("audit", "train"))
        code = func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
        return code
    except BrokenPipeError:
        # `visionzoo ... --json | head`: the reader left, which is not an error. Python would print
        # another BrokenPipeError while flushing stdout at exit; point stdout at nothing instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except USER_ERRORS as error:
        err_console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print(f"visionzoo {visionzoo.__version__}: {REPORT_LINE}", file=sys.stderr)
        return 1
