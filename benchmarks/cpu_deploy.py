"""CPU deployment speed: timm eager fp32 against our ONNX fp32 and our ONNX int8, side by side.

For each model, at batch 1 and 8: timm's eager model, our export run by onnxruntime (fp32), and
our int8 export (the scheme `visionzoo export --int8` picks: static QDQ for convolutional
networks, dynamic for matrix-product-heavy ones), each engine with its default thread-pool
settings, timed in alternating blocks (see `interleaved`); medians reported with the ratio to
timm eager and the geometric mean over models.

With --cifar-model (a model saved by `visionzoo train` on the shared CIFAR-10) and --cifar-data
(its test/ folder) it also reports top-1 of the fp32 and int8 exports, and the drop in points.

    python benchmarks/cpu_deploy.py [--models resnet50,...] [--seconds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import visionzoo
from visionzoo.export import export_model, onnx_top1
from visionzoo.export.quantize import quantization_kind, quantize_int8

MODELS = ["resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "vit_small_patch16_224"]


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


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # default spinning, as deployed


def interleaved(fns: dict[str, callable], seconds: float, min_repeats: int = 10, block: int = 4,
                pause: float = 0.05) -> dict[str, float]:
    """Median milliseconds per call of each function, timed in alternating blocks.

    Each engine runs as deployed, with its own thread pool's defaults (onnxruntime's and
    OpenMP's workers spin a while after a run). So that one engine's spinning threads never
    take the cores from the next, each block starts after a short pause and one untimed call;
    blocks alternate, so slow drifts of the machine reach every engine alike.
    """
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    begin = time.perf_counter()
    while len(times[next(iter(fns))]) < min_repeats or time.perf_counter() - begin < seconds:
        for name, fn in fns.items():
            time.sleep(pause)
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cifar-model", help="saved model fine-tuned on CIFAR-10, for the int8 accuracy check")
    parser.add_argument("--cifar-data", help="CIFAR-10 test folder (class-per-folder)")
    parser.add_argument("--cifar-limit", type=int, default=2000, help="test images for the accuracy check")
    parser.add_argument("--cifar-calib", help="calibration images (default: the train/ folder beside --cifar-data)")
    args = parser.parse_args()

    import timm

    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}")
    ratios = {(kind, b): [] for kind in ("fp32", "int8") for b in batch_sizes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib = calibration_folder(tmp)
        for name in args.models.split(","):
            reference = timm.create_model(name, pretrained=False).eval()
            ours = visionzoo.create_model(name).eval()
            ours.load_state_dict(reference.state_dict())
            report = export_model(ours, tmp / f"{name}.onnx", verify=True, calib_dir=calib)
            int8_path = quantize_int8(report.path, tmp / f"{name}.int8.onnx", sorted(calib.glob("*.png")))
            scheme = quantization_kind(int8_path)
            fp32, int8 = session(report.path, args.threads), session(int8_path, args.threads)
            size = visionzoo.model_info(name)["input_size"][1]
            for batch in batch_sizes:
                x = torch.randn(batch, 3, size, size)
                xn = x.numpy()

                def timm_eager():
                    with torch.inference_mode():
                        reference(x)

                medians = interleaved({
                    "timm": timm_eager,
                    "fp32": lambda: fp32.run(None, {"input": xn}),
                    "int8": lambda: int8.run(None, {"input": xn}),
                }, args.seconds)
                r32, r8 = medians["fp32"] / medians["timm"], medians["int8"] / medians["timm"]
                ratios[("fp32", batch)].append(r32)
                ratios[("int8", batch)].append(r8)
                print(f"{name:24s} b{batch}: timm eager {medians['timm']:8.2f} ms | onnx fp32 {medians['fp32']:8.2f} ms "
                      f"({r32:.2f}x) | onnx int8 {medians['int8']:8.2f} ms ({r8:.2f}x, {scheme})   "
                      f"[export verified: {report.max_relative_difference:.1e}]", flush=True)
        for (kind, batch), values in ratios.items():
            geo = math.exp(sum(math.log(v) for v in values) / len(values))
            print(f"geometric mean, {kind} / timm eager, batch {batch}: {geo:.3f}")

        if args.cifar_model and args.cifar_data:
            model = visionzoo.load_model(args.cifar_model).eval()
            data = Path(args.cifar_data)
            calib = Path(args.cifar_calib) if args.cifar_calib else data.parent / "train"  # never the test images
            report = export_model(model, tmp / "cifar.onnx", int8=True, calib_dir=calib, calib_count=256,
                                  eval_dir=data, eval_limit=args.cifar_limit)
            print(f"CIFAR-10 ({args.cifar_limit} test images): fp32 top-1 {100 * report.top1_fp32:.2f}%, "
                  f"int8 top-1 {100 * report.top1_int8:.2f}%, "
                  f"drop {100 * (report.top1_fp32 - report.top1_int8):.2f} points")


if __name__ == "__main__":
    main()
