"""airbench94 on the CPU in visionzoo's precision: a calibration of the CIFAR-10 recipe, not a target.

    pip install airbench==0.1.8
    python benchmarks/airbench_cpu.py [--seed 0] [--epochs 9.9]     # about 18 minutes on 2 cores
    python benchmarks/airbench_cpu.py --smoke                        # 2,000 images, a fraction of an epoch

#7's GPU target compares cifar10_gpu.py's recipe with airbench94 on a GPU, where airbench keeps fp16
weights and visionzoo trains fp32 weights under bf16 autocast. This script takes precision and
hardware out of that comparison: it runs airbench94's own network (`make_net94`), loader
(`CifarLoader`: pre-padded reflect crops, alternating flips), whitening initialisation, Lookahead
and TTA evaluation from the airbench package, driven by a loop that follows airbench's `train()`
step for step (Nesterov SGD with its per-1024-example units, BatchNorm shifts at 64x the lr, the
0.2 -> 1 -> 0.07 triangle peaking at 23%, Lookahead every 5 steps, the whitening bias frozen after
3 epochs), but on the CPU with fp32 weights, bf16 autocast and channels-last: the regime in which
cifar10_cpu.py measured visionzoo's version of the recipe. Same JPEG data as both CIFAR scripts.

Measured on this 2-core machine: 90.59% and 90.66% with airbench's TTA (seeds 0 and 1), where
visionzoo's recipe gave 90.73% and 90.57% (seeds 0 and 1, cifar10_cpu.py at airbench's width with
cifar10_gpu.py's settings): the same accuracy.
"""

from __future__ import annotations

import argparse
import os
import time
from math import ceil

import numpy as np
import torch
import torch.nn as nn

from cifar10_cpu import ARCHIVE, subset_splits
from cifar10_gpu import write_airbench_data
from visionzoo.data.sources import resolve_data


def cpu_net(make_net) -> nn.Module:
    """airbench's network with fp32 weights on the CPU: its builder calls .half() and .cuda(), which are
    made no-ops while it runs."""
    cuda, half = nn.Module.cuda, nn.Module.half
    nn.Module.cuda = nn.Module.half = lambda self, *args, **kwargs: self
    try:
        model = make_net()
    finally:
        nn.Module.cuda, nn.Module.half = cuda, half
    return model.float().to(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARCHIVE))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=None, help="default: airbench94's 9.9")
    parser.add_argument("--smoke", action="store_true", help="2,000 training images, 500 test images, 0.2 epochs")
    args = parser.parse_args()
    from airbench import lib_airbench94 as airbench94
    from airbench import utils

    hyp = airbench94.hyp["opt"]
    epochs = args.epochs or (0.2 if args.smoke else hyp["train_epochs"])
    torch.manual_seed(args.seed)
    splits = resolve_data(args.data)
    if args.smoke:
        subset_splits(splits, 2000, 500)
    os.chdir(write_airbench_data(splits))  # airbench reads ./cifar10/{train,test}.pt

    def loader(train: bool):
        data = utils.CifarLoader("cifar10", train=train, batch_size=hyp["batch_size"] if train else 2000,
                                 aug=airbench94.hyp["aug"] if train else None, altflip=True, gpu="cpu")
        data.images = data.images.float()  # it stores fp16 pixels for the GPU
        return data

    train_loader, test_loader = loader(True), loader(False)
    model = cpu_net(airbench94.make_net94)
    # airbench's units: lr and weight decay per 1024 examples, summed loss, Nesterov momentum
    momentum = hyp["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = hyp["lr"] / kilostep_scale
    weight_decay = hyp["weight_decay"] * hyp["batch_size"] / kilostep_scale
    lr_norm = lr * hyp["bias_scaler"]
    norms = [p for name, p in model.named_parameters() if "norm" in name and p.requires_grad]
    others = [p for name, p in model.named_parameters() if "norm" not in name and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norms, lr=lr_norm, weight_decay=weight_decay / lr_norm),
                                 dict(params=others, lr=lr, weight_decay=weight_decay / lr)],
                                momentum=momentum, nesterov=True)
    total = ceil(len(train_loader) * epochs)
    triangle = np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(triangle[step]))
    lookahead_decay = 0.95 ** 5 * (torch.arange(total + 1) / total) ** 3
    lookahead = utils.LookaheadState(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=hyp["label_smoothing"], reduction="none")

    started = time.perf_counter()
    utils.init_whitening_conv(model[0], train_loader.normalize(train_loader.images[:5000]))
    step = 0
    for epoch in range(ceil(epochs)):
        model[0].bias.requires_grad = epoch < hyp["whiten_bias_epochs"]
        model.train()
        for inputs, labels in train_loader:
            with torch.autocast("cpu", torch.bfloat16):
                logits = model(inputs.contiguous(memory_format=torch.channels_last))
            loss = loss_fn(logits.float(), labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 5 == 0:
                lookahead.update(model, decay=lookahead_decay[step].item())
            if step >= total:
                lookahead.update(model, decay=1.0)
                break
        print(f"epoch {epoch + 1}: {time.perf_counter() - started:.0f}s", flush=True)
    elapsed = time.perf_counter() - started
    with torch.autocast("cpu", torch.bfloat16):
        tta = utils.evaluate(model, test_loader, tta_level=2)
        plain = utils.evaluate(model, test_loader, tta_level=0)
    print(f"RESULT airbench94 on the CPU (fp32 weights, bf16 autocast), seed {args.seed}, {epochs} epochs: "
          f"{100 * tta:.2f}% with its TTA (flip and 1-pixel shifts), {100 * plain:.2f}% without, "
          f"training {elapsed:.0f}s", flush=True)


if __name__ == "__main__":
    main()
