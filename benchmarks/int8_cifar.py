"""int8 accuracy on the shared CIFAR-10 for both quantisation schemes: top-1 before and after.

For each model: a short from-scratch training run through `visionzoo.train` (32 px, pixel
cache, bf16), then `export_model(..., int8=True)` with the scheme `auto` picks, calibrated
(static scheme) on 256 training images, and top-1 of the fp32 and int8 ONNX files on the
10,000 test images. Target (#9): a drop of at most 1 point.

    python benchmarks/int8_cifar.py [--epochs 3]

Default models: resnet18 (convolutions: static QDQ) and convnext_atto with linear MLPs
(`conv_mlp=False`: matrix products dominate, so dynamic int8).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import visionzoo
from visionzoo.data.sources import resolve_data
from visionzoo.deploy.export import export_model

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
MODELS = {
    "resnet18": ({}, dict(optimizer="sgd", lr=0.2, weight_decay=5e-4)),
    "convnext_atto": ({"conv_mlp": False}, dict(optimizer="adamw", lr=2e-3, weight_decay=0.05)),
}


def train_cifar_model(name: str, splits, epochs: int):
    """`name` trained from scratch on the CIFAR-10 splits (32 px, this script's recipe); returns
    (model in fp32 eval mode, minutes taken). `cpu_deploy.py --cifar-train` reuses it."""
    overrides, recipe = MODELS[name]
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=len(splits.classes), **overrides)
    visionzoo.with_spec(model, class_names=splits.classes)
    started = time.perf_counter()
    visionzoo.train(model, splits, epochs=epochs, batch_size=256, image_size=32, augment="crop", cache=True,
                    cache_size=32, precision="bf16", channels_last=True, progress=False, plots=False,
                    tensorboard=False, out=tempfile.mkdtemp(prefix="vz-int8-"), **recipe)
    trained = (time.perf_counter() - started) / 60
    return model.float().eval().to(memory_format=torch.contiguous_format), trained


def cifar_folders(data: str):
    """(splits, train folder, test folder) of the CIFAR-10 archive or folder `data`."""
    splits = resolve_data(data)
    return splits, Path(splits.train.paths[0]).parents[1], Path(splits.val.paths[0]).parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARCHIVE))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--save", metavar="DIR", help="also save each trained model as DIR/NAME (visionzoo.save_model)")
    args = parser.parse_args()
    splits, train_dir, test_dir = cifar_folders(args.data)
    for name in args.models.split(","):
        model, trained = train_cifar_model(name, splits, args.epochs)
        if args.save:
            visionzoo.save_model(model, Path(args.save) / name)
        overrides = MODELS[name][0]
        report = export_model(model, Path(tempfile.mkdtemp()) / f"{name}.onnx", img_size=32, int8=True,
                              calib_dir=train_dir, calib_count=256, eval_dir=test_dir)
        print(f"RESULT {name}{overrides or ''}: {report.int8_scheme}, trained {args.epochs} epochs in {trained:.1f} min; "
              f"test top-1 fp32 {100 * report.top1_fp32:.2f}%, int8 {100 * report.top1_int8:.2f}%, "
              f"drop {100 * (report.top1_fp32 - report.top1_int8):.2f} points (target <= 1)", flush=True)


if __name__ == "__main__":
    main()
