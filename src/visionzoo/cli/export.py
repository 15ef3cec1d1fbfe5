"""`visionzoo export`: a model to ONNX, OpenVINO IR, TorchScript, LiteRT, ExecuTorch or Core ML (optionally
int8), verified against PyTorch; `--verify DATA` runs each file in its own runtime on images."""

from __future__ import annotations

import argparse
import json

from visionzoo.cli.common import (
    add_image_size_argument,
    add_model_argument,
    add_pretrained_argument,
    add_progress_argument,
    add_resize_mode_argument,
    console,
    print_engine_choice,
)
from visionzoo.errors import UsageError

__all__ = ["add_parsers", "cmd_export"]


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.deploy.export import SUFFIXES
    from visionzoo.deploy.verify import export
    from visionzoo.resolve import resolve_model

    model = resolve_model(args.model, args.pretrained)
    if args.resize_mode:  # recorded in the file's metadata, which every runtime preprocesses by
        from visionzoo.factory import data_config, with_spec

        model = with_spec(model, data_config={**data_config(model), "resize_mode": args.resize_mode})
    if args.engine:
        return _export_engine(args, model)
    suffix = SUFFIXES[args.format]
    out = Path(args.out) if args.out else Path(Path(args.model).stem if Path(args.model).exists() else args.model + suffix)
    if out.suffix == "":
        out = out.with_suffix(suffix)
    elif args.format == "openvino" and out.suffix != ".xml":
        raise UsageError(f"an OpenVINO IR is written as NAME.xml (with NAME.bin beside it), got --out {out}")
    if args.precision and args.format not in ("litert", "executorch", "coreml"):
        raise UsageError(f"--precision applies to --format litert, executorch and coreml, not {args.format}")
    verify_data = args.verify if isinstance(args.verify, str) else None
    report = export(model, out, format=args.format, img_size=args.image_size, dynamic_batch=args.dynamic_batch,
                    opset=args.opset, exporter=args.exporter, fold_bn=args.fold_bn, int8=args.int8,
                    int8_scheme=args.int8_scheme, calib_dir=args.calib,
                    calib_count=args.calib_count, eval_dir=args.eval_data, verify=bool(args.verify),
                    reparameterize=args.reparameterize, precision=args.precision, int8_input=args.int8_input,
                    verify_data=verify_data, max_drop=args.max_drop, verify_limit=args.verify_limit)
    failed = [entry for entry in report.verification if entry.get("passed") is False]
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 1 if failed else 0
    console.print(f"exported {report.model} to {report.path} ({args.format}"
                  + (", training branches fused)" if report.reparameterized else ")"))
    if report.verified is not None and report.max_relative_difference is not None:
        console.print(f"verified against eager PyTorch{' (unfused)' if report.reparameterized else ''}: max "
                      f"|difference| = {report.max_relative_difference:.2e} x max |reference| "
                      f"(limit {report.notes.get('tolerance', 1e-4):g})")
    if report.int8_path:
        console.print(f"int8 model: {report.int8_path} ({report.int8_scheme})")
    if report.notes.get("coreml"):
        console.print(f"Core ML: {report.notes['coreml']}", highlight=False)
    _print_verification(report.verification)
    if report.top1_fp32 is not None:
        line = f"top-1 on {args.eval_data}: fp32 {100 * report.top1_fp32:.2f}%"
        if report.top1_int8 is not None:
            line += f", int8 {100 * report.top1_int8:.2f}% (drop {100 * (report.top1_fp32 - report.top1_int8):.2f} points)"
        console.print(line)
    return 1 if failed else 0


def _print_verification(entries: list[dict]) -> None:
    """One line per file `--verify DATA` ran: top-1 of the file and of eager, agreement, drop, verdict."""
    for entry in entries:
        if not entry.get("run"):
            console.print(f"{entry['file']}: not run ({entry['reason']})", highlight=False)
            continue
        top1 = (f"top-1 file {100 * entry['top1_file']:.2f}%, eager {100 * entry['top1_eager']:.2f}%, "
                if entry["labelled"] else "no labels: eager's answers taken as the truth, ")
        verdict = "passed" if entry["passed"] else "[red]FAILED[/red]"
        console.print(f"{entry['file']} in {entry['runtime']} on {entry['images']} images: {top1}"
                      f"agreement {100 * entry['agreement']:.2f}%, drop {entry['drop']:.2f} points "
                      f"(max {entry['max_drop']:g}): {verdict}; written to verify.json", highlight=False)


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
    p = commands.add_parser("export", help="export a model to ONNX, OpenVINO IR, TorchScript, LiteRT, ExecuTorch "
                                            "or Core ML, verified",
                            description="Export a model to ONNX, OpenVINO IR, TorchScript, LiteRT (.tflite), ExecuTorch "
                                        "(.pte) or Core ML (.mlpackage) and verify it computes the same function "
                                        "(Core ML: by structure on Linux, where it cannot run).")
    add_model_argument(p, "registered model name or saved model path", metavar="MODEL_OR_CHECKPOINT")
    add_pretrained_argument(p)
    p.add_argument("--format", choices=["onnx", "openvino", "torchscript", "litert", "executorch", "coreml"],
                   default="onnx", help="onnx (default), openvino (IR: MODEL.xml + MODEL.bin), torchscript, "
                                        "litert (.tflite), executorch (.pte, XNNPACK) or coreml (.mlpackage)")
    p.add_argument("--out", metavar="FILE", help="output file (default: MODEL.onnx, .xml, .pt, .tflite, .pte or "
                                                 ".mlpackage)")
    p.add_argument("--precision", choices=["fp32", "fp16"],
                   help="litert: fp32 (default) or fp16 weights; executorch: fp32; coreml: fp16 (default)")
    p.add_argument("--int8-input", choices=["int8", "uint8"], default="int8",
                   help="litert --int8: the full-integer model's input type (default: int8)")
    add_image_size_argument(p, "input size (default: the model's)")
    add_resize_mode_argument(p)
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
    p.add_argument("--verify", nargs="?", const=True, default=True, metavar="DATA",
                   help="compare the export with eager PyTorch (default: on); with DATA (class folders, or any "
                        "images), also run each written file in its own runtime on those images and report top-1 "
                        "of file and eager, agreement and drop, into verify.json beside the file")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip every comparison")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="--verify DATA fails (exit 1) when a file loses more top-1 than this (default: 1 point)")
    p.add_argument("--verify-limit", type=int, metavar="N", help="--verify DATA: use N images (an even sample)")
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
