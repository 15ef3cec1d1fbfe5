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
    if args.pretrained:
        return _print_weights(names, args.json, title="pretrained weights")
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
               f"{acc['top5']:.2f}" if acc else "-", str(acc.get("eval_size", "-")), e.label_set or str(e.num_classes)]
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


# --- predict -----------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    from visionzoo.results import expand_image_paths, format_table

    paths = expand_image_paths(args.images)
    if not paths:
        raise UsageError("no images given")
    if args.model.endswith(".onnx"):  # the torch-free path: numpy, Pillow and onnxruntime only
        from visionzoo.onnx_predict import OnnxClassifier

        if args.pretrained:
            raise UsageError(f"--pretrained does not apply to the exported model {args.model}")
        results = OnnxClassifier(args.model).predict_files(paths, topk=args.topk, batch_size=args.batch_size)
    else:
        from visionzoo.predict import load_for_predict, predict_images

        model = load_for_predict(args.model, _pretrained_value(args.pretrained))
        results = predict_images(model, paths, topk=args.topk, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
    failed = [r["path"] for r in results if "error" in r]
    if failed:
        err_console.print(f"[red]error:[/red] {len(failed)} of {len(results)} images could not be read: "
                          f"{', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}", highlight=False, soft_wrap=True)
        return 1
    return 0


# --- export ------------------------------------------------------------------------------


def _model_from_argument(spec: str, pretrained: str | None = None):
    """A registered name (optionally with --pretrained weights) or the path of a saved model."""
    from pathlib import Path

    if Path(spec).exists():
        if pretrained:
            raise UsageError(f"--pretrained does not apply to the saved model {spec}")
        return visionzoo.load_model(spec)
    value = _pretrained_value(pretrained)
    return visionzoo.create_model(spec, pretrained=True if value is None else value)  # default weights unless told


def _pretrained_value(pretrained: str | None):
    """--pretrained as create_model takes it: None when not given (each command's default),
    False for 'none' (random weights), True for 'default', else a weight name, path or hf-hub id."""
    if pretrained is None:
        return None
    if pretrained.lower() in ("none", "false", "random"):
        return False
    return True if pretrained.lower() in ("default", "true", "1") else pretrained


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.export import export_model

    model = _model_from_argument(args.model, args.pretrained)
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    out = Path(args.out) if args.out else Path(Path(args.model).stem if Path(args.model).exists() else args.model + suffix)
    if out.suffix == "":
        out = out.with_suffix(suffix)
    report = export_model(model, out, format=args.format, img_size=args.img_size, dynamic_batch=args.dynamic_batch,
                          opset=args.opset, exporter=args.exporter, fold_bn=args.fold_bn, int8=args.int8,
                          int8_scheme=args.int8_scheme, calib_dir=args.calib,
                          calib_count=args.calib_count, eval_dir=args.eval_data, verify=args.verify)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    console.print(f"exported {report.model} to {report.path} ({args.format})")
    if report.verified is not None:
        console.print(f"verified against eager PyTorch: max |difference| = {report.max_relative_difference:.2e} "
                      "x max |reference| (limit 1e-4)")
    if report.int8_path:
        console.print(f"int8 model: {report.int8_path} ({report.int8_scheme})")
    if report.top1_fp32 is not None:
        line = f"top-1 on {args.eval_data}: fp32 {100 * report.top1_fp32:.2f}%"
        if report.top1_int8 is not None:
            line += f", int8 {100 * report.top1_int8:.2f}% (drop {100 * (report.top1_fp32 - report.top1_int8):.2f} points)"
        console.print(line)
    return 0


# --- embed / probe / zero-shot (foundation features) ------------------------------------


def cmd_embed(args: argparse.Namespace) -> int:
    from visionzoo.embeddings import build_backbone, embed_folder

    spec = {"spec": args.model, "pretrained": _pretrained_value(args.pretrained) or False, "overrides": {}}
    model = build_backbone(spec, allow_random=True)
    if not spec["pretrained"] and not _is_path(args.model):
        err_console.print(f"[yellow]warning:[/yellow] '{args.model}' has random weights (no --pretrained); "
                          "its embeddings only test the mechanics")
    result = embed_folder(model, args.data, args.out, batch_size=args.batch_size, patch_tokens=args.patch_tokens,
                          workers=args.workers, device=args.device, model_spec=spec, progress=not args.json)
    skipped = getattr(result, "skipped", [])
    dim = int(result.embeddings.shape[-1]) if len(result) else 0
    summary = {"out": str(args.out), "images": len(result), "dim": dim, "classes": len(result.classes),
               "skipped": [{"path": p, "reason": r} for p, r in skipped]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    console.print(f"wrote {summary['images']} embeddings of dimension {summary['dim']} "
                  f"({summary['classes']} classes) to {args.out}")
    for path, reason in skipped:
        err_console.print(f"skipped {path}: {reason}", highlight=False)
    return 0


def _is_path(text: str) -> bool:
    from pathlib import Path

    return Path(text).exists()


def cmd_probe(args: argparse.Namespace) -> int:
    from visionzoo.embeddings import load_embeddings
    from visionzoo.probe import run_probe, save_probe_model

    train = load_embeddings(args.features)
    val = load_embeddings(args.val) if args.val else None
    if args.save_model and args.method != "linear":
        raise UsageError("--save-model needs --method linear (a k-NN probe is not a layer)")
    result = run_probe(train, val, args.method, seed=args.seed)
    saved = str(save_probe_model(result, train, args.save_model)) if args.save_model else None
    if args.json:
        print(json.dumps({**result.as_dict(), "saved_model": saved}, indent=2))
        return 0
    chosen = ", ".join(f"{k}={v:g}" for k, v in result.chosen.items())
    console.print(f"{result.method} probe: top-1 {100 * result.top1:.2f}% on {result.num_eval} images "
                  f"({result.evaluated_on}); {chosen} chosen on held-out training embeddings")
    if len(result.classes) <= 20:
        table = Table(title="confusion matrix (rows: true class, columns: predicted)")
        table.add_column("")
        for name in result.classes:
            table.add_column(name[:12], justify="right")
        for name, row in zip(result.classes, result.confusion.tolist()):
            table.add_row(name, *(str(v) for v in row))
        console.print(table)
    else:
        pairs = [(int(result.confusion[i, j]), result.classes[i], result.classes[j])
                 for i in range(len(result.classes)) for j in range(len(result.classes)) if i != j]
        console.print("most confused (true -> predicted): " + ", ".join(
            f"{t} -> {p} ({n})" for n, t, p in sorted(pairs, reverse=True)[:10] if n))
    if saved:
        console.print(f"saved the probe as a model: {saved}")
    return 0


def cmd_zero_shot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.factory import create_clip, zero_shot_classifier
    from visionzoo.predict import classify_images

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(labels) < 2:
        raise UsageError(f"--labels needs at least two comma-separated class names, got {args.labels!r}")
    missing = [image for image in args.images if not Path(image).is_file()]
    if missing:
        raise UsageError(f"no such image file: {missing[0]}")
    pretrained = None if args.pretrained.lower() == "none" else _pretrained_value(args.pretrained)
    if pretrained is None:
        err_console.print("[yellow]warning:[/yellow] --pretrained none: random weights, the answers are meaningless")
    clip = create_clip(args.model, pretrained=pretrained or False)
    classifier = zero_shot_classifier(clip, labels, templates=args.template or None)
    results = classify_images(classifier, args.images, top_k=min(args.top_k, len(labels)))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    table = Table(title=f"zero-shot with {args.model}")
    table.add_column("image")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for row in results:
        best = row["top"][0]
        others = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in row["top"][1:])
        shown = f"{100 * best['probability']:.1f}%" + (f" ({others})" if others else "")
        table.add_row(row["image"], best["label"], shown)
    console.print(table)
    return 0


# --- benchmark / advise / evolution ------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,8,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return values


def cmd_benchmark(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from visionzoo.benchmark import BenchmarkSettings, benchmark_model, environment

    names = [visionzoo.model_info(name)["name"] for name in args.models]  # unknown names fail before any timing
    settings = BenchmarkSettings(device=args.device, batch_sizes=args.batch_sizes, img_size=args.img_size,
                                 precision=args.precision, backend=args.backend, train=args.train,
                                 threads=args.threads, vs_timm=args.vs_timm)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(names))
        for name in names:
            progress.update(task, description=f"benchmarking {name}")
            results.append(benchmark_model(name, settings, use_cache=not args.no_cache))
            progress.advance(task)
    env = environment(settings)
    rows = [r.as_dict() for r in results]
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"environment": env, "settings": asdict(settings), "results": rows}, indent=2))
        return 0
    if args.csv:
        _write_benchmark_csv(args.csv, rows, settings.batch_sizes)
    console.print(" ".join(f"{k}={v}" for k, v in env.items()), highlight=False)
    console.print(f"settings: batch sizes {list(settings.batch_sizes)}, {settings.precision}, {settings.backend}"
                  + (", train" if settings.train else ""), highlight=False)
    table = Table()
    for column in ["model", "params (M)", "GMACs", "size", "p50 ms", "p90 ms", "p99 ms",
                   *[f"img/s @{b}" for b in settings.batch_sizes], "peak MB"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    if settings.train:
        table.add_column("train img/s", justify="right")
    if settings.vs_timm:
        table.add_column("ours/timm time", justify="right")
    for r in results:
        lat = r.latency_ms or {}
        row = [r.name + (" (cached)" if r.cached else ""), f"{r.params / 1e6:.1f}", f"{r.gmacs:.2f}", str(r.img_size),
               *(f"{lat[k]:.2f}" if k in lat else "-" for k in ("p50", "p90", "p99")),
               *(f"{r.throughput[b]:.1f}" for b in settings.batch_sizes),
               f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "-"]
        if settings.train:
            row.append(f"{r.train_throughput:.1f}" if r.train_throughput else "-")
        if settings.vs_timm:
            ratios = r.timm["ratio_ours_over_timm"]
            row.append(" ".join(f"{k.replace('time_', '')}={v:.2f}" for k, v in ratios.items() if k != "latency_p50"))
        table.add_row(*row)
    console.print(table)
    return 0


def _write_benchmark_csv(path: str, rows: list[dict], batch_sizes: tuple[int, ...]) -> None:
    import csv

    columns = ["name", "params", "gmacs", "img_size", "p50_ms", "p90_ms", "p99_ms",
               *[f"throughput_b{b}" for b in batch_sizes], "peak_memory_mb", "train_throughput", "ratio_ours_over_timm"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            lat = r["latency_ms"] or {}
            writer.writerow([r["name"], r["params"], r["gmacs"], r["img_size"], lat.get("p50"), lat.get("p90"),
                             lat.get("p99"), *[r["throughput"].get(str(b)) for b in batch_sizes],
                             r["peak_memory_mb"], r["train_throughput"],
                             json.dumps(r["timm"]["ratio_ours_over_timm"]) if r.get("timm") else ""])


def cmd_advise(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from visionzoo.advise import advise, plot_advice

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("measuring candidates", total=None)
        advice = advise(args.target, latency_ms=args.latency_ms, max_params_m=args.max_params,
                        max_memory_mb=args.max_memory_mb, images_per_class=args.images_per_class,
                        min_top1=args.min_top1, measure=args.measure, top=args.top,
                        progress=lambda name: progress.update(task, description=f"measuring {name}"))
    if args.plot:
        plot_advice(advice, args.plot)
    if args.json:
        print(json.dumps(advice.as_dict(), indent=2))
        return 0 if advice.picks else 1
    console.print(f"target: {advice.target}; constraints: {advice.constraints or 'none'}", highlight=False)
    console.print(f"latency: {advice.method}", highlight=False)
    if not advice.picks:
        err_console.print(advice.message, highlight=False)
        return 1
    for i, pick in enumerate(advice.picks, 1):
        console.print(f"[bold]{i}. {pick['name']}[/bold] ({pick['weights']})", highlight=False)
        console.print(f"   why: {pick['why']}", highlight=False)
        console.print(f"   run: {pick['command']}", highlight=False)
    console.print(f"adaptation: {advice.picks[0]['recipe_why']}", highlight=False)
    if args.plot:
        console.print(f"plot written to {args.plot}")
    return 0


def cmd_evolution(args: argparse.Namespace) -> int:
    from visionzoo.advise import candidates, plot_evolution

    if args.plot:
        plot_evolution(args.plot)
        console.print(f"plot written to {args.plot}")
        return 0
    table = Table(title="ImageNet top-1 by year")
    for column in ["year", "model", "family", "top-1", "GMACs", "params (M)"]:
        table.add_column(column)
    for c in sorted(candidates(), key=lambda c: (c.year, c.top1)):
        table.add_row(str(c.year), c.name, c.family, f"{c.top1:.1f}", f"{c.gmacs:.2f}", f"{c.params / 1e6:.1f}")
    console.print(table)
    return 0


# --- serve -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from visionzoo.serve import ServeSettings, create_app, load_classifier

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"warning: serving on {args.host}, reachable from other machines", highlight=False)
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_upload_mb=args.max_upload_mb, queue=args.queue)
    classifier = load_classifier(args.model, _pretrained_value(args.pretrained), threads=args.threads)
    console.print(f"serving {classifier.name} on http://{args.host}:{args.port}/ (API: /v1/classify, /v1/model)")
    uvicorn.run(create_app(classifier, settings), host=args.host, port=args.port, log_level="warning")
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
    p.add_argument("--pretrained", action="store_true", help="list the published weights instead (default marked)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("info", help="show a model's card", description="Show a model's card.")
    p.add_argument("model", help="registered model name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = commands.add_parser("predict", help="classify images with a pretrained or saved model",
                            description="Print each image's top-k classes with probabilities.")
    p.add_argument("model", metavar="MODEL", help="registered model name, saved model folder, or exported .onnx file")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders or globs")
    p.add_argument("--pretrained", metavar="W",
                   help="weights for a registered model: ARCH.TAG, a file, hf-hub:org/repo (default: its default tag)")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes to show per image (default: 5)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default: 16)")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"path", "predictions"} / {"path", "error"}')
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("export", help="export a model to ONNX or TorchScript, verified",
                            description="Export a model to ONNX or TorchScript and verify it computes the same function.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT", help="registered model name or saved model path")
    p.add_argument("--pretrained", metavar="W", help="weights for a registered model: 'default' or ARCH.TAG or a path")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", metavar="FILE", help="output file (default: MODEL.onnx or MODEL.pt)")
    p.add_argument("--img-size", type=int, metavar="S", help="input size (default: the model's)")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic batch dimension (default: on)")
    p.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset (default: 18)")
    p.add_argument("--exporter", choices=["auto", "torchscript", "dynamo"], default="auto",
                   help="PyTorch's ONNX exporter: auto tries the fast tracing one, then torch.export's (default)")
    p.add_argument("--fold-bn", action="store_true", help="fold batch norms into the preceding conv/linear layers")
    p.add_argument("--int8", action="store_true", help="also write an int8 model (post-training quantisation)")
    p.add_argument("--int8-scheme", choices=["auto", "static", "dynamic"], default="auto",
                   help="static: calibrated activations (CNNs); dynamic: int8 matrix products, activations "
                        "quantised at run time (transformers); auto picks by where the multiply-adds are (default)")
    p.add_argument("--calib", metavar="DIR", help="folder of calibration images for static --int8 (also used to verify)")
    p.add_argument("--calib-count", type=int, default=64, metavar="N", help="calibration images to use (default: 64)")
    p.add_argument("--eval-data", metavar="DIR", help="class-per-folder images: report top-1 of fp32 (and int8)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the export with eager PyTorch (default: on)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("embed", help="cache a model's embeddings of a folder of images",
                            description="Embed every image of a class-per-folder tree (pooled features, optionally "
                                        "patch tokens) into one safetensors file with paths and labels. Resumable: "
                                        "a rerun skips images already done.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT", help="registered model name or saved model folder")
    p.add_argument("--data", required=True, metavar="DIR", help="class-per-folder images: DIR/CLASS/IMAGE")
    p.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file")
    p.add_argument("--pretrained", metavar="W", help="weights for a registered model: 'default' or ARCH.TAG or a path")
    p.add_argument("--patch-tokens", action="store_true", help="also store the patch tokens (N, L, D)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="image decoding processes (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_embed)

    p = commands.add_parser("probe", help="k-NN or linear probe on cached embeddings",
                            description="Fit a k-NN (cosine) or linear (logistic regression) probe on embeddings from "
                                        "`visionzoo embed`; k or the L2 strength is chosen on held-out training "
                                        "embeddings. Reports top-1 and a confusion matrix.")
    p.add_argument("--features", required=True, metavar="FILE", help="training embeddings (.safetensors)")
    p.add_argument("--val", metavar="FILE", help="validation embeddings (default: hold out 20%% of --features)")
    p.add_argument("--method", choices=["knn", "linear"], default="knn")
    p.add_argument("--save-model", metavar="DIR", help="save the linear probe as a model folder (backbone + head)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out splits")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_probe)

    p = commands.add_parser("zero-shot", help="classify images by label names with CLIP",
                            description="Zero-shot classification: CLIP compares each image with prompts made from "
                                        "the labels (averaged over the 80 ImageNet templates unless --template).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", required=True, help="comma-separated class names, e.g. 'cat,dog,car'")
    p.add_argument("--model", default="ViT-B-32", help="CLIP model: ViT-B-32, ViT-B-16, ViT-L-14 (or -quickgelu)")
    p.add_argument("--pretrained", default="default", metavar="W",
                   help="CLIP weights: 'default', a tag or a path; 'none' for random weights (testing only)")
    p.add_argument("--template", action="append", metavar="T", help="prompt template with {} for the label; repeatable")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="labels to show per image (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_zero_shot)

    p = commands.add_parser("benchmark", help="measure models on this machine",
                            description="Latency, throughput, peak memory (and training speed) measured here.")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-sizes", type=_int_list, default=(1, 8), metavar="1,8,64")
    p.add_argument("--img-size", type=int, metavar="S")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--backend", choices=["eager", "compile"], default="eager")
    p.add_argument("--train", action="store_true", help="also measure training-step throughput")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's default)")
    p.add_argument("--vs-timm", action="store_true", help="measure timm's model of the same name, interleaved")
    p.add_argument("--no-cache", action="store_true", help="measure again even if cached")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--csv", metavar="FILE", help="also write the results as CSV")
    p.set_defaults(func=cmd_benchmark)

    p = commands.add_parser("advise", help="recommend architectures for a deployment and data budget",
                            description="A ranked shortlist of architectures that meet every constraint, "
                                        "with the training command to run.")
    p.add_argument("--target", choices=["edge", "cpu", "gpu"], default="cpu")
    p.add_argument("--latency-ms", type=float, metavar="X")
    p.add_argument("--max-params", type=float, metavar="M", help="millions of parameters")
    p.add_argument("--max-memory-mb", type=float, metavar="M")
    p.add_argument("--images-per-class", type=int, metavar="N")
    p.add_argument("--min-top1", type=float, metavar="A", help="published ImageNet top-1, percent")
    p.add_argument("--measure", action=argparse.BooleanOptionalAction, default=True,
                   help="measure latency here (default) or estimate it from GMACs")
    p.add_argument("--top", type=int, default=5, metavar="K")
    p.add_argument("--plot", metavar="FILE", help="write a PNG: top-1 against latency, Pareto frontier, picks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_advise)

    p = commands.add_parser("evolution", help="the field's progress: top-1 against GMACs by year",
                            description="ImageNet top-1 against GMACs for the catalogued weights, by year.")
    p.add_argument("--plot", metavar="FILE", help="write the figure as PNG")
    p.set_defaults(func=cmd_evolution)

    from visionzoo.training.command import add_commands as add_train_commands

    add_train_commands(commands)  # train, eval

    p = commands.add_parser("serve", help="an HTTP API and a web page for a model",
                            description="Serve a model over HTTP with dynamic batching, and a page to try it.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT", help="registered name, saved model, or .onnx file")
    p.add_argument("--pretrained", metavar="W", help="weights for a registered model: 'default' or ARCH.TAG or a path")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="largest batch the model runs (default: 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch (default: 5)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default: 10)")
    p.add_argument("--queue", type=int, default=256, help="requests waiting before 503 (default: 256)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for the model")
    p.set_defaults(func=cmd_serve)

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
