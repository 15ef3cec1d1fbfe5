"""Distilling a ResNet-18 into MobileNetV3-Small on CIFAR-10 at 32 px, through `visionzoo train`.

    python benchmarks/distill_cifar.py [--train-per-class 500] [--test-per-class 200] [--epochs 10]

Data: a class-balanced subset of the shared CIFAR-10 (the first `--train-per-class` training and
`--test-per-class` test images of each of the 10 classes, in archive order), as a class-per-folder
tree; trained at the images' own 32 px with the `crop` augmentation (pad 4, crop, flip) of the
scratch recipe, decoded once into the pixel cache (`--cache`).

Runs, each `visionzoo.train` in its own subprocess with `--threads` threads, all from scratch:
1. the teacher: resnet18, `--teacher-epochs` epochs;
2. the student alone: mobilenetv3_small_100, `--epochs` epochs;
3. the student distilled from run 1 (`--teacher RUN --distill soft`, alpha 0.5, T 4), the same
   recipe and epochs, without the logit cache;
4. the same with `--teacher-cache`.
Prints each run's top-1 on the test subset after its last epoch (not the best epoch: the test
subset is not used to choose), wall and CPU time (user + system of the subprocess: on a shared
machine the CPU time is the fairer cost), and the cache's hit rate. Target: distillation gains at
least 1 point of top-1 over the student alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer_overhead import extract_slice  # the per-class slice of the archive, bytes as they are

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def prepare(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """train/<class>/ and val/<class>/ JPEG files copied from the archive (no re-encoding)."""
    extract_slice(ARCHIVE, root / "cifar10-subset", train_per_class, test_per_class)
    return root / "cifar10-subset"


RUN = """
import json, sys
import torch
import visionzoo
torch.set_num_threads(int(sys.argv[1]))
kwargs = json.loads(sys.argv[2])
visionzoo.train(kwargs.pop("model"), kwargs.pop("data"), **kwargs)
"""


def train(model: str, data: Path, out: Path, epochs: int, threads: int, **extra) -> dict:
    """One `visionzoo.train` run in a subprocess (no plots or TensorBoard: they cost more than these
    small runs); returns its last epoch's top-1, wall time and CPU time (user + system, all threads)."""
    settings = dict(model=model, data=str(data), epochs=epochs, batch_size=64, image_size=32, augment="crop",
                    cache=True, workers=0, out=str(out), progress=False, plots=False, tensorboard=False, seed=0, **extra)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN, str(threads), json.dumps(settings)], env=env,
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise RuntimeError(f"training {model} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"top1": summary["history"][-1]["val_top1"], "wall_s": wall, "cpu_s": cpu, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student", default="mobilenetv3_small_100")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        data = prepare(root, args.train_per_class, args.test_per_class)
        print(f"CIFAR-10 subset: {10 * args.train_per_class} train / {10 * args.test_per_class} test images, 32 px, "
              f"{args.threads} threads", flush=True)
        teacher = train(args.teacher, data, root / "teacher", args.teacher_epochs, args.threads)
        print(f"teacher   {args.teacher}: top-1 {teacher['top1']:.2%} ({args.teacher_epochs} epochs, "
              f"{teacher['wall_s']:.0f} s wall, {teacher['cpu_s']:.0f} s CPU)", flush=True)
        alone = train(args.student, data, root / "alone", args.epochs, args.threads)
        print(f"student   {args.student} alone: top-1 {alone['top1']:.2%} ({alone['wall_s']:.0f} s wall, "
              f"{alone['cpu_s']:.0f} s CPU)", flush=True)
        distill = dict(teacher=str(root / "teacher"), distill="soft", distill_alpha=0.5, distill_temperature=4.0)
        plain = train(args.student, data, root / "distilled", args.epochs, args.threads, **distill)
        print(f"distilled {args.student}: top-1 {plain['top1']:.2%} ({plain['wall_s']:.0f} s wall, "
              f"{plain['cpu_s']:.0f} s CPU without the cache, "
              f"teacher in {plain['summary']['distill']['precision']})", flush=True)
        cached = train(args.student, data, root / "cached", args.epochs, args.threads, **distill, teacher_cache=True)
        stats = cached["summary"]["distill"]
        print(f"distilled {args.student} with --teacher-cache: top-1 {cached['top1']:.2%} ({cached['wall_s']:.0f} s wall, "
              f"{cached['cpu_s']:.0f} s CPU, "
              f"hit rate {stats['cache_hit_rate']:.1%})", flush=True)
        gain = 100 * (plain["top1"] - alone["top1"])
        print(f"RESULT distillation gain {gain:+.2f} points (target >= +1: {'met' if gain >= 1 else 'MISSED'}); "
              f"CPU time {plain['cpu_s']:.0f} s without the cache, {cached['cpu_s']:.0f} s with it", flush=True)


if __name__ == "__main__":
    main()
