"""Which family exports to which format: the smallest variant of every family, exported to every format,
each file checked in its own runtime against eager PyTorch on the same images.

    python benchmarks/export_matrix.py [--quick] [--families resnet mobilenetv3 ...] [--image-size 64]

Per family and format: `visionzoo.export` (which raises when a float file's outputs differ from
eager's by more than 1e-4 of the largest, 1e-2 for fp16 weights), then the file in its own
runtime (onnxruntime, OpenVINO, LiteRT, ExecuTorch) on 8 drawn photos against eager, the max
difference of the logits over the largest logit, and the batch-1 latency (median of 20 runs after
3 warm-ups) in that runtime on this CPU. Core ML cannot run on Linux: its cell says whether the
package's structure passed. Models have random weights and 10 classes (what is checked is that the
file computes the same function); their BatchNorm statistics are first settled on the 8 photos and
as many noise images (a forward pass in training mode), because at initialisation some networks
compute an output that does not depend on the image (GoogLeNet's features vanish, its logits are
the bias) or logits of 1e11 (Inception-v3), where agreeing proves nothing. A model whose logits
still do not vary with the image is marked "constant output". A failing cell prints the first line
of its error, not a blank.
`--quick`: three families at 64 px (the full run takes hours on a 2-core machine). `--save FILE`
keeps each finished row (with the load average it was measured at) in a JSON file; a rerun with the
same file, formats and size prints those rows again and measures only the others, so the full
matrix can be built over several sittings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import visionzoo
from visionzoo.registry import get_card

FORMATS = ("onnx", "openvino", "litert", "executorch", "coreml")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "litert": ".tflite", "executorch": ".pte", "coreml": ".mlpackage"}
QUICK = ("resnet", "mobilenetv3", "efficientnet_lite")


def smallest_per_family() -> dict[str, str]:
    best: dict[str, tuple[int, str]] = {}
    for name in visionzoo.list_models():
        family, params = get_card(name).family, visionzoo.model_info(name)["params"]
        if family not in best or params < best[family][0]:
            best[family] = (params, name)
    return {family: name for family, (_, name) in sorted(best.items())}


def latency_ms(classifier, x: np.ndarray, repeats: int = 20) -> float:
    for _ in range(3):
        classifier.predict_logits(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.predict_logits(x)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def settle_batchnorm(model, images: Path, size: int | None) -> bool:
    """Set every BatchNorm's running statistics to those of the photos (one pass in training mode, nothing
    else changes); True when the logits then vary with the image."""
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.export.onnx import model_preprocessing
    from visionzoo.deploy.runtimes import preprocess_image

    preprocessing = model_preprocessing(model, size)
    x = torch.from_numpy(np.stack([preprocess_image(decode_image(path), preprocessing)
                                   for path in sorted(images.glob("*.png"))]))
    # with as many noise images: the export checks its file on noise too, and statistics of 8 photos alone
    # leave some channels so narrow that noise blows them up past the check's 1e-4 (EfficientNet-B0)
    batch = torch.cat([x, torch.randn(x.shape, generator=torch.Generator().manual_seed(0))])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        if norms:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average: exactly these images' statistics
            model.train()
            model(batch)
            model.eval()
        logits = model(x)
    return bool((logits - logits[:1]).abs().max() > 1e-6 * logits.abs().max())


def cell(model, name: str, fmt: str, folder: Path, images: Path, size: int | None) -> str:
    from visionzoo.deploy.verify import export, verify_export

    out = folder / f"{name}{SUFFIXES[fmt]}"
    try:
        export(model, out, format=fmt, img_size=size)
    except Exception as error:  # every failure is a finding, reported in the cell
        differs = re.search(r"max \|difference\| = (\S+) x max \|reference\| \(allowed (\S+)\)", str(error))
        if differs:  # the export's own check refused the file: say by how much, not where the file was
            return f"FAIL: the file's logits differ from eager's by {differs[1]} of the largest (allowed {differs[2]})"
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return f"FAIL: {type(error).__name__}: " + (lines[0] if lines else "(no message)")[:120]
    if fmt == "coreml":
        return "structure ok (not run: Linux)"
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.runtimes import open_exported, preprocess_image

    record = verify_export(out, model, images, img_size=size, save=False)
    classifier = open_exported(out, threads=2)
    x = preprocess_image(decode_image(sorted(images.glob("*.png"))[0]), classifier.preprocessing)[None]
    agreement = "" if record["agreement"] == 1.0 else f"  top-1 agrees on {100 * record['agreement']:.0f}%"
    with torch.no_grad():
        largest = float(model(torch.from_numpy(x)).abs().max())
    relative = record["max_abs_difference"] / max(largest, 1e-12)
    return f"pass  {relative:.1e}  {latency_ms(classifier, x):6.2f} ms{agreement}"


def load_rows(path: str | None, formats: list[str], size: int | None) -> dict[str, dict]:
    """{family: row} finished by an earlier run with the same formats and size ({} otherwise)."""
    if not path or not Path(path).is_file():
        return {}
    saved = json.loads(Path(path).read_text())
    return saved["rows"] if saved.get("formats") == list(formats) and saved.get("image_size") == size else {}


def save_rows(path: str | None, formats: list[str], size: int | None, rows: dict[str, dict]) -> None:
    if path:
        temporary = Path(f"{path}.tmp")
        temporary.write_text(json.dumps({"formats": list(formats), "image_size": size, "rows": rows}, indent=1))
        os.replace(temporary, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} at 64 px")
    parser.add_argument("--families", nargs="+", help="these families only")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--image-size", type=int, help="input size (default: each model's; --quick: 64)")
    parser.add_argument("--save", help="a JSON file of finished rows: kept after each row, reused by a rerun")
    args = parser.parse_args()
    torch.set_num_threads(2)
    families = smallest_per_family()
    chosen = args.families or (QUICK if args.quick else list(families))
    size = args.image_size or (64 if args.quick else None)
    from visionzoo.deploy.export.images import synthetic_photos

    with tempfile.TemporaryDirectory(prefix="export_matrix-") as work:
        work = Path(work)
        images = work / "images"
        images.mkdir()
        for index, image in enumerate(synthetic_photos(8)):
            image.save(images / f"{index}.png")
        print("| family | model | " + " | ".join(args.formats) + " | load |")
        print("|---|---|" + "---|" * (len(args.formats) + 1))
        saved = load_rows(args.save, args.formats, size)
        for family in chosen:
            name = families[family]
            row = saved.get(family)
            if row is None or row["model"].split(" ")[0] != name:
                torch.manual_seed(0)
                model = visionzoo.create_model(name, num_classes=10).eval()
                varies = settle_batchnorm(model, images, size)
                cells = [cell(model, name, fmt, work / family, images, size) for fmt in args.formats]
                row = {"model": name + ("" if varies else " (constant output)"), "cells": cells,
                       "load": round(os.getloadavg()[0], 1)}
                saved[family] = row
                save_rows(args.save, args.formats, size, saved)
            print(f"| {family} | {row['model']} | " + " | ".join(row["cells"]) + f" | {row['load']} |", flush=True)
    print("cells: pass, max |file - eager| of the logits on 8 photos over the largest |logit|, batch-1 latency in the "
          "format's runtime "
          f"(2 threads){'; ' + str(size) + ' px' if size else ''}; last column: the load average when the row ended")


if __name__ == "__main__":
    main()
