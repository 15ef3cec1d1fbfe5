"""`visionzoo predict`: each image's top-k classes. An `.onnx`, OpenVINO `.xml` or LiteRT `.tflite` model runs
without PyTorch (an ExecuTorch `.pte` program without visionzoo's PyTorch side)."""

from __future__ import annotations

import argparse
import json

from visionzoo.cli.common import (
    add_model_argument,
    add_pretrained_argument,
    add_resize_mode_argument,
    err_console,
    shown_markup,
)
from visionzoo.errors import UsageError

__all__ = ["add_parsers", "cmd_predict"]


def cmd_predict(args: argparse.Namespace) -> int:
    from visionzoo.data.samples import expand_image_paths
    from visionzoo.heads import format_table
    from visionzoo.resolve import resolve_model

    paths = expand_image_paths(args.images)
    if not paths:
        raise UsageError("no images given")
    if args.tta_scales and not args.tta:
        raise UsageError("--tta-scale adds views to test-time augmentation; add --tta")
    model = resolve_model(args.model, args.pretrained, allow_onnx=True, runtime=args.runtime)
    if args.model.endswith((".onnx", ".xml", ".tflite", ".pte")):  # the torch-free path: numpy, Pillow, a runtime
        if args.resize_mode:  # else the mode the export recorded in the file's metadata
            model.preprocessing = {**model.preprocessing, "resize_mode": args.resize_mode}
        if args.tta_scales:
            raise UsageError(f"--tta-scale needs a PyTorch model; {args.model} is an exported file, which takes --tta "
                             "(the mirror) only")
        results = model.predict_files(paths, topk=args.topk, batch_size=args.batch_size, reject=args.reject,
                                      tta=args.tta)
    else:
        from visionzoo.prediction import predict_images

        results = predict_images(model, paths, topk=args.topk, batch_size=args.batch_size, reject=args.reject,
                                 resize_mode=args.resize_mode, tta=args.tta, tta_scales=args.tta_scales)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
    failed = [r["path"] for r in results if "error" in r]
    if failed:
        err_console.print(f"[red]error:[/red] {len(failed)} of {len(results)} images could not be read: "
                          f"{shown_markup(', '.join(failed[:5]))}{', ...' if len(failed) > 5 else ''}", highlight=False, soft_wrap=True)
        return 1
    return 0


def add_parsers(commands) -> None:
    p = commands.add_parser("predict", help="classify images with a pretrained or saved model",
                            description="Print each image's top-k classes with probabilities.")
    add_model_argument(p, "registered model name, saved model folder, or exported .onnx / OpenVINO .xml / "
                          "LiteRT .tflite / ExecuTorch .pte file")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders or globs")
    add_pretrained_argument(p)
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes to show per image (default: 5)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default: 16)")
    add_resize_mode_argument(p)
    p.add_argument("--runtime", choices=["onnxruntime", "openvino", "openvino-bf16", "litert", "executorch"],
                   help="runtime for an exported file (default: onnxruntime for .onnx, OpenVINO for .xml, LiteRT "
                        "for .tflite, ExecuTorch for .pte)")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"path", "predictions"} / {"path", "error"} '
                   '(multi-label models add "labels"; models with an unknown rule add "unknown")')
    p.add_argument("--no-reject", dest="reject", action="store_false",
                   help="never answer 'unknown' (ignore the model's saved out-of-distribution threshold)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the logits of each image and "
                   "its mirror (exported files too)")
    p.add_argument("--tta-scale", dest="tta_scales", type=float, action="append", default=[], metavar="S",
                   help="with --tta, also average views zoomed in by S (e.g. 1.15; repeatable; PyTorch models only)")
    p.set_defaults(func=cmd_predict)
