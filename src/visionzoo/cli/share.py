"""`visionzoo push` (a run to the Hugging Face Hub, with its model card) and `visionzoo runs` (runs
side by side)."""

from __future__ import annotations

import argparse
import json

from visionzoo.cli.common import console, shown

__all__ = ["add_parsers", "cmd_push", "cmd_runs"]


def cmd_push(args: argparse.Namespace) -> int:
    from visionzoo.share.hub import push

    result = push(args.run_dir, args.repo, private=args.private, token=args.token, to_folder=args.to_folder,
                  export=args.export or (), license=args.license, dataset=args.dataset)
    if args.json:
        print(json.dumps({"repo": result.repo, "url": result.url,
                          "folder": str(result.folder) if result.folder else None, "files": result.files}))
    elif result.folder is not None:
        console.print(shown(f"wrote {len(result.files)} files for {result.repo} to {result.folder} (nothing uploaded); "
                            f"load it with visionzoo.load_model({str(result.folder)!r})"))
    else:
        console.print(shown(f"pushed {len(result.files)} files to {result.url}; load it with "
                            f"visionzoo.load_model('hf-hub:{result.repo}')"))
    return 0


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def cmd_runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.share.comparison import plot_runs, runs, runs_csv

    rows = runs(args.folders, sort=args.sort)
    if args.plot:
        out = args.plot_out or f"runs-{args.plot}-vs-{args.against}.png"
        plot_runs(rows, args.plot, against=args.against, path=out)
        if not (args.json or args.csv):
            console.print(shown(f"wrote {out}"))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.csv:
        print(runs_csv(rows), end="")
        return 0
    from rich.table import Table

    table = Table(title=f"{len(rows)} runs, best first by {args.sort or 'top-1'}")
    columns = [c for c in rows[0] if any(row.get(c) not in (None, "") for row in rows)]
    for column in columns:
        table.add_column(column.removeprefix("setting."), justify="right" if column not in (
            "run", "model", "weights", "data", "task", "status") else "left")
    for row in rows:
        table.add_row(*(shown(Path(row["run"]).name if c == "run" else _cell(row.get(c))) for c in columns))
    console.print(table)
    return 0


def add_parsers(commands) -> None:
    from visionzoo.share.comparison import AGAINST

    p = commands.add_parser("push", help="upload a run's best model to the Hugging Face Hub, with a model card",
                            description="Upload RUN_DIR's best/ (weights, config.json with classes, preprocessing "
                            "and calibration), a generated model card, the plots and optionally exported files.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (visionzoo train --out)")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the Hub model repository (created when new)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token", help="a Hub token with write access (default: hf auth login's, or HF_TOKEN)")
    p.add_argument("--to-folder", metavar="DIR",
                   help="write exactly what would be uploaded into DIR instead (visionzoo.load_model reads it)")
    p.add_argument("--export", action="append", metavar="FORMAT",
                   help="also upload the model exported to FORMAT (onnx, openvino, torchscript) with its "
                        "verify.json; repeatable")
    p.add_argument("--license", help="the card's licence (default: the base weights'; one allowing commercial use "
                   "is refused over non-commercial weights)")
    p.add_argument("--dataset", metavar="OWNER/NAME",
                   help="the Hub dataset the run trained on, for the card (default: the run's hf:// data, if any)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_push)

    p = commands.add_parser("runs", help="compare training runs: one table, sortable, as JSON, CSV or a plot",
                            description="One row per run folder under the given folders: model, weights, data, "
                            "the settings that differ, best validation metrics, time, peak memory.")
    p.add_argument("folders", nargs="+", metavar="DIR", help="run folders, or folders holding them")
    p.add_argument("--sort", metavar="COLUMN",
                   help="best first by this column (top1, map, ece, time_s, params, setting.lr, ...; default: top1)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    output.add_argument("--csv", action="store_true", help="print the rows as CSV")
    p.add_argument("--plot", metavar="METRIC", help="also plot METRIC (top1, map, ece, ...) to a PNG")
    p.add_argument("--against", choices=list(AGAINST), default="time", help="the plot's x axis (default: time)")
    p.add_argument("--plot-out", metavar="FILE.png", help="where --plot writes (default: runs-METRIC-vs-AGAINST.png)")
    p.set_defaults(func=cmd_runs)
