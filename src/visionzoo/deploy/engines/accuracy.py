"""The accuracy rule a reduced-precision engine must pass to be chosen: on the same images, bf16 agrees
with fp32 on top-1 for at least 99.5% of them, and int8 loses at most 1 point of top-1 (against the
labels of class folders, or against fp32's answers when the images have none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visionzoo.deploy.engines.backends import Engine
from visionzoo.errors import DataError

__all__ = ["BF16_MIN_AGREEMENT", "INT8_MAX_DROP", "labelled_images", "passes_accuracy_rule", "evaluate_engines",
           "rule_failure"]

BF16_MIN_AGREEMENT = 0.995  # bf16 must give fp32's top-1 on at least this share of images
INT8_MAX_DROP = 0.01  # int8 may lose at most this much top-1 (1 point)


def labelled_images(folder: str | Path, class_names: Sequence[str] | None, limit: int | None = None
                    ) -> tuple[list[Path], list[int] | None]:
    """Image files of `folder` and, when it is a class-per-folder tree of the model's classes, their labels.

    Without matching class folders (calibration images, say) the labels are None, and the rule
    takes the fp32 engine's answers as the truth.
    """
    from visionzoo.deploy.export.images import image_files

    folder = Path(folder)
    files = image_files(folder, limit)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    names = list(class_names) if class_names else classes
    if not classes or any(c not in names for c in classes) or any(f.parent == folder for f in files):
        return files, None
    return files, [names.index(f.relative_to(folder).parts[0]) for f in files]


def _preprocessed(files: Sequence[Path], preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
    """The images that decode, preprocessed as deployed, and their positions in `files`."""
    from visionzoo.data.decode import ImageDecodeError, decode_image
    from visionzoo.deploy.runtimes import preprocess_image

    arrays, kept = [], []
    for index, path in enumerate(files):
        try:
            arrays.append(preprocess_image(decode_image(path), preprocessing))
            kept.append(index)
        except (ImageDecodeError, OSError):
            continue  # a bad file is left out of every engine's count alike
    if not arrays:
        raise DataError(f"none of the {len(files)} images for the accuracy check could be read")
    return np.stack(arrays), kept


def passes_accuracy_rule(precision: str, agreement: float, drop: float) -> bool:
    """bf16: top-1 agreement with fp32 >= 99.5%; int8: top-1 drop <= 1 point; fp32 always passes."""
    if precision == "bf16":
        return agreement >= BF16_MIN_AGREEMENT
    if precision == "int8":
        return drop <= INT8_MAX_DROP + 1e-12
    return True


def rule_failure(precision: str, figures: dict[str, Any]) -> str:
    """Why an engine of `precision` with `evaluate_engines`' `figures` fails the rule, in words."""
    if precision == "bf16":
        return (f"top-1 agrees with fp32 on {100 * figures['agreement']:.2f}% of images "
                f"(the rule needs >= {100 * BF16_MIN_AGREEMENT:.1f}%)")
    return f"top-1 drop {100 * figures['drop']:.2f} points (the rule allows <= {100 * INT8_MAX_DROP:.0f})"


def evaluate_engines(engines: Sequence[Engine], files: Sequence[Path], labels: Sequence[int] | None,
                     preprocessing: dict[str, Any], batch_size: int = 16) -> dict[str, dict[str, Any]]:
    """Top-1 answers of each (loaded) engine on `files`, compared with the first fp32 engine's.

    Per engine: `agreement` (share of images whose top-1 is the fp32 engine's), `top1` (against
    `labels`, or against the fp32 answers when there are none), `drop` (fp32 top-1 minus this
    one's), `passed` (the accuracy rule) and `images`.
    """
    reference = next((e for e in engines if e.precision == "fp32"), None)
    if reference is None:
        raise ValueError("the accuracy rule compares with an fp32 engine; none of "
                         f"{[e.name for e in engines]} is one")
    x, kept = _preprocessed(files, preprocessing)
    answers = {}
    for engine in engines:
        answers[engine.name] = np.concatenate([engine.run(x[i:i + batch_size]).argmax(axis=1)
                                               for i in range(0, len(x), batch_size)])
    truth = np.asarray([labels[i] for i in kept]) if labels is not None else answers[reference.name]
    reference_top1 = float((answers[reference.name] == truth).mean())
    results = {}
    for engine in engines:
        top1 = float((answers[engine.name] == truth).mean())
        agreement = float((answers[engine.name] == answers[reference.name]).mean())
        drop = reference_top1 - top1
        results[engine.name] = {"agreement": agreement, "top1": top1, "drop": drop, "images": len(kept),
                                "reference": reference.name, "labelled": labels is not None,
                                "passed": passes_accuracy_rule(engine.precision, agreement, drop)}
    return results
