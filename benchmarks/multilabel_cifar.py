"""Multi-label CIFAR-10 mosaics: visionzoo's multi-label training against a plain BCE loop.

    python benchmarks/multilabel_cifar.py                  # 2,000 train mosaics, 1,000 test, 6 epochs
    python benchmarks/multilabel_cifar.py --train 400 --test 200 --epochs 1    # a smoke run

Each image is a 2x2 mosaic of four random CIFAR-10 images (64x64), labelled with the set of classes
present (one to four); test mosaics are made from test images only. Both sides train ResNet-18 for
the same epochs on the same mosaics, on the CPU:

- visionzoo: `visionzoo.train("resnet18", ...)` with the default recipe (scratch: SGD with Nesterov,
  warm-up and cosine decay, the crop augmentation, sigmoid + BCE), per-class thresholds tuned on a
  held-out 10% of the training mosaics, temperature scaling;
- plain: torchvision's `resnet18(num_classes=10)`, Adam at 1e-3, `BCEWithLogitsLoss`, no augmentation,
  threshold 0.5 (and, for reference, thresholds tuned on the same held-out mosaics).

Prints test mAP and macro F1 of each. Target: visionzoo's mAP at least the plain loop's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import visionzoo
from visionzoo.data.samples import ArraySamples, DataSplits
from visionzoo.data.sources import resolve_data
from visionzoo.factory import data_config
from visionzoo.heads import probabilities
from visionzoo.metrics.calibration import head_of
from visionzoo.metrics.multilabel import multilabel_metrics, tune_thresholds

ARCHIVE = Path(os.environ.get("VISIONZOO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "cifar10-jpg.tar.gz"


def mosaics(files, count: int, seed: int) -> ArraySamples:
    """`count` 64x64 mosaics of four random images of `files` (FileSamples), labels multi-hot."""
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(files), size=(count, 4))
    images = np.empty((count, 64, 64, 3), dtype=np.uint8)
    labels = np.zeros((count, 10), dtype=np.uint8)
    for i, row in enumerate(chosen):
        for q, index in enumerate(row):
            tile = np.asarray(Image.open(files.paths[index]).convert("RGB").resize((32, 32)))
            images[i, (q // 2) * 32:(q // 2 + 1) * 32, (q % 2) * 32:(q % 2 + 1) * 32] = tile
            labels[i, files.labels[index]] = 1
    return ArraySamples(images, labels, [f"mosaic{seed}/{i}" for i in range(count)])


def logits_of(model: nn.Module, images: np.ndarray, mean, std, batch: int = 200) -> torch.Tensor:
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 255
            out.append(model((x - mean) / std).float())
    return torch.cat(out)


def plain_loop(train: ArraySamples, epochs: int, batch: int, seed: int) -> nn.Module:
    """The loop a user writes first: torchvision's ResNet-18, Adam, BCEWithLogitsLoss, no augmentation."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    images = torch.from_numpy(np.asarray(train.images)).permute(0, 3, 1, 2)
    labels = torch.from_numpy(train.labels).float()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images))
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            x = (images[index].float() / 255 - mean) / std
            loss = loss_fn(model(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def report(name: str, probs: np.ndarray, targets: np.ndarray, thresholds, classes) -> dict:
    metrics = multilabel_metrics(probs, targets, thresholds, classes)
    print(f"{name:<44} mAP {metrics['mAP']:.4f}  macro F1 {metrics['macro_f1']:.4f}  "
          f"micro F1 {metrics['micro_f1']:.4f}  exact match {metrics['exact_match']:.4f}", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000, help="training mosaics (10%% held out for thresholds)")
    parser.add_argument("--test", type=int, default=1000, help="test mosaics")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cifar = resolve_data(ARCHIVE)  # train/ and test/ class folders, unpacked once into the cache
    classes = cifar.classes
    everything = mosaics(cifar.train, args.train, args.seed)
    held_out = max(1, args.train // 10)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(args.train)
    train, val = everything.subset(np.sort(order[held_out:])), everything.subset(np.sort(order[:held_out]))
    test = mosaics(cifar.val, args.test, args.seed + 1)
    print(f"{len(train)} train / {len(val)} val / {len(test)} test mosaics at 64x64, "
          f"{args.epochs} epochs, {args.threads} threads (built in {time.perf_counter() - started:.0f} s)", flush=True)

    splits = DataSplits(classes, train, val, "CIFAR-10 mosaics", native_size=64, task="multilabel")
    with tempfile.TemporaryDirectory() as folder:
        clock = time.perf_counter()
        result = visionzoo.train("resnet18", splits, out=Path(folder) / "run", epochs=args.epochs,
                                 batch_size=args.batch_size, seed=args.seed, progress=False, tensorboard=False,
                                 plots=False)
        ours_seconds = time.perf_counter() - clock
        model = visionzoo.load_model(result.run_dir / "best")
        head = head_of(model)
        config = data_config(model)
        ours_logits = logits_of(model, np.asarray(test.images), config["mean"], config["std"]).numpy()
    clock = time.perf_counter()
    plain = plain_loop(train, args.epochs, args.batch_size, args.seed)
    plain_seconds = time.perf_counter() - clock
    plain_test = torch.sigmoid(logits_of(plain, np.asarray(test.images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    plain_val = torch.sigmoid(logits_of(plain, np.asarray(val.images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))

    print(f"test mosaics ({len(test)}):")
    ours = report(f"visionzoo resnet18, default recipe ({ours_seconds:.0f} s)", probabilities(ours_logits, head),
                  test.labels, head["thresholds"], classes)
    base = report(f"plain BCE loop, torchvision resnet18 ({plain_seconds:.0f} s)", plain_test.numpy(), test.labels,
                  None, classes)
    report("  the same, thresholds tuned on val", plain_test.numpy(), test.labels,
           tune_thresholds(plain_val.numpy(), val.labels), classes)
    verdict = "met" if ours["mAP"] >= base["mAP"] else "NOT met"
    print(f"RESULT mAP {ours['mAP']:.4f} vs plain {base['mAP']:.4f} (target >=: {verdict}); macro F1 "
          f"{ours['macro_f1']:.4f} vs {base['macro_f1']:.4f}; total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
