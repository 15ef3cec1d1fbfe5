"""CIFAR-10 from scratch on the CPU through `visionzoo.train`: test top-1 against wall-clock time.

    python benchmarks/cifar10_cpu.py                      # the full run (target: >= 88% within 10 minutes)
    python benchmarks/cifar10_cpu.py --subset 2000 --epochs 1   # a smoke run

Data: ../shared/data/cifar10-jpg.tar.gz (JPEG class folders; train/ 50k, test/ 10k), decoded once into
visionzoo's memory-mapped uint8 pixel cache; the clock includes unpacking and decoding.
Recipe (11 epochs): an airbench-shaped network at half width (`WhitenedConvNet`), bf16 autocast and
channels-last on the CPU, batch 512, SGD with Nesterov momentum, short warm-up and cosine decay,
label smoothing 0.2, pad-and-crop and flip augmentation, flip test-time augmentation. Anchor measured on the same machine: a plain
6-convolution CNN reaches 86.6% in 16 minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import visionzoo
from visionzoo.data.sources import resolve_data

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (only the shift learns) with fast-moving statistics, as in airbench."""

    def __init__(self, channels: int):
        super().__init__(channels, momentum=0.4, eps=1e-12)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU: one resolution level.

    With `dirac`, each convolution's first `c_in` filters start as the identity (airbench's
    initialisation): the group starts close to passing its input through."""

    def __init__(self, c_in: int, c_out: int, dirac: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = FrozenScaleBatchNorm(c_out)
        self.act = nn.GELU()
        if dirac:
            with torch.no_grad():
                for conv in (self.conv1, self.conv2):
                    nn.init.dirac_(conv.weight[:conv.in_channels])

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class WhitenedConvNet(nn.Module):
    """The airbench network shape (Jordan, 2024: "94% on CIFAR-10 in 3.29 seconds on a single GPU"),
    narrowed for a 2-core CPU: a frozen 2x2 patch-whitening convolution initialised from the
    training images' patch covariance, three conv groups, global max-pool, a linear head with a
    fixed logit scale of 1/9."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 128, 128), dirac: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        a, b, c = widths
        self.features = nn.Sequential(nn.GELU(), ConvGroup(24, a, dirac), ConvGroup(a, b, dirac),
                                      ConvGroup(b, c, dirac),
                                      nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_classes, bias=False)
        self.scale = 1 / 9

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, mean, std, eps: float = 5e-4) -> None:
        """images: (N, 3, H, W) uint8. The 12 eigenvectors of the 2x2 patch covariance, each scaled by
        1/sqrt(eigenvalue), and their negatives: 24 filters that decorrelate neighbouring pixels."""
        x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        patches = patches - patches.mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(12, 3, 2, 2).float()
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whiten.bias.zero_()

    def forward(self, x):
        return self.head(self.features(self.whiten(x))) * self.scale


def whitening_sample(samples, count: int = 5000) -> torch.Tensor:
    """(count, 3, 32, 32) uint8 training images for the whitening statistics: decoded from files, or
    taken from decoded arrays (the pixel cache)."""
    from visionzoo.data.decode import decode_image
    from visionzoo.data.samples import ArraySamples

    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(samples), min(count, len(samples)), replace=False))
    if isinstance(samples, ArraySamples):
        return torch.from_numpy(np.array(samples.images[chosen])).permute(0, 3, 1, 2)
    arrays = [np.asarray(decode_image(samples.paths[i]).resize((32, 32)), dtype=np.uint8) for i in chosen]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def whitened_model(widths: tuple[int, int, int], samples, num_classes: int = 10, dirac: bool = False) -> WhitenedConvNet:
    """The network with its whitening initialised from `samples` and the CIFAR-10 preprocessing attached."""
    model = WhitenedConvNet(num_classes, widths, dirac)
    model.init_whitening(whitening_sample(samples), CIFAR_MEAN, CIFAR_STD)
    data_config = {"mean": CIFAR_MEAN, "std": CIFAR_STD, "crop_pct": 1.0, "input_size": (3, 32, 32)}
    visionzoo.with_spec(model, visionzoo.ModelSpec("whitened_convnet", {}, data_config, None, None))
    return model


