"""Batch-1 CPU latency of the edge families (MobileNetV4, FastViT, MobileOne, RepViT) against
MobileNetV3-Large, each in visionzoo's best engine here and as timm's own eager model, in one run.

For each model: our model with timm's (random) weights; `choose_engine` (what `--engine auto` runs)
measures the engines here and picks the fastest within the accuracy rule (with random weights and
synthetic images the rule is only exercised: the bf16 and int8 choices are speed figures, not
accuracy claims); a re-parameterisable network runs fused, as deployed. Then the chosen engine and
timm's eager model are timed in alternating blocks (`visionzoo.measure.time_in_blocks`), medians
in ms, with the ratio to timm eager (same model, same run) and to mobilenetv3_large_100 in its best
engine. The 1-minute load average is printed beside each row and `uptime` before and after:
figures taken at a load above the core count are not idle measurements.

    python benchmarks/edge_cpu.py [--models mobilenetv4_conv_small,...] [--seconds 3] [--threads 2]
    python benchmarks/edge_cpu.py --seconds 0.2 --choice-seconds 0.2   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import visionzoo
from visionzoo.deploy.engines import ENGINES, Artifacts, choose_engine, create_engine
from visionzoo.factory import is_reparameterizable
from visionzoo.measure import time_in_blocks

sys.path.insert(0, str(Path(__file__).parent))
from cpu_deploy import calibration_folder  # noqa: E402

BASELINE = "mobilenetv3_large_100"
MODELS = ["mobilenetv4_conv_small", "fastvit_t8", "mobileone_s0", "repvit_m1_0"]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def measure(name: str, args, calibration: list[Path], folder: Path) -> dict:
    """The chosen engine's and timm eager's medians (ms) at batch 1, timed in alternating blocks."""
    import timm

    reference = timm.create_model(name, pretrained=False).eval()
    ours = visionzoo.create_model(name).eval()
    ours.load_state_dict(reference.state_dict())  # unfused: the published (and timm's) layout
    artifacts = Artifacts(ours, calibration=calibration, folder=folder)  # fused when re-parameterisable
    candidates = [e for e in args.engines.split(",")] if args.engines != "auto" else None
    choice = choose_engine(artifacts, candidates, seconds=args.choice_seconds, threads=args.threads)
    engine = create_engine(choice.chosen, artifacts, threads=args.threads)
    engine.load()
    size = visionzoo.model_info(name)["input_size"][1]
    x = torch.randn(1, 3, size, size)
    xn = x.numpy()

    def timm_eager():
        with torch.inference_mode():
            reference(x)

    load = os.getloadavg()[0]
    times = time_in_blocks({"timm": timm_eager, "ours": lambda: engine.run(xn)}, args.seconds)
    return {"name": name, "engine": choice.chosen, "fused": is_reparameterizable(ours),
            "ours": statistics.median(times["ours"]), "timm": statistics.median(times["timm"]),
            "repeats": len(times["ours"]), "load": load, "skipped": choice.skipped,
            "left_out": {row.engine: row.reason for row in choice.rows if not row.eligible}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (the baseline, {BASELINE}, "
                                                                   "is always measured)")
    parser.add_argument("--engines", default="auto",
                        help=f"candidates for the choice, comma-separated from {', '.join(ENGINES)}; "
                             "auto: every engine that runs here but compile (default)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model (chosen engine + timm)")
    parser.add_argument("--choice-seconds", type=float, default=2.0, help="timed seconds for the engine choice")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calib-count", type=int, default=8, help="synthetic calibration images (int8 engines)")
    args = parser.parse_args()

    import timm

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, visionzoo {visionzoo.__version__}, "
          f"threads {args.threads}, cores {os.cpu_count()}; batch 1, random weights (timm's, loaded into ours)")
    print(f"before: {uptime()}", flush=True)
    registered = set(visionzoo.list_models())
    names = []
    for name in [BASELINE, *[n.strip() for n in args.models.split(",") if n.strip() and n.strip() != BASELINE]]:
        if name not in registered:
            print(f"{name}: skipped: not registered in this visionzoo (its model file is not in the tree yet)")
        elif not timm.is_model(name):
            print(f"{name}: skipped: timm {timm.__version__} has no model of that name to compare with")
        else:
            names.append(name)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vz-edge-") as tmp:
        calibration = sorted(calibration_folder(Path(tmp), args.calib_count).glob("*.png"))
        for name in names:
            row = measure(name, args, calibration, Path(tmp) / name)
            rows.append(row)
            print(f"{name:24s} {row['engine']}{' (fused)' if row['fused'] else ''}: {row['ours']:.2f} ms, "
                  f"timm eager {row['timm']:.2f} ms ({row['ours'] / row['timm']:.2f}x), "
                  f"{row['repeats']} repeats, load {row['load']:.2f}", flush=True)
            for engine_name, reason in {**row["skipped"], **row["left_out"]}.items():
                print(f"{'':24s} not chosen: {engine_name}: {reason}")
    baseline = next((r for r in rows if r["name"] == BASELINE), None)
    print(f"\nbatch 1, ms (median); ratios: ours / timm eager, and ours / {BASELINE} in its best engine")
    print(f"| model | best engine | ours | timm eager | ours / timm | / {BASELINE} | timm / timm {BASELINE} | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        versus = f"{r['ours'] / baseline['ours']:.2f}x" if baseline else "-"
        timm_versus = f"{r['timm'] / baseline['timm']:.2f}x" if baseline else "-"
        print(f"| {r['name']} | {r['engine']}{' (fused)' if r['fused'] else ''} | {r['ours']:.2f} | {r['timm']:.2f} | "
              f"{r['ours'] / r['timm']:.2f}x | {versus} | {timm_versus} | {r['load']:.2f} |")
    print(f"after: {uptime()}")
    if any(r["load"] > (os.cpu_count() or 1) * 0.5 for r in rows):
        print(f"note: the load average was above half of the {os.cpu_count()} cores during the run: "
              "these are not idle measurements")


if __name__ == "__main__":
    main()
