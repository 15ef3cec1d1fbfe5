"""Which family exports to which format: the smallest variant of every family, exported to every format,
each file checked in its own runtime against eager PyTorch on the same images.

    python benchmarks/export_matrix.py [--quick] [--families resnet mobilenetv3 ...] [--image-size 64]

Per family and format: `visionzoo.export` (which raises when a float file's outputs differ from
eager's by more than 1e-4 of the largest, 1e-2 for fp16 weights), then the file in its own
runtime (onnxruntime, OpenVINO, LiteRT, ExecuTorch) on 8 drawn photos against eager, the max
abs difference of the logits, and the batch-1 latency (median of 20 runs after 3 warm-ups) in
that runtime on this CPU. Core ML cannot run on Linux: its cell says whether the package's
structure passed. Models have random weights and 10 classes (what is checked is that the file
computes the same function). A failing cell prints the first line of its error, not a blank.
`--quick`: three families at 64 px (the full run takes hours on a 2-core machine).
"""

from __future__ import annotations

import argparse
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


def cell(model, name: str, fmt: str, folder: Path, images: Path, size: int | None) -> str:
    from visionzoo.deploy.verify import export, verify_export

    out = folder / f"{name}{SUFFIXES[fmt]}"
    try:
        export(model, out, format=fmt, img_size=size)
    except Exception as error:  # every failure is a finding, reported in the cell
        return "FAIL: " + (str(error).splitlines() or [type(error).__name__])[0][:120]
    if fmt == "coreml":
        return "structure ok (not run: Linux)"
    from visionzoo.data.decode import decode_image
    from visionzoo.deploy.runtimes import open_exported, preprocess_image

    record = verify_export(out, model, images, img_size=size, save=False)
    classifier = open_exported(out, threads=2)
    x = preprocess_image(decode_image(sorted(images.glob("*.png"))[0]), classifier.preprocessing)[None]
    agreement = "" if record["agreement"] == 1.0 else f"  top-1 agrees on {100 * record['agreement']:.0f}%"
    return f"pass  {record['max_abs_difference']:.1e}  {latency_ms(classifier, x):6.2f} ms{agreement}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} at 64 px")
    parser.add_argument("--families", nargs="+", help="these families only")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--image-size", type=int, help="input size (default: each model's; --quick: 64)")
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
        print("| family | model | " + " | ".join(args.formats) + " |")
        print("|---|---|" + "---|" * len(args.formats))
        for family in chosen:
            name = families[family]
            torch.manual_seed(0)
            model = visionzoo.create_model(name, num_classes=10).eval()
            cells = [cell(model, name, fmt, work / family, images, size) for fmt in args.formats]
            print(f"| {family} | {name} | " + " | ".join(cells) + " |", flush=True)
    print("cells: pass, max |file - eager| of the logits on 8 photos, batch-1 latency in the format's runtime "
          f"(2 threads){'; ' + str(size) + ' px' if size else ''}")


if __name__ == "__main__":
    main()
