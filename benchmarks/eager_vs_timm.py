"""Our eager latency over timm's, on this CPU (target: at most 1.0 for each model).

Same weights, same input; the two models run in interleaved repetitions (visionzoo.choose.benchmark with
vs_timm=True) and the ratio of medians is printed per model and batch size.

    python benchmarks/eager_vs_timm.py [--models ...] [--batch-sizes 1,8] [--seconds 3]
"""

from __future__ import annotations

import argparse
import math

import torch

from visionzoo.choose.benchmark import BenchmarkSettings, benchmark_model, environment

MODELS = ["resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "vit_small_patch16_224",
          "swin_tiny_patch4_window7_224"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    settings = BenchmarkSettings(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), vs_timm=True,
                                 threads=args.threads, min_seconds=args.seconds, min_repeats=10)
    print(" ".join(f"{k}={v}" for k, v in environment(settings).items()))
    per_batch: dict[int, list[float]] = {b: [] for b in settings.batch_sizes}
    for name in args.models.split(","):
        result = benchmark_model(name, settings, use_cache=False)
        ratios = result.timm["ratio_ours_over_timm"]
        cells = []
        for batch in settings.batch_sizes:
            ours_ms = batch * 1e3 / result.throughput[batch]
            timm_ms = batch * 1e3 / float(result.timm["throughput"][str(batch)])
            ratio = ratios[f"time_b{batch}"]
            per_batch[batch].append(ratio)
            cells.append(f"b{batch}: ours {ours_ms:8.2f} ms, timm {timm_ms:8.2f} ms, ratio {ratio:.3f}")
        print(f"{name:30s} " + " | ".join(cells), flush=True)
    for batch, values in per_batch.items():
        geo = math.exp(sum(math.log(v) for v in values) / len(values))
        print(f"batch {batch}: geometric mean ours/timm {geo:.3f}, worst {max(values):.3f}")


if __name__ == "__main__":
    main()
