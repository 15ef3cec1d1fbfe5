"""GPU throughput against timm: bf16, channels_last, batch 256, inference and training, eager and compiled.

For resnet50, vit_base_patch16_224 and convnext_tiny (the issue's anchor, H200 with timm 1.0.29 and
PyTorch 2.11: resnet50 infer 15,577 / train 4,726 img/s eager, 23,824 / 6,813 compiled; vit_base infer
9,117 / train 2,747; convnext_tiny infer 8,280 / train 3,089). Ours and timm's are measured
interleaved in the same process; CUDA timed with events after synchronisation.

    python benchmarks/gpu_vs_timm.py [--models ...] [--batch 256] [--backends eager,compile]
"""

from __future__ import annotations

import argparse

import torch

from visionzoo.benchmark import BenchmarkSettings, benchmark_model, environment

MODELS = ["resnet50", "vit_base_patch16_224", "convnext_tiny"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--backends", default="eager,compile")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this benchmark needs one")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    for backend in args.backends.split(","):
        settings = BenchmarkSettings(device="cuda", batch_sizes=(args.batch,), precision="bf16", backend=backend,
                                     train=True, vs_timm=True, min_seconds=args.seconds, min_repeats=10, warmup=5)
        if backend == args.backends.split(",")[0]:
            print(" ".join(f"{k}={v}" for k, v in environment(settings).items()), flush=True)
        for name in args.models.split(","):
            r = benchmark_model(name, settings, use_cache=False)
            t = r.timm
            print(f"{backend:8s} {name:22s} infer ours {r.throughput[args.batch]:9.0f} timm "
                  f"{float(t['throughput'][str(args.batch)]):9.0f} img/s (ratio {r.throughput[args.batch] / float(t['throughput'][str(args.batch)]):.3f}) | "
                  f"train ours {r.train_throughput:8.0f} timm {t['train_throughput']:8.0f} img/s "
                  f"(ratio {r.train_throughput / t['train_throughput']:.3f})", flush=True)


if __name__ == "__main__":
    main()
