"""How long k-NN and linear probes take on cached features of tens of thousands of images.

Synthetic embeddings (Gaussian class clusters in D dimensions) stand in for a backbone's output:
the probes' cost depends only on N, D and the number of classes.

    python benchmarks/probe_speed.py [--n 20000] [--dim 768] [--classes 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from visionzoo.embed.embeddings import Embeddings
from visionzoo.embed.probe import run_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(args.classes, args.dim, generator=generator)
    labels = torch.arange(args.n) % args.classes
    features = centres[labels] + 8.0 * torch.randn(args.n, args.dim, generator=generator)
    data = Embeddings(embeddings=features, labels=labels, paths=[f"{i}.jpg" for i in range(args.n)],
                      classes=[f"c{i}" for i in range(args.classes)])
    print(f"{args.n} embeddings of dimension {args.dim}, {args.classes} classes, {torch.get_num_threads()} threads")
    for method in ("knn", "linear"):
        start = time.perf_counter()
        result = run_probe(data, method=method)
        print(f"{method:6s}: {time.perf_counter() - start:6.1f} s (hyperparameter sweep, refit and evaluation "
              f"included), top-1 {100 * result.top1:.1f}%")


if __name__ == "__main__":
    main()
