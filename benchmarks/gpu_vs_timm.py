"""GPU throughput against timm: bf16, channels_last, batch 256, inference and training, eager and compiled.

For resnet50, vit_base_patch16_224 and convnext_tiny. Ours and timm's are measured interleaved in
the same process (CUDA timed with events after synchronisation); the target is at least timm's
figure in every cell. The issue's anchors (an H200, timm 1.0.29, PyTorch 2.11) are printed beside
them for context: they come from another software stack, so only the same-run ratio decides.

    python benchmarks/gpu_vs_timm.py [--models ...] [--batch 256] [--backends eager,compile]
    python benchmarks/gpu_vs_timm.py --smoke     # resnet18, batch 2, eager, on whatever device there is

The issue anchors compiled figures for resnet50 only; compiling costs about a minute per model
and mode, so `--compile-models` (default resnet50) chooses which models the compile backend runs.
"""

from __future__ import annotations

import argparse
import traceback

import torch

from visionzoo.choose.benchmark import BenchmarkSettings, benchmark_model, environment

MODELS = ["resnet50", "vit_base_patch16_224", "convnext_tiny"]
# (model, backend) -> (inference, training) images/s on an H200, from the issue
ANCHORS = {("resnet50", "eager"): (15577, 4726), ("resnet50", "compile"): (23824, 6813),
           ("vit_base_patch16_224", "eager"): (9117, 2747), ("convnext_tiny", "eager"): (8280, 3089)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--compile-models", default="resnet50",
                        help="models the compile backend runs ('all': every one)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--backends", default="eager,compile")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="resnet18, batch 2, eager, any device: checks the script runs")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        args.models, args.batch, args.backends, args.seconds = "resnet18", 2, "eager", 0.2
    elif device != "cuda":
        raise SystemExit("no CUDA GPU visible: this benchmark needs one (or --smoke)")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ratios = []
    for number, backend in enumerate(args.backends.split(",")):
        settings = BenchmarkSettings(device=device, batch_sizes=(args.batch,), precision="bf16", backend=backend,
                                     train=True, vs_timm=True, min_seconds=args.seconds, min_repeats=10, warmup=5)
        if number == 0:
            print(" ".join(f"{k}={v}" for k, v in environment(settings).items()), flush=True)
        models = args.models.split(",")
        if backend == "compile" and args.compile_models != "all":
            models = [m for m in models if m in args.compile_models.split(",")]
        for name in models:
            try:
                result = benchmark_model(name, settings, use_cache=False)
            except Exception:  # one model's failure must not cost the other cells of a short GPU lease
                print(f"{backend:8s} {name:22s} FAILED:\n{traceback.format_exc()}", flush=True)
                continue
            timm_infer = float(result.timm["throughput"][str(args.batch)])
            timm_train = float(result.timm["train_throughput"])
            ours_infer, ours_train = result.throughput[args.batch], result.train_throughput
            ratios += [ours_infer / timm_infer, ours_train / timm_train]
            anchor = ANCHORS.get((name, backend))
            anchor_text = f" | issue anchor infer {anchor[0]} train {anchor[1]}" if anchor else ""
            print(f"{backend:8s} {name:22s} infer ours {ours_infer:9.0f} timm {timm_infer:9.0f} img/s "
                  f"(ours/timm {ours_infer / timm_infer:.3f}) | train ours {ours_train:8.0f} timm {timm_train:8.0f} "
                  f"img/s (ours/timm {ours_train / timm_train:.3f}){anchor_text}", flush=True)
    if ratios:
        print(f"RESULT worst throughput ratio ours/timm {min(ratios):.3f} over {len(ratios)} cells "
              f"(target >= 1.0 in each)")


if __name__ == "__main__":
    main()