def subset_splits(splits, train_count: int, val_count: int) -> None:
    """Keep a fixed random `train_count` training and `val_count` test images (smoke runs), in file order."""
    rng = np.random.default_rng(0)
    splits.train = splits.train.subset(np.sort(rng.choice(len(splits.train), train_count, replace=False)))
    splits.val = splits.val.subset(np.sort(rng.choice(len(splits.val), val_count, replace=False)))


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe's knobs that both CIFAR scripts expose, with this script's defaults (cifar10_gpu.py
    sets its own with `parser.set_defaults`)."""
    parser.add_argument("--epochs", type=int, default=11)
    parser.add_argument("--lr", type=float, default=0.8)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--dirac", action=argparse.BooleanOptionalAction, default=False,
                        help="identity-initialise each convolution's first filters (airbench)")
    parser.add_argument("--norm-lr-scale", type=float, default=1.0, help="lr multiplier for BatchNorm shifts "
                        "(airbench: 64)")
    parser.add_argument("--norm-weight-decay", action=argparse.BooleanOptionalAction, default=False,
                        help="decay BatchNorm shifts and biases too, per step as much as the weights (airbench)")
    parser.add_argument("--lookahead", type=int, default=0, help="Lookahead every N steps (airbench: 5; 0: off)")
    parser.add_argument("--alternate-flip", action=argparse.BooleanOptionalAction, default=False,
                        help="mirror each image every other epoch (airbench) instead of at random")
    parser.add_argument("--schedule", default="cosine", choices=["cosine", "linear"])
    parser.add_argument("--warmup-epochs", type=float, default=None, help="default: min(1, epochs / 5)")
    parser.add_argument("--min-lr-ratio", type=float, default=0.0)
    parser.add_argument("--warmup-start-ratio", type=float, default=0.0, help="airbench: 0.2")


def recipe_settings(args: argparse.Namespace) -> dict:
    """`visionzoo.train` settings from `add_recipe_args`'s options (the model's `--dirac` aside)."""
    return dict(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                norm_lr_scale=args.norm_lr_scale, norm_weight_decay=args.norm_weight_decay, lookahead=args.lookahead,
                alternate_flip=args.alternate_flip, schedule=args.schedule, min_lr_ratio=args.min_lr_ratio,
                warmup_start_ratio=args.warmup_start_ratio,
                warmup_epochs=args.warmup_epochs if args.warmup_epochs is not None else min(1.0, args.epochs / 5))


# What both CIFAR scripts train with, whatever the recipe: SGD on the 32 px pixel cache with the
# crop preset, label smoothing 0.2, flip test-time views, channels-last; no plots or TensorBoard.
CIFAR_SETTINGS = dict(optimizer="sgd", label_smoothing=0.2, augment="crop", image_size=32, cache=True, cache_size=32,
                      tta_flip=True, channels_last=True, plots=False, tensorboard=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARCHIVE))
    parser.add_argument("--batch-size", type=int, default=512)
    add_recipe_args(parser)
    parser.add_argument("--tta-shift", type=int, default=0, help="also average test views shifted by this many pixels")
    parser.add_argument("--val-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    parser.add_argument("--ema-decay", type=float, default=0.0, help="evaluate an EMA of the weights (0: off)")
    parser.add_argument("--widths", default="32,128,128", help="channel widths of the three conv groups "
                        "(airbench94 uses 64,256,256: about 2.5x slower per epoch here)")
    parser.add_argument("--crop-padding", type=int, default=2, help="largest shift of the crop augmentation "
                        "(airbench's 2: a short schedule on a small network fits better with less augmentation)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                        help="bf16 autocast (the CPU's AVX512-BF16 doubles conv throughput here)")
    parser.add_argument("--subset", type=int, help="train on this many images (smoke runs)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the model's initialisation, the augmentation and the order")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    splits = resolve_data(args.data)
    if args.subset:
        subset_splits(splits, args.subset, max(args.subset // 5, 10))
    unpacked = time.perf_counter() - started
    model = whitened_model(tuple(int(w) for w in args.widths.split(",")), splits.train, len(splits.classes),
                           args.dirac)
    print(f"recipe: batch {args.batch_size}, {recipe_settings(args)}, dirac {args.dirac}", flush=True)
    result = visionzoo.train(model, splits, out=args.out, batch_size=args.batch_size, **CIFAR_SETTINGS,
                             **recipe_settings(args), crop_padding=args.crop_padding, tta_shift=args.tta_shift,
                             val_every=args.val_every, workers=args.workers, ema=args.ema_decay > 0,
                             ema_decay=args.ema_decay or 0.9998, precision=args.precision, progress=True,
                             device="cpu", seed=args.seed)
    total = time.perf_counter() - started
    print(f"\ncifar10_cpu: {len(splits.train)} train / {len(splits.val)} test images, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")
    print(f"  unpack/list {unpacked:.1f}s")
    for record in result.history:
        tested = f"test top-1 {100 * record['val_top1']:.2f}%" if "val_top1" in record else "not evaluated  "
        print(f"  epoch {record['epoch']:>2}: {tested}  train {record['img_per_s']:.0f} img/s")
    print(f"RESULT test top-1 {100 * (result.best_metric or 0):.2f}% (best epoch) in {total / 60:.1f} min wall "
          f"(decoding included); target >= 88% within 10 min; anchor 86.6% in 16 min")


if __name__ == "__main__":
    main()
