"""`visionzoo audit` on CIFAR-10 with planted label errors and train/validation leaks.

    python benchmarks/audit_cifar.py                       # trains the backbone first (minutes), then audits
    python benchmarks/audit_cifar.py --backbone RUN/best   # reuse a backbone trained before

The audited set: 10,000 of the shared CIFAR-10 training images (a fixed random choice) as
train/, with the labels of 3% of them flipped at random to another class (the file moves to
the other class folder), and 1,000 test images as val/, to which 50 of the training images are
added, re-encoded at JPEG quality 70 and resized by one pixel (33x33).

The backbone is resnet18 trained at 32 px by `visionzoo train` for one epoch on 24,000 of the other
40,000 training images (`--exclude` leaves the audited 10,000 out, so the backbone never saw their
true labels, and a seeded choice of the rest, for time: the shared CPU ran at about 10 images/s),
validated on 2,000 test images. The floor: the same architecture with random weights.

Printed: precision and recall of the flagged label issues against the flips, recall (and
precision) of the planted leaks, and the audit's wall time, for both backbones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
AUDITED, FLIP_FRACTION, LEAKS, VAL_IMAGES = 10_000, 0.03, 50, 1_000


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "visionzoo.cli", *args], env=env, check=True,
                          stdout=subprocess.PIPE, text=True)


def build_audit_set(data: str, root: Path, seed: int = 0, audited: int = AUDITED, val_images: int = VAL_IMAGES) -> dict:
    """Write the audited tree under `root`; returns what was planted (paths as written). The audited
    images are the first `audited` of one seeded permutation: a smaller set is part of the full one."""
    from visionzoo.data.sources import resolve_data

    splits = resolve_data(data)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(splits.train), AUDITED, replace=False))  # the images the backbone never sees
    kept = np.sort(np.random.default_rng(seed + 1).permutation(AUDITED)[:audited])  # all of them by default
    flipped = set(rng.choice(audited, int(round(FLIP_FRACTION * audited)), replace=False).tolist())
    classes = splits.classes
    planted = {"flips": set(), "leaks": set(), "audited_sources": [splits.train.paths[i] for i in chosen]}
    for name in classes:
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        (root / "val" / name).mkdir(parents=True, exist_ok=True)
    train_paths = []
    for position, index in enumerate(chosen[kept]):
        source, label = splits.train.paths[index], int(splits.train.labels[index])
        if position in flipped:
            label = (label + int(rng.integers(1, len(classes)))) % len(classes)
        target = root / "train" / classes[label] / f"{position:05d}.jpg"
        shutil.copyfile(source, target)
        train_paths.append((target, int(splits.train.labels[index])))
        if position in flipped:
            planted["flips"].add(os.path.abspath(target))
    val_chosen = np.sort(rng.choice(len(splits.val), val_images, replace=False))
    for index in val_chosen:
        source, label = splits.val.paths[index], int(splits.val.labels[index])
        shutil.copyfile(source, root / "val" / classes[label] / f"test-{index:05d}.jpg")
    for position in rng.choice(audited, LEAKS, replace=False):
        source, true_label = train_paths[position]
        target = root / "val" / classes[true_label] / f"leak-{position:05d}.jpg"
        with Image.open(source) as image:
            image.convert("RGB").resize((33, 33), Image.BICUBIC).save(target, quality=70)
        planted["leaks"].add(os.path.abspath(target))
    return planted


def train_backbone(data: str, audited: list[str], work: Path, epochs: int, train_images: int) -> Path:
    """resnet18 at 32 px by `visionzoo train` on `train_images` CIFAR-10 training images that are not audited
    (`--exclude` drops the audited ones and a seeded choice of the rest), validated on 2,000 test images."""
    import csv

    from visionzoo.data.sources import resolve_data

    splits = resolve_data(data)
    val = np.sort(np.random.default_rng(1).choice(len(splits.val), 2000, replace=False))
    table = work / "cifar_train.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows([path, splits.classes[label], "train"] for path, label in zip(splits.train.paths, splits.train.labels))
        writer.writerows([splits.val.paths[i], splits.classes[splits.val.labels[i]], "val"] for i in val)
    audited_set = set(audited)
    others = [path for path in splits.train.paths if path not in audited_set]
    dropped = np.random.default_rng(5).choice(len(others), len(others) - train_images, replace=False)
    listing = work / "exclude_backbone.txt"
    listing.write_text("\n".join(sorted(audited_set) + [others[i] for i in dropped]) + "\n")
    out = work / "backbone"
    started = time.perf_counter()
    cli("train", "--model", "resnet18", "--data", str(table), "--exclude", str(listing), "--image-size", "32",
        "--epochs", str(epochs), "--batch-size", "128", "--lr", "0.05", "--augment", "crop", "--crop-padding", "2",
        "--label-smoothing", "0.1", "--cache", "--cache-size", "32", "--precision", "fp32", "--device", "cpu",
        "--no-progress", "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    print(f"backbone: resnet18 at 32px, {epochs} epoch(s) on {train_images} CIFAR-10 training images (none audited), "
          f"test top-1 {100 * summary['best_val_top1']:.2f}% on 2,000 ({(time.perf_counter() - started) / 60:.1f} min)",
          flush=True)
    return out / "best"


def backbone_folder(run: Path) -> Path:
    """A run's best/ or, for a run interrupted (Ctrl-C) before its first epoch ended, its last
    checkpoint's weights exported as a model folder (run/interrupted/)."""
    if (run / "best" / "config.json").exists():
        return run / "best"
    if not (run / "checkpoint").is_dir():
        return run  # a model folder
    from safetensors.torch import load_file

    import visionzoo

    config = json.loads((run / "config.json").read_text())
    weights = sorted((run / "checkpoint").glob("model-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))[-1]
    model = visionzoo.create_model(config["model"], num_classes=len(config["classes"]))
    model.load_state_dict(load_file(weights))
    visionzoo.with_spec(model, class_names=config["classes"], data_config=config["data_config"])
    visionzoo.save_model(model, run / "interrupted")
    print(f"backbone: {config['model']} from {weights.name} of the interrupted run {run}", flush=True)
    return run / "interrupted"


def score(audit: dict, planted: dict) -> dict:
    flagged = {os.path.abspath(item["path"]) for item in audit["label_issues"]}
    found_leaks = {os.path.abspath(item["path"]) for item in audit["leaks"]}
    hits = len(flagged & planted["flips"])
    leak_hits = len(found_leaks & planted["leaks"])
    return {"flagged": len(flagged), "precision": hits / max(len(flagged), 1), "recall": hits / len(planted["flips"]),
            "leaks_reported": len(found_leaks), "leak_recall": leak_hits / len(planted["leaks"]),
            "leak_precision": leak_hits / max(len(found_leaks), 1)}


def run_audit(root: Path, out: Path, model_args: list[str]) -> tuple[dict, float]:
    started = time.perf_counter()
    cli("audit", "--data", str(root), *model_args, "--out", str(out), "--no-progress")
    elapsed = time.perf_counter() - started
    return json.loads((out / "audit.json").read_text()), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARCHIVE))
    parser.add_argument("--backbone", help="a model folder or run folder trained on CIFAR-10 without the audited images")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the backbone's training (default 1)")
    parser.add_argument("--train-images", type=int, default=24_000,
                        help="non-audited training images the backbone trains on (default 24,000; at most 40,000)")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--audited", type=int, default=AUDITED, help="audited training images (default 10,000)")
    parser.add_argument("--val-images", type=int, default=VAL_IMAGES, help="genuine validation images (default 1,000)")
    parser.add_argument("--arms", default="trained,random", help="which backbones to audit with (default: both)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = Path(args.work or tempfile.mkdtemp(prefix="audit-cifar-"))
    root = work / "data"
    shutil.rmtree(root, ignore_errors=True)
    planted = build_audit_set(args.data, root, audited=args.audited, val_images=args.val_images)
    arms = args.arms.split(",")
    backbone = None
    if "trained" in arms:
        backbone = backbone_folder(Path(args.backbone)) if args.backbone else train_backbone(
            args.data, planted["audited_sources"], work, args.epochs, args.train_images)

    print(f"audit_cifar: {args.audited} train images ({len(planted['flips'])} labels flipped), {args.val_images} + {LEAKS} "
          f"val images ({LEAKS} leaked from train: JPEG quality 70, 33x33), {args.threads} threads; "
          "the CPU was shared with other jobs", flush=True)
    trained_label = "trained resnet18 (32px)" if not args.backbone else f"trained backbone {args.backbone}"
    for label, model_args in ((trained_label, ["--model", str(backbone)]),
                              ("random-init resnet18 (32px), the floor",
                               ["--model", "resnet18", "--pretrained", "none", "--image-size", "32"])):
        if label.split()[0].split("-")[0] not in arms:
            continue
        out = work / ("audit-trained" if label.startswith("trained") else "audit-random")
        audit, elapsed = run_audit(root, out, model_args)
        figures = score(audit, planted)
        print(f"{label}: label issues precision {figures['precision']:.3f} recall {figures['recall']:.3f} "
              f"({figures['flagged']} flagged, {len(planted['flips'])} planted); leak recall "
              f"{figures['leak_recall']:.3f} (precision {figures['leak_precision']:.3f}, "
              f"{figures['leaks_reported']} reported); wall {elapsed:.1f}s", flush=True)
    print(f"targets: leak recall >= 0.95, label-issue precision and recall >= 0.5 (trained backbone); work folder {work}")


if __name__ == "__main__":
    main()
