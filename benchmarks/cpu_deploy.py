"""CPU deployment speed of every engine against timm eager fp32, side by side, and the top-1 cost of
the reduced-precision engines on CIFAR-10.

For each model, at batch 1 and 8: timm's eager model and each of visionzoo's engines
(`visionzoo.deploy.engines`: eager, compile, onnxruntime-fp32, onnxruntime-int8, openvino-fp32,
openvino-bf16, openvino-int8), all running our model with timm's (random) weights, each with its
runtime's default thread-pool settings, timed in alternating blocks (`visionzoo.measure.time_in_blocks`);
medians reported with the ratio to timm eager, and the geometric mean over models per engine.
Targets at batch 1 (issue 24): best float-class engine (fp32, or bf16) <= 0.33x, best int8 <= 0.20x.

Accuracy: with --cifar-model (a model saved by `visionzoo train` on the shared CIFAR-10) or
--cifar-train NAME (trained here first by `benchmarks/int8_cifar.py`'s recipe), the top-1 of each
reduced-precision engine on CIFAR-10 test images against the fp32 model's, with the accuracy
rule of `--engine auto` (bf16: >= 99.5% top-1 agreement; int8: <= 1 point drop).

    python benchmarks/cpu_deploy.py [--models resnet50,...] [--engines all] [--seconds 3] [--threads 2]
    python benchmarks/cpu_deploy.py --models none --cifar-train resnet18 --cifar-epochs 3
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import visionzoo
from visionzoo.deploy.engines import (
    ENGINES,
    Artifacts,
    create_engine,
    evaluate_engines,
    labelled_images,
)
from visionzoo.measure import time_in_blocks

MODELS = ["resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "vit_small_patch16_224"]
FLOAT_TARGET, INT8_TARGET = 0.33, 0.20


def calibration_folder(root: Path, count: int = 32) -> Path:
    """Natural-looking images (smooth gradients, blobs, noise) for calibration when no data is given."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    folder = root / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((256, 256), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.integers(0, 200, 2)
            draw.ellipse([int(x), int(y), int(x) + int(rng.integers(20, 90)), int(y) + int(rng.integers(20, 90))],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.filter(ImageFilter.GaussianBlur(1)).save(folder / f"{i:03d}.png")
    return folder


def interleaved(fns: dict[str, callable], seconds: float) -> dict[str, float]:
    """Median milliseconds per call of each function, timed in alternating blocks."""
    import statistics

    return {name: statistics.median(times) for name, times in time_in_blocks(fns, seconds).items()}


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def speed(args, engine_names: list[str], batch_sizes: list[int], tmp: Path) -> None:
    import timm

    calib = sorted(calibration_folder(tmp, args.calib_count).glob("*.png"))  # speed only: a few images do
    ratios: dict[tuple[str, int], dict[str, float]] = {}  # (engine, batch) -> model -> ratio to timm
    for name in args.models.split(","):
        reference = timm.create_model(name, pretrained=False).eval()
        ours = visionzoo.create_model(name).eval()
        ours.load_state_dict(reference.state_dict())
        artifacts = Artifacts(ours, calibration=calib, folder=tmp / name)
        engines = []
        for engine_name in engine_names:
            engine = create_engine(engine_name, artifacts, threads=args.threads)
            reason = engine.unavailable()
            if reason:
                print(f"{name}: {engine_name} skipped: {reason}", flush=True)
                continue
            engine.load()
            engines.append(engine)
        size = visionzoo.model_info(name)["input_size"][1]
        for batch in batch_sizes:
            x = torch.randn(batch, 3, size, size)
            xn = x.numpy()

            def timm_eager():
                with torch.inference_mode():
                    reference(x)

            medians = interleaved({"timm": timm_eager, **{e.name: (lambda e=e: e.run(xn)) for e in engines}},
                                  args.seconds)
            cells = []
            for engine in engines:
                ratio = medians[engine.name] / medians["timm"]
                ratios.setdefault((engine.name, batch), {})[name] = ratio
                cells.append(f"{engine.name} {medians[engine.name]:.2f} ({ratio:.2f}x)")
            print(f"{name:22s} b{batch}: timm eager {medians['timm']:.2f} ms | " + " | ".join(cells), flush=True)
    models = args.models.split(",")
    for batch in batch_sizes:
        print(f"geometric mean over {len(models)} models, engine / timm eager, batch {batch}:")
        for engine_name in engine_names:
            values = ratios.get((engine_name, batch), {})
            if len(values) == len(models):
                print(f"  {engine_name:18s} {geometric_mean(list(values.values())):.3f}")
        for label, precisions, target in (("float-class (fp32, bf16)", ("fp32", "bf16"), FLOAT_TARGET),
                                          ("int8", ("int8",), INT8_TARGET)):
            kinds = [e for e in engine_names if ENGINES[e].precision in precisions
                     and len(ratios.get((e, batch), {})) == len(models)]
            if not kinds:
                continue
            best_engine = min(kinds, key=lambda e: geometric_mean(list(ratios[(e, batch)].values())))
            single = geometric_mean(list(ratios[(best_engine, batch)].values()))
            per_model = geometric_mean([min(ratios[(e, batch)][m] for e in kinds) for m in models])
            verdict = f" (target <= {target:.2f}: {'met' if per_model <= target else 'MISSED'})" if batch == 1 else ""
            print(f"  best {label}: one engine for all ({best_engine}) {single:.3f}; "
                  f"best per model {per_model:.3f}{verdict}")


def accuracy(args, tmp: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from int8_cifar import ARCHIVE, cifar_folders, train_cifar_model

    splits, train_dir, test_dir = cifar_folders(args.cifar_data or str(ARCHIVE))
    if args.cifar_train_count:  # a quick run on a fixed subset (the shared machine's budget)
        from cifar10_cpu import subset_splits

        subset_splits(splits, args.cifar_train_count, min(1000, len(splits.val)))
    if args.cifar_model:
        model, what = visionzoo.load_model(args.cifar_model).eval(), args.cifar_model
    else:
        model, minutes = train_cifar_model(args.cifar_train, splits, args.cifar_epochs)
        what = (f"{args.cifar_train} trained {args.cifar_epochs} epochs on {len(splits.train)} images here "
                f"({minutes:.1f} min)")
    calibration = labelled_images(train_dir, None, 256)[0]  # never the test images
    artifacts = Artifacts(model, img_size=32, calibration=calibration, folder=tmp / "cifar")
    engines = [create_engine(n, artifacts, threads=args.threads) for n in
               ("eager", "onnxruntime-fp32", "openvino-fp32", "onnxruntime-int8", "openvino-bf16", "openvino-int8")]
    engines = [e for e in engines if not e.unavailable()]
    for engine in engines:
        engine.load()
    from visionzoo.factory import class_names

    files, labels = labelled_images(test_dir, class_names(model), args.cifar_limit)
    figures = evaluate_engines(engines, files, labels, artifacts.preprocessing)
    print(f"CIFAR-10, {what}; {len(files)} test images, calibration on 256 training images:")
    for engine in engines:
        f = figures[engine.name]
        rule = "" if engine.precision == "fp32" else f"  rule: {'pass' if f['passed'] else 'FAIL'}"
        print(f"  {engine.name:18s} top-1 {100 * f['top1']:.2f}%  agreement with {f['reference']} "
              f"{100 * f['agreement']:.2f}%  drop {100 * f['drop']:.2f} points{rule}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, or 'none' (accuracy only)")
    parser.add_argument("--engines", default="all", help=f"comma-separated from {', '.join(ENGINES)}, or all")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calib-count", type=int, default=8,
                        help="synthetic calibration images for the int8 engines' speed runs (onnxruntime's "
                             "percentile calibration holds every activation of every image in memory)")
    parser.add_argument("--cifar-model", help="saved model fine-tuned on CIFAR-10, for the accuracy check")
    parser.add_argument("--cifar-train", metavar="NAME", help="train NAME on CIFAR-10 here first (int8_cifar.py)")
    parser.add_argument("--cifar-epochs", type=int, default=3)
    parser.add_argument("--cifar-train-count", type=int, help="train on this many training images only")
    parser.add_argument("--cifar-data", help="CIFAR-10 archive or folder (default: ../shared/data/cifar10-jpg.tar.gz)")
    parser.add_argument("--cifar-limit", type=int, default=2000, help="test images for the accuracy check")
    args = parser.parse_args()

    import timm

    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    engine_names = list(ENGINES) if args.engines == "all" else args.engines.split(",")
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}, engines {engine_names}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.models != "none":
            speed(args, engine_names, batch_sizes, tmp)
        if args.cifar_model or args.cifar_train:
            accuracy(args, tmp)


if __name__ == "__main__":
    main()
