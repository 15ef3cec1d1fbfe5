"""The kernels our models dispatch against timm's: a GPU-free check of #8's "same mathematics, no overhead".

On a GPU at batch 256 a network's speed is its kernels: with the same operators in the same
number, ours does the same work as timm's. This script counts the ATen operators each model
dispatches (a `TorchDispatchMode` on the CPU; batch 2, since BatchNorm needs two samples to
train; channels_last; timm's random weights loaded into ours) for an eval forward and for a
training forward and backward. Per model it prints the totals of compute operators (all but
views and other metadata-only ones, which launch no kernel) and the operators whose counts
differ.

Where ours calls `scaled_dot_product_attention` and timm spells attention out (timm's Swin and
EfficientViT-M by default), the counts depend on the device: on the CPU, SDPA runs one fused
kernel where it can and otherwise its math path, a few more operators than timm's; on a GPU it
takes its fused kernels. Read those rows as CPU figures.

    python benchmarks/dispatch_vs_timm.py [--models resnet50,convnext_tiny,...]
"""

from __future__ import annotations

import argparse

import torch

import visionzoo
from visionzoo.measure import METADATA_OPERATORS, compute_operators, count_operators

MODELS = ["resnet50", "vit_base_patch16_224", "convnext_tiny", "efficientnet_b0", "mobilenetv3_large_100",
          "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "efficientvit_b0", "efficientvit_m0",
          "maxvit_tiny_tf_224", "eva02_tiny_patch14_224", "densenet121", "deit_tiny_distilled_patch16_224"]


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, timm {timm.__version__}; batch 2, channels_last, CPU")
    more = []
    for name in args.models.split(","):
        size = visionzoo.model_info(name)["input_size"]
        reference = timm.create_model(name).to(memory_format=torch.channels_last)
        ours = visionzoo.create_model(name).to(memory_format=torch.channels_last)
        ours.load_state_dict(reference.state_dict())
        for mode, train in (("eval forward", False), ("train step", True)):
            theirs_counts, ours_counts = (count_operators(model, size, train=train, channels_last=True)
                                          for model in (reference, ours))
            theirs_total, ours_total = compute_operators(theirs_counts), compute_operators(ours_counts)
            print(f"{name:32s} {mode:13s} compute operators: timm {theirs_total:5d}, ours {ours_total:5d}")
            for op in sorted(set(theirs_counts) | set(ours_counts)):
                if op not in METADATA_OPERATORS and theirs_counts[op] != ours_counts[op]:
                    print(f"    {op:40s} timm {theirs_counts[op]:5d}  ours {ours_counts[op]:5d}")
            if ours_total > theirs_total:
                more.append(f"{name} ({mode}: {ours_total} vs {theirs_total})")
    print(f"RESULT models where ours dispatches more compute operators than timm: {', '.join(more) or 'none'}")


if __name__ == "__main__":
    main()
