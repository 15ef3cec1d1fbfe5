"""Calibration and unknowns on CIFAR-10: train on 5 classes, meet the other 5 as unknowns.

    python benchmarks/calibration_ood.py                       # 600 images per class, 8 epochs
    python benchmarks/calibration_ood.py --per-class 100 --epochs 1     # a smoke run

Trains ResNet-18 (32x32, visionzoo's default scratch recipe) on airplane, automobile, bird, cat and
deer; temperature scaling and the OOD threshold are fitted on a held-out 10% of the training images
by `visionzoo.train` itself. On the test images it prints:

- ECE and NLL of the 5 known classes before and after temperature scaling (target: ECE after at most
  half of ECE before);
- AUROC and FPR at 95% TPR of each OOD score (msp, energy, knn), the 5 known classes' test images
  against the 5 unknown classes' (target: the chosen score's AUROC at least MSP's);
- how many unknown and known test images the saved rule calls unknown.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import visionzoo
from visionzoo.data.samples import ArraySamples, DataSplits
from visionzoo.data.sources import resolve_data
from visionzoo.factory import data_config
from visionzoo.heads import ood_score
from visionzoo.metrics.calibration import DEFAULT_OOD_SCORE, auroc, calibration_report, fpr_at_tpr, head_of, knn_score

ARCHIVE = Path(os.environ.get("VISIONZOO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "cifar10-jpg.tar.gz"
KNOWN = ("airplane", "automobile", "bird", "cat", "deer")


def decoded(files, classes: list[str], names, per_class: int, seed: int) -> ArraySamples:
    """`per_class` random images of each class in `names`, labels renumbered in that order."""
    rng = np.random.default_rng(seed)
    chosen, labels = [], []
    for new_label, name in enumerate(names):
        members = np.flatnonzero(files.labels == classes.index(name))
        chosen += list(rng.choice(members, per_class, replace=False))
        labels += [new_label] * per_class
    images = np.stack([np.asarray(Image.open(files.paths[i]).convert("RGB")) for i in chosen])
    return ArraySamples(images, np.array(labels, dtype=np.int64), [files.paths[i] for i in chosen])


@torch.no_grad()
def features_and_logits(model, images: np.ndarray, mean, std, batch: int = 250):
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    features, logits = [], []
    for start in range(0, len(images), batch):
        x = (torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 255 - mean) / std
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        features.append(pooled)
        logits.append(model.forward_head(model.forward_features(x)))
    return torch.cat(features), torch.cat(logits).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=600, help="training images per known class")
    parser.add_argument("--test-per-class", type=int, default=300, help="test images per class, known and unknown")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cifar = resolve_data(ARCHIVE)
    unknown_names = [c for c in cifar.classes if c not in KNOWN]
    train_all = decoded(cifar.train, cifar.classes, KNOWN, args.per_class, args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train_all))
    held_out = len(train_all) // 10
    train, val = train_all.subset(np.sort(order[held_out:])), train_all.subset(np.sort(order[:held_out]))
    test_known = decoded(cifar.val, cifar.classes, KNOWN, args.test_per_class, args.seed + 1)
    test_unknown = decoded(cifar.val, cifar.classes, unknown_names, args.test_per_class, args.seed + 2)
    print(f"known {', '.join(KNOWN)}; unknown {', '.join(unknown_names)}: {len(train)} train / {len(val)} val / "
          f"{len(test_known)} known + {len(test_unknown)} unknown test images, 32x32, {args.epochs} epochs of "
          f"{args.model}, {args.threads} threads", flush=True)

    splits = DataSplits(list(KNOWN), train, val, "CIFAR-10, 5 known classes", native_size=32)
    with tempfile.TemporaryDirectory() as folder:
        result = visionzoo.train(args.model, splits, out=Path(folder) / "run", epochs=args.epochs, seed=args.seed,
                                 progress=False, tensorboard=False, plots=False)
        model = visionzoo.load_model(result.run_dir / "best")
    head = head_of(model)
    config = data_config(model)
    bank, _ = features_and_logits(model, np.asarray(train.images), config["mean"], config["std"])
    known_features, known_logits = features_and_logits(model, np.asarray(test_known.images), config["mean"], config["std"])
    unknown_features, unknown_logits = features_and_logits(model, np.asarray(test_unknown.images), config["mean"],
                                                           config["std"])
    temperature = head["temperature"]
    labels = torch.from_numpy(test_known.labels)
    top1 = float(known_logits.argmax(1).eq(labels).float().mean())
    calibration = calibration_report(known_logits, labels, temperature, "multiclass")
    print(f"known-class test top-1 {top1:.4f}; temperature {temperature:.4f} (fitted on val)")
    print(f"ECE before {calibration['ece_before']:.4f}  after {calibration['ece_after']:.4f}   "
          f"NLL before {calibration['nll_before']:.4f}  after {calibration['nll_after']:.4f}")

    print("OOD score   AUROC    FPR@95TPR   (known test vs unknown test)")
    aurocs = {}
    for name in ("msp", "energy"):
        inside = ood_score(known_logits.numpy(), name, temperature)
        outside = ood_score(unknown_logits.numpy(), name, temperature)
        aurocs[name] = auroc(inside, outside)
        print(f"{name:<10} {aurocs[name]:.4f}   {fpr_at_tpr(inside, outside):.4f}")
        raw_in, raw_out = ood_score(known_logits.numpy(), name, 1.0), ood_score(unknown_logits.numpy(), name, 1.0)
        print(f"{name + ' T=1':<10} {auroc(raw_in, raw_out):.4f}   {fpr_at_tpr(raw_in, raw_out):.4f}")
    inside, outside = knn_score(bank, known_features), knn_score(bank, unknown_features)
    aurocs["knn"] = auroc(inside, outside)
    print(f"{'knn (k=10)':<10} {aurocs['knn']:.4f}   {fpr_at_tpr(inside, outside):.4f}")

    rule = head["ood"]
    rejected_unknown = float((ood_score(unknown_logits.numpy(), rule["score"], temperature) < rule["threshold"]).mean())
    rejected_known = float((ood_score(known_logits.numpy(), rule["score"], temperature) < rule["threshold"]).mean())
    print(f"saved rule: {rule['score']} < {rule['threshold']:.4f} (keeps {rule['keep']:.0%} of val) calls "
          f"{rejected_unknown:.2%} of unknown and {rejected_known:.2%} of known test images unknown")
    ece_met = "met" if calibration["ece_after"] <= calibration["ece_before"] / 2 else "NOT met"
    auroc_met = "met" if aurocs[DEFAULT_OOD_SCORE] >= aurocs["msp"] else "NOT met"
    print(f"RESULT ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} (half or less: {ece_met}); "
          f"AUROC {DEFAULT_OOD_SCORE} {aurocs[DEFAULT_OOD_SCORE]:.4f} vs msp {aurocs['msp']:.4f} ({auroc_met}); "
          f"total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
