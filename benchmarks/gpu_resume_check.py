"""On a CUDA machine: a run interrupted mid-epoch and resumed from its JSON + safetensors checkpoint
ends on exactly the weights of the uninterrupted run, with the CUDA generators' states restored.

    PYTHONPATH=src python3 benchmarks/gpu_resume_check.py [--device cuda]

Prints one line per check and exits non-zero when one fails. This is the GPU counterpart of
tests/training/test_train.py's resume tests, which run on the CPU: it checks that the checkpoint
format (issue 28: no pickle) stores the CUDA RNG states and the optimizer state of tensors that
live on the GPU, and that a resume continues bit for bit under `deterministic=True`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

import visionzoo
from visionzoo.training.checkpoint import load_checkpoint

DATA = "builtin:shapes?size=32&train=256&val=64"


class SmallNet(nn.Module):
    """A conv net with BatchNorm and dropout: both the CUDA RNG (dropout) and buffers matter."""

    def __init__(self, num_classes: int = 10, stop_at: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(32, num_classes)
        self.calls, self.stop_at = 0, stop_at

    def forward(self, x):
        if self.training and self.stop_at is not None:
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
        return self.fc(self.dropout(self.features(x)))


def run(out: Path, device: str, stop_at: int | None = None):
    torch.manual_seed(0)
    return visionzoo.train(SmallNet(stop_at=stop_at), DATA, out=out, epochs=2, batch_size=32, lr=0.05, device=device,
                           deterministic=True, ema=True, workers=0, progress=False, plots=False, tensorboard=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        begin = time.perf_counter()
        run(root / "whole", args.device)
        print(f"uninterrupted run: {time.perf_counter() - begin:.1f} s on {args.device}"
              f" ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'})")
        interrupted = run(root / "cut", args.device, stop_at=11)  # 8 steps an epoch: stops in epoch 2
        _, state = load_checkpoint(root / "cut" / "checkpoint")
        checkpoint_files = sorted(p.name for p in (root / "cut" / "checkpoint").iterdir())
        print(f"interrupted: {interrupted.interrupted}; checkpoint files {checkpoint_files}")
        has_cuda_rng = args.device != "cuda" or bool(state["rng"].get("cuda"))
        no_pickle = not any(name.endswith(".pt") for name in checkpoint_files)
        print(f"checkpoint holds the CUDA RNG states: {has_cuda_rng}; no pickle in the folder: {no_pickle}")
        failures += (not has_cuda_rng) + (not no_pickle) + (not interrupted.interrupted)
        torch.manual_seed(123)  # the resume must not depend on the process's own generator state
        visionzoo.train(SmallNet(), None, resume=root / "cut", progress=False)
        whole = load_file(str(root / "whole" / "last" / "model.safetensors"))
        resumed = load_file(str(root / "cut" / "last" / "model.safetensors"))
        differing = [key for key in whole if not torch.equal(whole[key], resumed[key])]
        print(f"resumed run equals the uninterrupted run bit for bit: {not differing} "
              f"({len(whole)} tensors{', differing: ' + ', '.join(differing[:5]) if differing else ''})")
        failures += bool(differing)
        history = [json.loads(line) for line in (root / "whole" / "metrics.jsonl").read_text().splitlines()] \
            if (root / "whole" / "metrics.jsonl").exists() else []
        if history:
            print(f"last epoch of the uninterrupted run: {history[-1]}")
    print("PASS" if failures == 0 else f"FAIL ({failures} checks)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
