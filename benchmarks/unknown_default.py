"""Should the default reject "unknown" images? (issue 30)

Fine-tunes the real EfficientNet-Lite0 weights with the default command on transfer_cpu.py's
5 CIFAR-10 classes (60 training photos each), then predicts, as a user would, the 1,000 test
photos of each of those classes (known: a rejection there is a false alarm) and the 1,000 test
photos of each of the other 5 classes (unknown: a rejection there is a catch). Prints the share
rejected in each, top-1 on the known photos kept and rejected, and what the default's 95% keep
rule costs against no rule.

    python benchmarks/unknown_default.py [--work DIR] [--test-per-class 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_cpu import ARCHIVE, CLASSES, prepare, weight_file  # noqa: E402

OTHER_CLASSES = ("dog", "frog", "horse", "ship", "truck")


def unknown_photos(root: Path, size: int, per_class: int) -> Path:
    """The test photos of the 5 classes the model never saw, at the training size."""
    from io import BytesIO

    from PIL import Image

    target = root / f"cifar-other5-{size}px-{per_class}"
    if (target / "done").exists():
        return target
    counts: dict[str, int] = {}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] != "test" or parts[2] not in OTHER_CLASSES:
                continue
            if counts.get(parts[2], 0) >= per_class:
                continue
            counts[parts[2]] = counts.get(parts[2], 0) + 1
            image = Image.open(BytesIO(tar.extractfile(member).read())).convert("RGB")
            destination = target / parts[2] / parts[3]
            destination.parent.mkdir(parents=True, exist_ok=True)
            image.resize((size, size), Image.BICUBIC).save(destination, quality=95)
    (target / "done").write_text("")
    return target


def predict(model: Path, folder: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "visionzoo.cli", "predict", str(model), str(folder), "--json",
                          "--topk", "1", "--batch-size", "32"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and the run (default: a temp dir)")
    parser.add_argument("--test-per-class", type=int, default=1000)
    args = parser.parse_args()
    if not ARCHIVE.exists():
        print(f"needs {ARCHIVE}")
        return 1
    work = args.work or Path(tempfile.mkdtemp(prefix="unknown-default-"))
    size = 224
    data = prepare(work, size, val_per_class=args.test_per_class)
    other = unknown_photos(work, size, args.test_per_class)
    run = work / "run"
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-m", "visionzoo.cli", "train", "--model", "efficientnet_lite0", "--pretrained",
                    weight_file("lite0"), "--data", str(data), "--out", str(run), "--overwrite", "--no-progress"],
                   check=True, capture_output=True, text=True)
    print(f"fine-tuned Lite0 on {', '.join(CLASSES)} (60 photos each) in {time.perf_counter() - begin:.0f} s")
    head = json.loads((run / "best" / "config.json").read_text())["head"]
    print(f"saved rule: {head.get('ood')}")
    known = predict(run, data / "val")
    unknown = predict(run, other)
    truth = [Path(r["path"]).parent.name for r in known]
    right = [r["predictions"][0]["label"] == t for r, t in zip(known, truth)]
    rejected = [bool(r.get("unknown")) for r in known]
    kept_right = [ok for ok, no in zip(right, rejected) if not no]
    rejected_right = [ok for ok, no in zip(right, rejected) if no]
    caught = sum(bool(r.get("unknown")) for r in unknown)
    print(f"known photos: {len(known)}; top-1 {sum(right) / len(right):.2%}; rejected {sum(rejected) / len(known):.2%} "
          f"(false alarms)")
    print(f"  top-1 of the kept {sum(kept_right) / max(len(kept_right), 1):.2%} ({len(kept_right)}), "
          f"of the rejected {sum(rejected_right) / max(len(rejected_right), 1):.2%} ({len(rejected_right)})")
    print(f"unknown photos (5 classes never seen): {len(unknown)}; rejected {caught / len(unknown):.2%} (caught)")
    wrong_known = len(right) - sum(right)
    wrong_rejected = len(rejected_right) and len(rejected_right) - sum(rejected_right)
    print(f"of the {wrong_known} known photos the model gets wrong, the rule rejects {wrong_rejected}; of the "
          f"{sum(right)} it gets right, it rejects {sum(rejected_right)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
