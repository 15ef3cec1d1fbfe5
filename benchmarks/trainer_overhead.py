"""visionzoo's trainer against a plain PyTorch loop: same model, data, augmentation, optimiser, epochs.

    python benchmarks/trainer_overhead.py [--images 5000] [--epochs 2] [--workers 1]

Both read the same class-per-folder JPEG tree (a slice of ../shared/data/cifar10-jpg.tar.gz
unpacked into a temporary folder): the plain loop through torchvision's ImageFolder and
DataLoader, visionzoo through `visionzoo.train` (with its checkpoints, metrics files and
per-epoch validation, plots and exports; the plain loop validates each epoch too). By default
visionzoo decodes the JPEGs once into its memory-mapped pixel cache (inside its clock);
`--no-cache` makes it decode every epoch like the plain loop. The two alternate `--repeats`
times (each visionzoo run with an empty cache folder, so every repeat decodes as the first one
did); prints wall time of each, the ratio plain / visionzoo per repeat, and their median
(>= 1.0 means visionzoo is at least as fast). Single runs on this 2-core machine vary by about
+-0.1 in the ratio, hence the repeats.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from torchvision import datasets
from torchvision.transforms import v2

import visionzoo
from visionzoo.data import IMAGENET_MEAN, IMAGENET_STD

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def extract_slice(archive: Path, target: Path, per_class_train: int, per_class_val: int) -> None:
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4:
                continue
            _, split, label, _ = parts
            limit = per_class_train if split == "train" else per_class_val
            if counts.get((split, label), 0) >= limit:
                continue
            counts[(split, label)] = counts.get((split, label), 0) + 1
            destination = target / ("train" if split == "train" else "val") / label / parts[-1]
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(tar.extractfile(member).read())
            if len(counts) == 20 and all(counts[(sp, lb)] >= (per_class_train if sp == "train" else per_class_val)
                                         for sp, lb in counts):
                break


def plain_loop(root: Path, epochs: int, batch_size: int, lr: float, workers: int) -> float:
    torch.manual_seed(0)
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(), *normalize])
    train_set = datasets.ImageFolder(root / "train", train_tf)
    val_set = datasets.ImageFolder(root / "val", v2.Compose(normalize))
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=256, num_workers=workers)
    model = visionzoo.create_model("resnet18", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
        accuracy = correct / len(val_set)
    elapsed = time.perf_counter() - started
    print(f"plain PyTorch loop: {elapsed:.1f}s, val top-1 {accuracy:.2%}")
    return elapsed


def visionzoo_run(root: Path, epochs: int, batch_size: int, lr: float, workers: int, out: Path, cache: bool) -> float:
    torch.manual_seed(0)
    started = time.perf_counter()
    result = visionzoo.train("resnet18", root, out=out, epochs=epochs, batch_size=batch_size, lr=lr, image_size=32,
                             augment="crop", label_smoothing=0.1, weight_decay=5e-4, workers=workers, progress=False,
                             cache=cache, cache_size=32)
    elapsed = time.perf_counter() - started
    print(f"visionzoo.train:    {elapsed:.1f}s, val top-1 {result.best_metric:.2%}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARCHIVE))
    parser.add_argument("--images", type=int, default=5000, help="training images (balanced over the 10 classes)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating pairs of runs; the median ratio counts")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                        help="visionzoo decodes once into its pixel cache (decoding inside its clock)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vz-overhead-"))
    try:
        extract_slice(Path(args.data), scratch / "data", args.images // 10, max(args.images // 100, 10))
        ratios = []
        for repeat in range(args.repeats):
            plain = plain_loop(scratch / "data", args.epochs, args.batch_size, args.lr, args.workers)
            os.environ["VISIONZOO_CACHE"] = str(scratch / f"cache-{repeat}")  # a cold pixel cache every repeat
            ours = visionzoo_run(scratch / "data", args.epochs, args.batch_size, args.lr, args.workers,
                                 scratch / f"run-{repeat}", args.cache)
            ratios.append(plain / ours)
            print(f"repeat {repeat + 1}: ratio {plain / ours:.2f}", flush=True)
        print(f"RESULT plain/visionzoo time ratio {statistics.median(ratios):.2f} (median of "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; {args.images} images, {args.epochs} epochs, "
              f"batch {args.batch_size}, {args.workers} workers, cache {args.cache}, {torch.get_num_threads()} threads); >= 1.0 means "
              "visionzoo is at least as fast")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
