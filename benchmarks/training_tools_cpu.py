"""EMA, test-time augmentation and a greedy soup against the default fine-tune, on the transfer
benchmark's photos (a sibling of transfer_cpu.py, whose data and weights it reuses).

    python benchmarks/training_tools_cpu.py [--quick] [--threads 2] [--work DIR]

Arms, in one process, one after another, on the same data (5 CIFAR-10 classes, `transfer_cpu.prepare`)
and the real EfficientNet-Lite0 ImageNet weights:

- default: `visionzoo.train("efficientnet_lite0", DATA, pretrained=FILE)` (the `auto` recipe);
- ema: the same with `ema=True` (best/ holds whichever of the EMA and the raw weights validated
  better; the summary says which);
- tta: the default run's best/ evaluated with `tta_flip=True` (no training of its own);
- soup: the greedy soup (`visionzoo.soup`) of the default run and two more from the same weights
  (seeds 1 and 2, lr x0.5 and x2); its time counts the three runs.

Each arm prints its val top-1 and wall time. The val images also choose best/ (and the soup's
ingredients), as in transfer_cpu.py, so the figures favour every arm alike. `--quick`: 10 training
and 20 val photos per class at 96 px, 2 epochs, for a check that the script runs; its figures say little.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_cpu import prepare, weight_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small set at 128 px: checks that the script runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ema-decay", type=float, default=0.99, help="the EMA arm's decay (default: 0.99)")
    parser.add_argument("--work", help="folder for data and runs (default: a temporary folder)")
    args = parser.parse_args()
    import torch

    import visionzoo
    from visionzoo.evaluation import evaluate

    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vz-tools-"))
    size = 96 if args.quick else 224
    data = prepare(work, size, train_per_class=10 if args.quick else 60, val_per_class=20 if args.quick else 1000)
    weights = weight_file("lite0")
    common = dict(pretrained=weights, image_size=size, progress=False, plots=False, tensorboard=False, overwrite=True,
                  **({"epochs": 2} if args.quick else {}))
    results = {}

    def run(name: str, **settings) -> tuple[Path, float]:
        started = time.perf_counter()
        result = visionzoo.train("efficientnet_lite0", str(data), out=work / name, **common, **settings)
        return result.run_dir, time.perf_counter() - started

    default_dir, seconds = run("default")
    default_top1 = json.loads((default_dir / "summary.json").read_text())["best_val_top1"]
    results["default"] = (default_top1, seconds, "")
    ema_dir, seconds = run("ema", ema=True, ema_decay=args.ema_decay)
    summary = json.loads((ema_dir / "summary.json").read_text())
    results["ema"] = (summary["best_val_top1"], seconds, f"best/ holds the {summary.get('best_weights')} weights")
    started = time.perf_counter()
    tta = evaluate(default_dir, str(data), tta_flip=True, image_size=size)
    results["tta (flip)"] = (tta["top1"], time.perf_counter() - started, "evaluation only, of the default run")
    lr = json.loads((default_dir / "config.json").read_text())["resolved"]["lr"]
    seconds_all = results["default"][1]
    ingredients = [default_dir]
    for seed, scale in ((1, 0.5), (2, 2.0)):
        run_dir, seconds = run(f"seed{seed}", seed=seed, lr=lr * scale)
        ingredients.append(run_dir)
        seconds_all += seconds
    started = time.perf_counter()
    soup = visionzoo.soup(ingredients, out=work / "soup", overwrite=True)
    results["greedy soup of 3"] = (soup.score, seconds_all + time.perf_counter() - started,
                                   f"{len(soup.chosen)} runs kept; runs alone: "
                                   + ", ".join(f"{v:.2%}" for v in soup.ingredients.values()))
    print(f"\nEfficientNet-Lite0, {'quick' if args.quick else 'full'} set ({data.name}), {args.threads} threads")
    print(f"{'arm':<18} {'val top-1':>9} {'wall s':>8}  notes")
    for name, (top1, seconds, note) in results.items():
        print(f"{name:<18} {top1:>9.2%} {seconds:>8.1f}  {note}")


if __name__ == "__main__":
    main()
