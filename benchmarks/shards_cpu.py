"""Streaming throughput on the CPU: the CIFAR-10 training set as a folder, as packed tar shards and as a
local Hugging Face dataset; images per second of one training epoch of resnet18 at 32 px each, in
the same run, with the same settings (batch 128, augment crop, no pixel cache, default workers).

    .venv/bin/python benchmarks/shards_cpu.py            # all 50,000 training images
    .venv/bin/python benchmarks/shards_cpu.py --quick    # 200 per class (2,000), to check it runs
    .venv/bin/python benchmarks/shards_cpu.py --per-class 1000   # 10,000 images: the same comparison, shorter

Data: the shared CIFAR-10 (../shared/data/cifar10-jpg.tar.gz, or $VISIONZOO_SHARED_DATA), unpacked
into a temporary folder. The three sources hold the same JPEG bytes: `visionzoo data pack` writes
the files as they are, and the HF dataset stores them in an Image column (save_to_disk). The
figure is the trainer's own img/s for the epoch (data, forward, backward, optimizer); the wall
time includes startup (the shards' index, the dataset's Arrow files) and validation.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

ARCHIVE = Path(os.environ.get("VISIONZOO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "cifar10-jpg.tar.gz"


def unpack_train(root: Path, per_class: int | None) -> Path:
    """cifar10/train/CLASS/*.jpg, `per_class` of each (None: all)."""
    taken: dict[str, int] = {}
    with tarfile.open(ARCHIVE) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-3] != "train":
                continue
            if per_class is not None and taken.get(parts[-2], 0) >= per_class:
                continue
            taken[parts[-2]] = taken.get(parts[-2], 0) + 1
            target = root / "train" / parts[-2] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    return root / "train"


def hf_dataset(folder: Path, out: Path) -> Path:
    import datasets

    from visionzoo.data.sources import resolve_data

    files = resolve_data(folder, split="eval")
    records = [{"bytes": Path(path).read_bytes(), "path": None} for path in files.train.paths]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=files.classes)})
    table = datasets.Dataset.from_dict({"image": records, "label": files.train.labels.tolist()}, features=features)
    table.save_to_disk(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 images per class instead of all 5,000")
    parser.add_argument("--per-class", type=int, help="this many training images per class (default: all 5,000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None, help="loader processes (default: the trainer's)")
    args = parser.parse_args()
    import visionzoo
    from visionzoo.data.pack import pack_shards

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        per_class = 200 if args.quick else args.per_class
        folder = unpack_train(scratch / "cifar10", per_class)
        started = time.perf_counter()
        pack_shards(folder, scratch / "shards", shard_size="4MB" if per_class else "64MB", seed=0)
        pack_seconds = time.perf_counter() - started
        started = time.perf_counter()
        hf = hf_dataset(folder, scratch / "hf")
        hf_seconds = time.perf_counter() - started
        rows = []
        for name, data in (("folder", folder), ("shards", scratch / "shards"), ("hf dataset", hf)):
            started = time.perf_counter()
            result = visionzoo.train("resnet18", str(data), epochs=1, image_size=32, batch_size=args.batch_size,
                                     augment="crop", cache=False, workers=args.workers, seed=0, plots=False,
                                     progress=False, out=scratch / "runs" / name.replace(" ", "-"))
            wall = time.perf_counter() - started
            record = result.history[-1]
            rows.append((name, record["img_per_s"], wall, record.get("val_top1")))
        print(f"\nCIFAR-10 train ({10 * per_class if per_class else 50_000:,} images), resnet18 at 32 px, "
              f"batch {args.batch_size}, 1 epoch; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"packing: {pack_seconds:.1f} s (shards), {hf_seconds:.1f} s (HF save_to_disk)")
        print(f"{'source':<12}{'train img/s':>12}{'wall s':>9}{'val top-1':>11}")
        for name, speed, wall, top1 in rows:
            print(f"{name:<12}{speed:>12.0f}{wall:>9.1f}{(top1 or 0):>11.2%}")
        folder_speed = rows[0][1]
        print("ratios to the folder: " + ", ".join(f"{name} {speed / folder_speed:.2f}x" for name, speed, _, _ in rows[1:]))


if __name__ == "__main__":
    main()
