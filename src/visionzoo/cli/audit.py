"""`visionzoo audit` and `visionzoo explain`: see the data and the model."""

from __future__ import annotations

import argparse
import json

from visionzoo.cli.common import (
    add_device_argument,
    add_image_size_argument,
    add_model_argument,
    add_pretrained_argument,
    add_progress_argument,
    console,
    err_console,
    shown_markup,
    warn,
)
from visionzoo.measure import counted

__all__ = ["add_parsers", "cmd_audit", "cmd_explain"]


def cmd_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.diagnose.data_audit import audit
    from visionzoo.resolve import parse_pretrained

    pretrained = parse_pretrained(args.pretrained)
    if pretrained is False and not (args.model and Path(args.model).exists()):
        warn("random weights (--pretrained none): label issues and outliers only test the mechanics; "
             "duplicates still hold")
    report = audit(args.data, model=args.model, pretrained=pretrained, out=args.out, image_size=args.image_size,
                   batch_size=args.batch_size, workers=args.workers, device=args.device,
                   progress=not (args.json or not args.progress), folds=args.folds,
                   max_unpack_gb=args.max_unpack_gb)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    summary = report["summary"]
    console.print(f"audited {counted(summary['images'], 'image')} ({', '.join(summary['splits'])}; "
                  f"{counted(summary['classes'], 'class', 'classes')}) "
                  f"with {summary['model']} at {summary['image_size']}px", highlight=False)
    for finding in ("leaks", "label_issues", "duplicates", "outliers", "bad_files"):
        console.print(f"  {finding.replace('_', ' ')}: {len(report[finding])}", highlight=False)
    for entry in report["leaks"][:5]:
        console.print(f"  leak: {shown_markup(entry['path'])} ({entry['split']}) = {shown_markup(entry['duplicate_of'])} "
                      f"({entry['duplicate_split']}), similarity {entry['similarity']:.3f}", highlight=False)
    console.print(f"report: {Path(args.out) / 'audit.html'}; train without the label issues: "
                  f"visionzoo train ... --exclude {Path(args.out) / 'label_issues.csv'}", highlight=False)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from visionzoo.diagnose.explanation import explain

    results = explain(args.model, args.images, method=args.method, target_class=args.target_class, out=args.out,
                      pretrained=args.pretrained)
    records = [{k: v for k, v in r.items() if k != "cam"} for r in results]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            if "error" in r:
                err_console.print(f"[red]error:[/red] {shown_markup(r['path'])}: {shown_markup(r['error'])}", highlight=False)
            else:
                console.print(f"{shown_markup(r['path'])}: {shown_markup(r['label'])} ({r['probability']:.1%}) -> "
                              f"{shown_markup(r['png'])}", highlight=False)
    return 1 if any("error" in r for r in records) else 0


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "audit", help="find label errors, duplicates, train/val leaks, outliers and bad files in a dataset",
        description="Audit a dataset: embeddings (cached), out-of-sample label checks with cleanlab, exact and near "
                    "duplicates within and across splits (leaks first), outliers, class counts and undecodable "
                    "files. Writes OUT/audit.html, OUT/audit.json and a CSV per finding.")
    p.add_argument("--data", required=True, metavar="DIR_OR_CSV",
                   help="class-per-folder tree (optionally with train/ val/ test/), CSV of path,label[,split], or archive")
    add_model_argument(p, "backbone: registered name or saved model folder (default: resnet18)", metavar="M")
    add_pretrained_argument(p)
    p.add_argument("--out", default="audit", metavar="DIR", help="report folder (default: audit)")
    add_image_size_argument(p, "embedding input size (default: the model's; random weights: at most the images' "
                               "median side)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="folds of the linear probes (default: 5)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="image decoding processes (default: 0)")
    add_device_argument(p)
    add_progress_argument(p)
    p.add_argument("--max-unpack-gb", type=float, metavar="GB",
                   help="let an archive unpack to this many GB (default: at most 100x its size, at least 1 GB, "
                        "at most 50 GB)")
    p.add_argument("--json", action="store_true", help="print the report (the audit.json object)")
    p.set_defaults(func=cmd_audit)

    p = commands.add_parser(
        "explain", help="class activation maps: where the model looks",
        description="Grad-CAM, Grad-CAM++ or Eigen-CAM overlays (pytorch-grad-cam) with the layer chosen per family. "
                    "Writes OUT/IMAGE.METHOD.png: image, heat map, overlay, class and probability.")
    add_model_argument(p, "registered name, saved model folder, or run folder", metavar="MODEL_OR_RUN")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders or globs")
    p.add_argument("--method", choices=["gradcam", "gradcam++", "eigencam"], default="gradcam")
    p.add_argument("--target-class", metavar="C", help="explain this class (index or name; default: the predicted one)")
    add_pretrained_argument(p)
    p.add_argument("--out", default="explained", metavar="DIR", help="folder for the PNGs (default: explained)")
    p.add_argument("--json", action="store_true", help="print a JSON list of results")
    p.set_defaults(func=cmd_explain)
