"""`visionzoo export`: a model to ONNX (optionally int8) or TorchScript, verified against PyTorch."""

from __future__ import annotations

import argparse
import json

from visionzoo.cli.common import (
    add_image_size_argument,
    add_model_argument,
    add_pretrained_argument,
    add_progress_argument,
    console,
    print_engine_choice,
)
from visionzoo.errors import UsageError

__all__ = ["add_parsers", "cmd_export"]


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.deploy.export import SUFFIXES, export_model
    from visionzoo.resolve import resolve_model

    model = resolve_model(args.model, args.pretrained)
    if args.engine:
        return _export_engine(args, model)
    suffix = SUFFIXES[args.format]
    out = Path(args.out) if args.out else Path(Path(args.model).stem if Path(args.model).exists() else args.model + suffix)
    if out.suffix == "":
        out = out.with_suffix(suffix)
    elif args.format == "openvino" and out.suffix != ".xml":
        raise UsageError(f"an OpenVINO IR is written as NAME.xml (with NAME.bin beside it), got --out {out}")
    report = export_model(model, out, format=args.format, img_size=args.image_size, dynamic_batch=args.dynamic_batch,
                          opset=args.opset, exporter=args.exporter, fold_bn=args.fold_bn, int8=args.int8,
                          int8_scheme=args.int8_scheme, calib_dir=args.calib,
                          calib_count=args.calib_count, eval_dir=args.eval_data, verify=args.verify,
                          reparameterize=args.reparameterize)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    console.print(f"exported {report.model} to {report.path} ({args.format}"
                  + (", training branches fused)" if report.reparameterized else ")"))
    if report.verified is not None:
        console.print(f"verified against eager PyTorch{' (unfused)' if report.reparameterized else ''}: max "
                      f"|difference| = {report.max_relative_difference:.2e} x max |reference| (limit 1e-4)")
    if report.int8_path:
        console.print(f"int8 model: {report.int8_path} ({report.int8_scheme})")
    if report.top1_fp32 is not None:
        line = f"top-1 on {args.eval_data}: fp32 {100 * report.top1_fp32:.2f}%"
        if report.top1_int8 is not None:
            line += f", int8 {100 * report.top1_int8:.2f}% (drop {100 * (report.top1_fp32 - report.top1_int8):.2f} points)"
        console.print(line)
    return 0


def _export_engine(args: argparse.Namespace, model) -> int:
    """`export --engine auto|NAME`: measure the engines here (auto), write the chosen engine's file."""
    from pathlib import Path

    from visionzoo.deploy.engines import EXPORTABLE, export_engine

    if args.int8 or args.format != "onnx" or args.fold_bn:
        raise UsageError("--engine decides the format and precision; drop --format, --int8 and --fold-bn")
    if args.engine != "auto" and args.engine not in EXPORTABLE:
        raise UsageError(f"--engine for export: auto or one of {', '.join(EXPORTABLE)}, got {args.engine!r}")
    stem = Path(args.out) if args.out else Path(Path(args.model).stem if Path(args.model).exists() else args.model)
    result = export_engine(model, stem.with_suffix(""), engine=args.engine, img_size=args.image_size,
                           calib_dir=args.calib, calib_count=args.calib_count, eval_dir=args.eval_data,
                           threads=args.threads, reparameterize=args.reparameterize)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if result["choice"]:
        print_engine_choice(result["choice"])
    console.print(f"exported {result['model']} for {result['engine']} to {result['path']}", highlight=False)
    return 0


def add_parsers(commands) -> None:
    p = commands.add_parser("export", help="export a model to ONNX, OpenVINO IR or TorchScript, verified",
                            description="Export a model to ONNX, OpenVINO IR or TorchScript and verify it computes "
                                        "the same function.")
    add_model_argument(p, "registered model name or saved model path", metavar="MODEL_OR_CHECKPOINT")
    add_pretrained_argument(p)
    p.add_argument("--format", choices=["onnx", "openvino", "torchscript"], default="onnx",
                   help="onnx (default), openvino (IR: MODEL.xml + MODEL.bin) or torchscript")
    p.add_argument("--out", metavar="FILE", help="output file (default: MODEL.onnx, MODEL.xml or MODEL.pt)")
    add_image_size_argument(p, "input size (default: the model's)")
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
    p.add_argument("--reparameterize", action=argparse.BooleanOptionalAction, default=True,
                   help="fuse the training branches of RepViT, MobileOne and FastViT into single convolutions "
                        "before exporting, verified against the unfused model (default: on; "
                        "--no-reparameterize keeps them)")
    p.add_argument("--engine", metavar="auto|NAME",
                   help="auto: measure the inference engines here and export for the fastest within the accuracy "
                        "rule (on --eval-data, else the --calib images); or an engine: onnxruntime-fp32, "
                        "onnxruntime-int8, openvino-fp32, openvino-bf16, openvino-int8")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for --engine measurements")
    add_progress_argument(p, draws=False)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)
