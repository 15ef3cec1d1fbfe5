"""`visionzoo audit`: label errors, duplicates, train/validation leaks, outliers and bad files.

    report = visionzoo.audit("photos/", model="resnet18", out="audit")

The steps, a module each:

- `collect`: which files, in which split (the data's layout: DIR/train, DIR/val (validation,
  valid), DIR/test, or a CSV's split column; a tree without split folders is one split, `train`);
- `hashing`: one pass over the files: SHA-256 (exact duplicates), decoding (`bad_files`) and
  a perceptual hash;
- every good image is embedded once through the embedding cache of `visionzoo embed`
  (`OUT/embeddings-KEY.safetensors`; a rerun reuses it);
- `neighbours`: near-duplicates (embedding neighbours confirmed by the perceptual hash), leaks
  (duplicates across splits, listed first) and outliers (low k-NN density);
- `labels`: label issues from k-fold linear probes and cleanlab's confident learning;
- `report`: audit.json, a CSV per finding and a self-contained audit.html.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionzoo.data.samples import FileSamples
from visionzoo.diagnose.data_audit.collect import AuditFiles, collect_files
from visionzoo.diagnose.data_audit.hashing import hash_files
from visionzoo.diagnose.data_audit.labels import label_issues, out_of_sample_probabilities
from visionzoo.diagnose.data_audit.neighbours import duplicate_pairs, duplicates_and_leaks, nearest_neighbours, outliers
from visionzoo.diagnose.data_audit.report import CSV_FIELDS, FINDINGS, write_report
from visionzoo.errors import SettingError, require_extra

__all__ = ["FINDINGS", "AuditSettings", "audit"]

DEFAULT_MODEL = "resnet18"


@dataclass(frozen=True)
class AuditSettings:
    """The audit's thresholds, with the reasons for their defaults."""

    folds: int = 5  # k-fold linear probes: each image's probabilities come from a probe that never saw it
    neighbours: int = 10  # nearest neighbours per image: near-duplicate candidates and the density of outliers
    near_similarity: float = 0.90  # cosine similarity a near-duplicate candidate must reach
    hash_distance: int = 10  # most differing bits of 64 in the perceptual hashes of a near-duplicate
    outlier_z: float = 3.5  # modified z-score above which a low-density image is an outlier
    seed: int = 0


