"""`visionzoo benchmark`, `advise` and `evolution`: measuring models here and choosing among them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

import visionzoo
from visionzoo.cli.common import (
    add_device_argument,
    add_image_size_argument,
    add_progress_argument,
    console,
    err_console,
    print_engine_choice,
)
from visionzoo.errors import UsageError
from visionzoo.measure import counted

__all__ = ["add_parsers", "cmd_benchmark", "cmd_advise", "cmd_evolution"]


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

    from visionzoo.choose.benchmark import BenchmarkSettings, benchmark_model, environment

    models = args.models + (args.model_options or [])  # `benchmark A B` or `benchmark --model A --model B`
    if not models:
        raise UsageError("benchmark needs at least one model name, e.g. visionzoo benchmark resnet50")
    names = [visionzoo.model_info(name)["name"] for name in models]  # unknown names fail before any timing
    if args.engine:
        return _benchmark_engines(args, names)
    settings = BenchmarkSettings(device=args.device, batch_sizes=args.batch_sizes, img_size=args.img_size,
                                 precision=args.precision, backend=args.backend, train=args.train,
                                 threads=args.threads, vs_timm=args.vs_timm)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    with Progress(console=err_console, transient=True, disable=not args.progress) as progress:
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
    fused = any(r.reparameterized for r in results)
    if fused:  # RepViT, MobileOne, FastViT: also with their training branches fused, as deployed
        table.add_column("fused p50 ms", justify="right")
    for r in results:
        lat = r.latency_ms or {}
        row = [r.name + (f" ({r.cache_note})" if r.cache_note else ""), f"{r.params / 1e6:.1f}", f"{r.gmacs:.2f}",
               str(r.img_size),
               *(f"{lat[k]:.2f}" if k in lat else "-" for k in ("p50", "p90", "p99")),
               *(f"{r.throughput[b]:.1f}" for b in settings.batch_sizes),
               f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "-"]
        if settings.train:
            row.append(f"{r.train_throughput:.1f}" if r.train_throughput else "-")
        if settings.vs_timm:
            ratios = r.timm["ratio_ours_over_timm"]
            row.append(" ".join(f"{k.replace('time_', '')}={v:.2f}" for k, v in ratios.items() if k != "latency_p50"))
        if fused:
            p50 = (r.reparameterized or {}).get("latency_ms", {}).get("p50")
            row.append("-" if p50 is None else f"{p50:.2f} ({p50 / r.latency_ms['p50']:.2f}x)"
                       if r.latency_ms.get("p50") else f"{p50:.2f}")
        table.add_row(*row)
    console.print(table)
    return 0


def _benchmark_engines(args: argparse.Namespace, names: list[str]) -> int:
    """`benchmark --engine NAME[,NAME]|all|auto`: latency percentiles and throughput per engine."""
    from visionzoo.choose.benchmark import BenchmarkSettings, environment
    from visionzoo.deploy.engines import benchmark_engines

    if args.device != "cpu" or args.precision != "fp32" or args.backend != "eager" or args.train or args.vs_timm:
        raise UsageError("--engine measures CPU inference engines; drop --device, --precision, --backend, --train "
                         "and --vs-timm (each engine has its own precision)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = [benchmark_engines(name, args.engine, batch_sizes=args.batch_sizes, img_size=args.img_size,
                                 threads=args.threads, use_cache=not args.no_cache, eval_dir=args.eval_data)
               for name in names]
    env = environment(BenchmarkSettings(threads=args.threads))
    if args.json:
        print(json.dumps({"environment": env, "results": results}, indent=2))
        return 0
    console.print(" ".join(f"{k}={v}" for k, v in env.items()), highlight=False)
    table = Table(title="inference engines (latency at batch 1; throughput at each batch size)")
    for column in ["model", "engine", "precision", "p50 ms", "p90 ms", "p99 ms",
                   *[f"img/s @{b}" for b in args.batch_sizes]]:
        table.add_column(column, justify="left" if column in ("model", "engine", "precision") else "right")
    for result in results:
        for row in result["engines"]:
            lat = row["latency_ms"]
            table.add_row(result["model"], row["engine"] + (" *" if row["engine"] == result.get("chosen") else "")
                          + (f" ({row['cache_note']})" if row.get("cache_note") else ""), row["precision"],
                          *(f"{lat[k]:.2f}" if k in lat else "-" for k in ("p50", "p90", "p99")),
                          *(f"{row['throughput'][str(b)]:.1f}" for b in args.batch_sizes))
        for row in result.get("unfused_engines", []):  # a re-parameterisable model's training branches kept
            lat = row["latency_ms"]
            table.add_row(result["model"], f"{row['engine']} (unfused; fused is {row['fused_over_unfused']:.2f}x)",
                          row["precision"], *(f"{lat[k]:.2f}" if k in lat else "-" for k in ("p50", "p90", "p99")),
                          *(f"{row['throughput'][str(b)]:.1f}" for b in args.batch_sizes))
    console.print(table)
    for result in results:
        for name, reason in result["skipped"].items():
            console.print(f"{result['model']}: skipped {name}: {reason}", highlight=False)
        if result.get("choice"):
            print_engine_choice(result["choice"])
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


def _name_equals_file(text: str) -> tuple[str, str]:
    name, sep, file = text.partition("=")
    if not sep or not name.strip() or not file.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FILE (e.g. efficientnet_lite0=lite0.pth), got {text!r}")
    return name.strip(), file.strip()


def _count_or_names(text: str) -> int | list[str]:
    """--candidates N, or --candidates NAME,NAME (models from the zoo)."""
    if text.strip().isdigit():
        return int(text)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a number or model names like resnet18,convnext_atto, got {text!r}")
    return names


def cmd_bakeoff(args: argparse.Namespace) -> int:
    from visionzoo.choose.bakeoff import bakeoff

    result = bakeoff(args.data, target=args.target, latency_ms=args.latency_ms, max_params_m=args.max_params,
                     commercial=args.commercial, weights=dict(args.weights) if args.weights else None,
                     candidates=args.candidates, finetune_top=args.finetune_top, budget_min=args.budget_min,
                     finalists=args.finalists, rank_by=args.rank_by,
                     out=args.out, plot=args.plot, devices=args.devices.split(",") if args.devices else None,
                     image_size=args.image_size, progress=args.progress and not args.json,
                     finetune_settings={"epochs": args.finetune_epochs} if args.finetune_epochs else None)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        if result.message:
            err_console.print(result.message, highlight=False, markup=False)
        return 0 if result.winner else 1
    console.print(f"target: {result.target}; constraints: {result.constraints or 'none'}; data: "
                  f"{result.data['train']} train, {result.data['val']} val, {counted(len(result.data['classes']), 'class', 'classes')}",
                  highlight=False)
    table = Table(title="top-1 on your validation images; latency measured here")
    for column in ["model", "weights", "LogME", "probe", "fine-tuned", "ms", "engine", "params M", "MB", "status"]:
        table.add_column(column, justify="left" if column in ("model", "weights", "engine", "status") else "right")
    for c in result.candidates:
        logme = c.scores.get("logme")
        table.add_row(c.name, Path(c.weights).name, f"{logme:.3f}" if logme is not None else "-",
                      _percent(c.probe_top1), _percent(c.finetune_top1),
                      f"{c.latency_ms:.2f}" if c.latency_ms is not None else "-", c.engine or "-",
                      f"{c.params / 1e6:.2f}", f"{c.size_mb:.1f}" if c.size_mb is not None else "-",
                      c.status.split(":")[0].split(" (")[0])
    console.print(table)
    cached = [f"{c.name} ({c.latency_note})" for c in result.candidates if c.latency_note]
    if cached:
        console.print(f"latency reused from this machine's cache: {', '.join(cached)}", highlight=False, markup=False)
    for c in result.candidates:
        if c.status not in ("probed", "fine-tuned") and not c.status.startswith("winner"):
            console.print(f"{c.name}: {c.status}", highlight=False, markup=False)
    if not result.winner:
        err_console.print(result.message, highlight=False, markup=False)
        return 1
    w = result.winner  # its top-1 and status are the table's (`bakeoff.result.scored_by`)
    console.print(f"[bold]winner: {w['name']}[/bold] {w['status'].removeprefix('winner ')} top-1 "
                  f"{_percent(w['top1'])}, {w['latency_ms']:.2f} ms in {w['engine']}; "
                  + (f"run {w['run_dir']}; " if w["run_dir"] else "") + f"export {w['export']}",
                  highlight=False)
    if w.get("decision"):
        console.print(w["decision"], highlight=False, markup=False)
    for what, command in result.commands.items():
        console.print(f"{what}: {command}", highlight=False, markup=False)
    console.print(f"plot written to {result.plot}; state and table in {result.out}", highlight=False)
    return 0


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


def cmd_advise(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    if args.data:
        return cmd_bakeoff(args)

    from visionzoo.choose.advice import advise, plot_advice

    with Progress(console=err_console, transient=True, disable=not args.progress) as progress:
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
    from visionzoo.choose.advice import plot_evolution
    from visionzoo.choose.candidates import candidate_pool

    if args.plot:
        plot_evolution(args.plot)
        console.print(f"plot written to {args.plot}")
        return 0
    table = Table(title="ImageNet top-1 by year")
    for column in ["year", "model", "family", "top-1", "GMACs", "params (M)"]:
        table.add_column(column)
    for c in sorted(candidate_pool()[0], key=lambda c: (c.year, c.top1)):
        table.add_row(str(c.year), c.name, c.family, f"{c.top1:.1f}", f"{c.gmacs:.2f}", f"{c.params / 1e6:.1f}")
    console.print(table)
    return 0


def add_parsers(commands) -> None:
    p = commands.add_parser("benchmark", help="measure models on this machine",
                            description="Latency, throughput, peak memory (and training speed) measured here.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="registered model names (or --model M, repeatable)")
    p.add_argument("--model", dest="model_options", action="append", metavar="M", help=argparse.SUPPRESS)
    add_device_argument(p)
    p.add_argument("--batch-sizes", type=_int_list, default=(1, 8), metavar="1,8,64")
    add_image_size_argument(p, "input size (default: the model's)", dest="img_size")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--backend", choices=["eager", "compile"], default="eager")
    p.add_argument("--train", action="store_true", help="also measure training-step throughput")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's default)")
    p.add_argument("--vs-timm", action="store_true", help="measure timm's model of the same name, interleaved")
    p.add_argument("--engine", metavar="NAME|all|auto",
                   help="measure inference engines instead: eager, compile, onnxruntime-fp32, onnxruntime-int8, "
                        "openvino-fp32, openvino-bf16, openvino-int8, litert-fp32, litert-int8, executorch-fp32, "
                        "executorch-int8 (comma-separated), all, or auto (also pick "
                        "the fastest within the accuracy rule)")
    p.add_argument("--eval-data", metavar="DIR", help="labelled images for --engine auto's accuracy rule")
    p.add_argument("--no-cache", action="store_true", help="measure again even if cached")
    add_progress_argument(p)
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
    bake = p.add_argument_group("the bake-off on your images (with --data)")
    bake.add_argument("--data", metavar="DIR_OR_CSV", help="your images: choose by measuring on them")
    bake.add_argument("--commercial", action="store_true", help="only weights whose licence allows commercial use")
    bake.add_argument("--weights", type=_name_equals_file, action="append", metavar="NAME=FILE",
                      help="restrict the candidates to these models with these local weight files (repeatable); "
                           "without it, candidates whose weights are neither cached nor downloadable are skipped")
    bake.add_argument("--candidates", type=_count_or_names, default=8, metavar="N|NAME,NAME",
                      help="at most N candidates from the zoo (default 8), or these models; one without "
                           "pretrained weights is refused (give --weights NAME=FILE)")
    bake.add_argument("--finetune-top", type=int, default=2, metavar="K",
                      help="fine-tune at most K finalists: the best by --rank-by, and the next only while within "
                           "its noise (default 2)")
    bake.add_argument("--finalists", choices=["adaptive", "top"], default="adaptive",
                      help="adaptive (default): as many finalists as the score gaps need; top: the K best")
    bake.add_argument("--rank-by", choices=["logme", "knn_loo", "linear"], default="logme",
                      help="the score that ranks the candidates before any fine-tune (default: logme)")
    bake.add_argument("--budget-min", type=float, metavar="M", help="minutes for the whole bake-off: no stage starts new work past them, "
                                                             "and the fine-tunes get what is left (default: no limit)")
    bake.add_argument("--finetune-epochs", type=int, metavar="E", help="epochs per fine-tune (default: the recipe's)")
    bake.add_argument("--image-size", type=int, metavar="S", help="train, embed and measure at this side")
    bake.add_argument("--out", metavar="DIR", help="bake-off folder; rerun with the same one to resume")
    bake.add_argument("--devices", metavar="D1,D2", help="fine-tune in parallel, one process per device")
    p.add_argument("--plot", metavar="FILE", help="write a PNG: top-1 against latency, Pareto frontier, picks")
    add_progress_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_advise)

    p = commands.add_parser("evolution", help="the field's progress: top-1 against GMACs by year",
                            description="ImageNet top-1 against GMACs for the catalogued weights, by year.")
    p.add_argument("--plot", metavar="FILE", help="write the figure as PNG")
    p.set_defaults(func=cmd_evolution)