def audit(data: str | os.PathLike, *, model: Any = None, pretrained: Any = None, out: str | os.PathLike | None = "audit",
          image_size: int | None = None, batch_size: int = 64, workers: int = 0, device: str = "cpu",
          progress: bool = True, settings: AuditSettings | None = None, max_unpack_gb: float | None = None,
          **overrides: Any) -> dict[str, Any]:
    """Audit a dataset; returns the report (the object written to OUT/audit.json).

    Args:
        data: a class-per-folder tree (with train/, val/, test/ split folders or without), a CSV
            of path,label[,split], or a .tar/.tar.gz of a tree.
        model: the backbone that embeds the images: a registered name, a saved model folder (such
            as a run's best/) or an `nn.Module`; default resnet18 with its default weights.
        pretrained: weights for a registered name (default: its default weights; False: random).
        out: the report folder (audit.html, audit.json, a CSV per finding, the embedding cache);
            None writes nothing.
        image_size: the embedding input size; default the model's (a saved model: the size it was
            trained at). Random weights default to at most the images' median side (rounded up to
            a multiple of 32): their features are no better for blowing small images up.
        max_unpack_gb: raise the cap on what an archive may unpack to (`visionzoo.data.archives`).
        **overrides: any `AuditSettings` field (folds, neighbours, near_similarity, hash_distance, ...).
    """
    settings = dataclasses.replace(settings or AuditSettings(), **overrides)
    if settings.folds < 2:
        raise SettingError(f"folds must be at least 2, got {settings.folds}")
    require_extra("imagehash", "audit", "visionzoo audit")  # before any work: the hashes come first
    require_extra("cleanlab", "audit", "visionzoo audit")
    _check_weights_here(model, pretrained)  # before any work: offline, the default backbone's weights may be missing
    files = collect_files(data, max_unpack_gb=max_unpack_gb)
    digests, hashes, sizes, unreadable = hash_files(files.paths, progress)
    good = np.array([i for i in range(len(files.paths)) if i not in unreadable], dtype=np.int64)

    torch.manual_seed(settings.seed)  # random weights (--pretrained none) are then the same in every audit
    backbone, spec = _backbone(model, pretrained)
    data_config = _embedding_config(backbone, spec, model, image_size, sizes[good])
    key = hashlib.sha1(json.dumps([spec, list(data_config["input_size"]), settings.seed], sort_keys=True, default=str)
                       .encode()).hexdigest()[:10]
    # Without --out, or for a module given in Python (no name to rebuild it by), the embeddings are not kept
    with tempfile.TemporaryDirectory(prefix="visionzoo-audit-") as scratch:
        cache_dir = Path(scratch) if out is None or isinstance(model, torch.nn.Module) else Path(out)
        cache_dir.mkdir(parents=True, exist_ok=True)
        embeddings, embedded = (
            _embed(files, good, backbone, spec, data_config, cache_dir / f"embeddings-{key}.safetensors",
                   batch_size, workers, device, progress) if len(good) else (torch.zeros(0, 1), good))
    for i in good[~embedded]:
        unreadable[int(i)] = "the embedder could not read it"
    good = good[embedded]

    report: dict[str, Any] = {finding: [] for finding in FINDINGS}
    report.update(_neighbour_findings(files, digests, hashes, good, embeddings, settings, progress))
    report["label_issues"] = _label_findings(files, good, embeddings, settings)
    report["bad_files"] = [{"path": files.paths[i], "reason": reason, "split": files.split_names[files.splits[i]]}
                           for i, reason in sorted(unreadable.items())]
    report["class_counts"] = _class_counts(files, unreadable)
    report["summary"] = {"data": str(data), "images": len(files.paths), "splits": files.split_names,
                         "classes": len(files.classes), "model": spec.get("spec"),
                         "pretrained": spec.get("pretrained"), "image_size": int(data_config["input_size"][-1]),
                         **{f"{finding}": len(report[finding]) for finding in CSV_FIELDS},
                         "settings": dataclasses.asdict(settings)}
    if out is not None:
        write_report(report, Path(out))
    return report


def _check_weights_here(model: Any, pretrained: Any) -> None:
    """A one-line error at once when a registered backbone's weights are neither cached nor downloadable."""
    from visionzoo.weights import WeightsNotAvailableError, unobtainable_weights

    if isinstance(model, torch.nn.Module) or (model is not None and Path(str(model)).exists()):
        return
    name = str(model or DEFAULT_MODEL)
    reason = unobtainable_weights(name, True if pretrained is None else pretrained)
    if reason:
        raise WeightsNotAvailableError(
            f"the audit's backbone {name} needs weights that are not here ({reason}); give a local weights file "
            f"with --model {name} --pretrained FILE, or audit with random weights: --pretrained none")


def _backbone(model: Any, pretrained: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    from visionzoo.embed.embeddings import build_backbone

    if isinstance(model, torch.nn.Module):
        from visionzoo.factory import model_name

        return model, {"spec": model_name(model), "pretrained": "given"}
    name = str(model or DEFAULT_MODEL)
    if Path(name).exists():
        spec = {"spec": str(Path(name).resolve()), "pretrained": False, "overrides": {}}
    else:
        spec = {"spec": name, "pretrained": True if pretrained is None else pretrained, "overrides": {}}
    return build_backbone(spec, allow_random=True), spec


def _embedding_config(backbone: torch.nn.Module, spec: dict[str, Any], model: Any, image_size: int | None,
                      sizes: np.ndarray) -> dict[str, Any]:
    """The backbone's data config at the size the images are embedded at (`sizes`: the good images')."""
    from visionzoo.factory import data_config as model_data_config

    data_config = dict(model_data_config(backbone))
    size = int(data_config["input_size"][-1])
    # Weights see at their own input size: an ImageNet backbone on 32 px CIFAR images upsampled to
    # 224 finds the label issues and near-duplicates, at 32 px it sees nothing (EfficientNet-Lite0:
    # label-issue precision 0.03 and leak recall 0.08 at 32 px, benchmarks/audit_cifar.py). Only
    # random weights, whose features are no better at any size, embed small images at their size.
    random_weights = spec.get("pretrained") in (False, "none", None) and not Path(str(spec["spec"])).exists() \
        and not isinstance(model, torch.nn.Module)
    if image_size is None and len(sizes) and random_weights:
        median_side = float(np.median(sizes.min(1)))
        image_size = min(size, max(32, int(-(-median_side // 32) * 32)))
    if image_size and image_size != size:
        data_config = {**data_config, "input_size": (3, image_size, image_size), "crop_pct": 1.0}
    return data_config


def _embed(files: AuditFiles, good: np.ndarray, model, spec, data_config, cache: Path, batch_size: int, workers: int,
           device: str, progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Embeddings (M, D) of the good files and which of them the embedder also could not read."""
    from visionzoo.embed.embeddings import embed_folder

    samples = FileSamples([files.paths[i] for i in good], files.labels[good])
    result = embed_folder(model, (samples, files.classes), cache, batch_size=batch_size, workers=workers,
                          device=device, model_spec=spec, progress=progress, data_config=data_config)
    row = {path: i for i, path in enumerate(result.paths)}
    found = np.array([files.paths[i] in row for i in good])
    order = [row[files.paths[i]] for i in good[found]]
    return result.embeddings[order].float(), found


def _neighbour_findings(files: AuditFiles, digests: list[str], hashes: np.ndarray, good: np.ndarray,
                        embeddings: torch.Tensor, settings: AuditSettings, progress: bool) -> dict[str, list]:
    """Leaks, duplicates and outliers of the embedded images (`good`: their indices into files)."""
    if len(good) < 2:
        return {}
    similarities, neighbours = nearest_neighbours(embeddings, settings.neighbours, progress)
    pairs = duplicate_pairs(files, digests, hashes, good, similarities, neighbours,
                            near_similarity=settings.near_similarity, hash_distance=settings.hash_distance)
    leaks, duplicates = duplicates_and_leaks(files, pairs)
    scores, flagged = outliers(similarities, settings.outlier_z)
    far = [{"path": files.paths[good[i]], "score": round(float(scores[i]), 4),
            "split": files.split_names[files.splits[good[i]]], "label": files.classes[files.labels[good[i]]]}
           for i in np.flatnonzero(flagged)[np.argsort(-scores[flagged])]]
    return {"leaks": leaks, "duplicates": duplicates, "outliers": far}


def _label_findings(files: AuditFiles, good: np.ndarray, embeddings: torch.Tensor,
                    settings: AuditSettings) -> list[dict[str, Any]]:
    """The suspect labels, lowest label quality first (none with too few images or one class)."""
    labels = files.labels[good]
    if len(good) < 2 * settings.folds or len(np.unique(labels)) < 2:
        return []
    probabilities = out_of_sample_probabilities(embeddings, labels, len(files.classes), folds=settings.folds,
                                                seed=settings.seed)
    issues, quality = label_issues(probabilities, labels)
    issues = issues[np.argsort(quality[issues], kind="stable")]
    return [{"path": files.paths[good[i]], "given": files.classes[labels[i]],
             "suggested": files.classes[int(probabilities[i].argmax())], "score": round(float(quality[i]), 4),
             "split": files.split_names[files.splits[good[i]]]} for i in issues]


def _class_counts(files: AuditFiles, unreadable: dict[int, str]) -> dict[str, dict[str, int]]:
    """Decodable images per split and class."""
    decoded = np.ones(len(files.paths), dtype=bool)
    decoded[list(unreadable)] = False
    return {name: {files.classes[c]: int((decoded & (files.splits == s) & (files.labels == c)).sum())
                   for c in range(len(files.classes))}
            for s, name in enumerate(files.split_names)}
