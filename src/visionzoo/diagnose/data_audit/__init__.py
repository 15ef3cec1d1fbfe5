"""`visionzoo audit`: label errors, duplicates, train/validation leaks, outliers and bad files.

    report = visionzoo.audit("photos/", model="resnet18", out="audit")

One pass over the files hashes each one (SHA-256 of its bytes: exact duplicates) and decodes
it with the one decoder (`visionzoo.data.decode`: files that do not decode are `bad_files`),
taking its perceptual hash (the DCT hash of Zauner, 2010, from the `imagehash` package). Then
every good image is embedded once through the embedding cache of `visionzoo embed`
(`OUT/embeddings-KEY.safetensors`; a rerun reuses it), and from the embeddings:

- label issues: out-of-sample class probabilities from k-fold linear probes (probe.py's
  logistic regression, its L2 strength chosen by `run_probe`), given to cleanlab's
  `find_label_issues` (confident learning, Northcutt et al., 2021) and ranked by cleanlab's
  label quality score (`score`: 0..1, lower is more likely mislabelled);
- near-duplicates: each image's nearest neighbours by cosine similarity, found block by block
  (one matrix product per block of queries, never a Python loop over pairs), kept when the
  perceptual hashes also agree (Hamming distance at most `hash_distance` of 64 bits): the
  embedding finds the candidates, the hash confirms that the pixels, not only the content, match;
- leaks are duplicates whose two images lie in different splits (the later split's image is
  `path`); they are listed first, since they inflate validation scores;
- outliers: low k-NN density, scored as 1 - mean cosine similarity to the k nearest
  neighbours, flagged when the modified z-score (Iglewicz and Hoaglin, 1993) exceeds 3.5.

Splits come from the data's layout: DIR/train, DIR/val (validation, valid), DIR/test, or a
CSV's split column; a tree without split folders is one split, `train`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visionzoo.data.decode import ImageDecodeError, decode_image
from visionzoo.data.sources import FileSamples, _class_folders, _scan_tree, _unpack, resolve_data
from visionzoo.errors import DataError, SettingError, require_extra

__all__ = ["FINDINGS", "AuditSettings", "audit"]

SPLIT_FOLDERS = ("train", "val", "validation", "valid", "test")  # in this order: a leak's `path` is the later split
FINDINGS = ("leaks", "label_issues", "duplicates", "outliers", "bad_files", "class_counts")
CSV_FIELDS = {
    "leaks": ("path", "duplicate_of", "split", "duplicate_split", "similarity", "hash_distance", "kind"),
    "duplicates": ("path", "duplicate_of", "split", "duplicate_split", "similarity", "hash_distance", "kind"),
    "label_issues": ("path", "given", "suggested", "score", "split"),
    "outliers": ("path", "score", "split", "label"),
    "bad_files": ("path", "reason", "split"),
}
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


# --- which files, in which split --------------------------------------------------------------


@dataclass
class _Files:
    paths: list[str]
    labels: np.ndarray  # (N,) int64 into classes
    splits: np.ndarray  # (N,) int: index into split_names
    classes: list[str]
    split_names: list[str]


def _collect(data: str | os.PathLike) -> _Files:
    text = str(data)
    if text.startswith("builtin:"):
        raise DataError(f"audit reads image files; {text} is generated in memory (give a folder, CSV or archive)")
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data {text!r} does not exist; give a folder, a .csv or a .tar/.tar.gz")
    if path.is_file() and path.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        path = _unpack(path)
    if path.is_file():  # a CSV: resolve_data reads it (its split column makes train and val)
        splits = resolve_data(path, split="eval")
        parts = [("train", splits.train)] if splits.val is splits.train else [("train", splits.train), ("val", splits.val)]
        return _join(parts, splits.classes)
    folders = _class_folders(path)
    if len(folders) == 1 and not set(folders) & set(SPLIT_FOLDERS):  # a tree wrapped in one folder (cifar10/...)
        inner = path / folders[0]
        if set(_class_folders(inner)) & set(SPLIT_FOLDERS):
            path, folders = inner, _class_folders(inner)
    present = [name for name in SPLIT_FOLDERS if name in folders]
    if not present:
        classes = folders
        if not classes:
            raise DataError(f"{path} holds no class folders; expected {path}/CLASS/IMAGE or {path}/train/CLASS/IMAGE")
        return _join([("train", _scan_tree(path, classes))], classes)
    classes = sorted({name for split in present for name in _class_folders(path / split)})
    return _join([(split, _scan_tree(path / split, classes)) for split in present], classes)


def _join(parts: list[tuple[str, FileSamples]], classes: list[str]) -> _Files:
    parts = [(name, samples) for name, samples in parts if len(samples)]
    if not parts:
        raise DataError("no images found in the data")
    return _Files([p for _, s in parts for p in s.paths], np.concatenate([s.labels for _, s in parts]),
                  np.concatenate([np.full(len(s), i) for i, (_, s) in enumerate(parts)]), classes,
                  [name for name, _ in parts])


# --- hashing and decoding ----------------------------------------------------------------------


def _hash_file(path: str) -> tuple[str, np.ndarray | None, tuple[int, int] | None, str | None]:
    """(SHA-256 of the bytes, 64-bit perceptual hash as 8 bytes, (width, height), error)."""
    import imagehash

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return "", None, None, f"unreadable: {error.strerror or error}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, path=path)
    except ImageDecodeError as error:
        return digest, None, None, error.reason
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return digest, np.packbits(bits), image.size, None


def _hash_all(paths: list[str], progress: bool) -> tuple[list[str], np.ndarray, np.ndarray, dict[int, str]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    digests, hashes, sizes, bad = [""] * len(paths), np.zeros((len(paths), 8), np.uint8), np.zeros((len(paths), 2)), {}
    columns = [TextColumn("hashing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=not progress) as bar, ThreadPoolExecutor(4) as pool:
        task = bar.add_task("hash", total=len(paths))
        for i, (digest, phash, size, error) in enumerate(pool.map(_hash_file, paths, chunksize=64)):
            digests[i] = digest
            if error is None:
                hashes[i], sizes[i] = phash, size
            else:
                bad[i] = error
            bar.advance(task)
    return digests, hashes, sizes, bad


def _hamming(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(hashes[a] ^ hashes[b], axis=-1).sum(-1)


# --- embeddings --------------------------------------------------------------------------------


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


def _embed(files: _Files, good: np.ndarray, model, spec, data_config, cache: Path, batch_size: int, workers: int,
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


def _neighbours(embeddings: torch.Tensor, k: int, progress: bool, block_elements: int = 2**25
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k most similar other rows by cosine: (similarities (N, k), indices (N, k)), one
    (block x N) matrix product per block of queries (a block holds about 32 M similarities: 128 MB)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    x = F.normalize(embeddings.float(), dim=-1)
    block = max(64, block_elements // max(len(x), 1))
    k = min(k, len(x) - 1)
    similarities, indices = torch.empty(len(x), k), torch.empty(len(x), k, dtype=torch.long)
    columns = [TextColumn("similarity"), BarColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task("similarity", total=len(x))
        for start in range(0, len(x), block):
            scores = x[start:start + block] @ x.T  # (B, N)
            rows = torch.arange(len(scores))
            scores[rows, rows + start] = -2.0  # never one's own neighbour
            similarities[start:start + block], indices[start:start + block] = scores.topk(k, dim=1)
            bar.advance(task, len(scores))
    return similarities, indices


# --- label issues ------------------------------------------------------------------------------


def _fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A stratified fold per image: each class's images dealt round-robin in a seeded order."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    return fold


def out_of_sample_probabilities(embeddings: torch.Tensor, labels: np.ndarray, num_classes: int, *, folds: int = 5,
                                seed: int = 0) -> np.ndarray:
    """(N, C) class probabilities of each image from a linear probe fitted on the other folds."""
    from visionzoo.embed.embeddings import Embeddings
    from visionzoo.embed.probe import FINAL_ITERATIONS, fit_logistic_regression, run_probe

    x, y = embeddings.float(), torch.as_tensor(labels, dtype=torch.long)
    classes = [str(c) for c in range(num_classes)]
    try:  # the L2 strength, chosen on held-out embeddings as `visionzoo probe` chooses it
        chosen = run_probe(Embeddings(x, y, [""] * len(y), classes), method="linear", seed=seed).chosen["weight_decay"]
    except ValueError:  # a class too small to hold any out: the sweep's middle strength
        chosen = 1e-3
    fold = _fold_of(labels, folds, seed)
    probabilities = np.zeros((len(y), num_classes), dtype=np.float64)
    for k in range(folds):
        held, fit = torch.from_numpy(fold == k), torch.from_numpy(fold != k)
        if not held.any():
            continue
        mean, std = x[fit].mean(0), x[fit].std(0).clamp_min(1e-6)
        weight, bias = fit_logistic_regression((x[fit] - mean) / std, y[fit], num_classes, chosen,
                                               max_iter=FINAL_ITERATIONS)
        probabilities[held.numpy()] = F.linear((x[held] - mean) / std, weight, bias).softmax(-1).double().numpy()
    return probabilities


def _label_issues(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the suspect labels, most suspect first, and every image's label quality (cleanlab)."""
    find_label_issues = require_extra("cleanlab.filter", "audit", "visionzoo audit").find_label_issues
    get_label_quality_scores = require_extra("cleanlab.rank", "audit", "visionzoo audit").get_label_quality_scores
    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros(0, dtype=np.int64), np.ones(len(labels))
    # cleanlab wants the classes present to be 0..K-1: renumber, keeping the columns of those classes
    renumber = np.full(probabilities.shape[1], -1)
    renumber[present] = np.arange(len(present))
    compact = probabilities[:, present]
    compact = compact / compact.sum(1, keepdims=True)
    given = renumber[labels]
    quality = get_label_quality_scores(given, compact)
    issues = find_label_issues(given, compact, return_indices_ranked_by="self_confidence")
    return np.asarray(issues, dtype=np.int64), quality


# --- duplicates and leaks ----------------------------------------------------------------------


def _pairs(files: _Files, digests: list[str], hashes: np.ndarray, good: np.ndarray, similarities: torch.Tensor,
           neighbours: torch.Tensor, settings: AuditSettings) -> list[dict[str, Any]]:
    """Exact and near duplicate pairs (i < j, indices into files), each once, as dicts."""
    pairs: dict[tuple[int, int], dict[str, Any]] = {}
    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        if digest:
            by_digest.setdefault(digest, []).append(i)
    for members in by_digest.values():
        for j in members[1:]:
            pairs[(members[0], j)] = {"similarity": 1.0, "hash_distance": 0, "kind": "exact"}
    # near: embedding neighbours above the similarity bar, confirmed by the perceptual hash
    rows = np.repeat(np.arange(len(good)), neighbours.shape[1])
    cols = neighbours.flatten().numpy()
    sims = similarities.flatten().numpy()
    keep = sims >= settings.near_similarity
    a, b, sims = good[rows[keep]], good[cols[keep]], sims[keep]
    distance = _hamming(hashes, a, b)
    confirmed = distance <= settings.hash_distance
    for i, j, similarity, bits in zip(a[confirmed], b[confirmed], sims[confirmed], distance[confirmed]):
        key = (int(min(i, j)), int(max(i, j)))
        if key not in pairs:
            pairs[key] = {"similarity": round(float(min(similarity, 1.0)), 4), "hash_distance": int(bits),
                          "kind": "near"}
    return [{"i": i, "j": j, **facts} for (i, j), facts in sorted(pairs.items())]


def _duplicates_and_leaks(files: _Files, pairs: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    leaks: dict[int, dict] = {}
    duplicates: dict[int, dict] = {}
    for pair in pairs:
        i, j = pair["i"], pair["j"]
        if files.splits[i] > files.splits[j]:
            i, j = j, i
        # `path` is the image in the later split (or, within a split, the later file): the one to drop
        target = leaks if files.splits[i] != files.splits[j] else duplicates
        previous = target.get(j)
        if previous is None or pair["similarity"] > previous["similarity"]:
            target[j] = {"path": files.paths[j], "duplicate_of": files.paths[i],
                         "split": files.split_names[files.splits[j]],
                         "duplicate_split": files.split_names[files.splits[i]], "similarity": pair["similarity"],
                         "hash_distance": pair["hash_distance"], "kind": pair["kind"]}
    def ranked(found: dict[int, dict]) -> list[dict]:
        return sorted(found.values(), key=lambda r: (-r["similarity"], r["path"]))

    return ranked(leaks), ranked(duplicates)


# --- outliers ----------------------------------------------------------------------------------


def _outliers(similarities: torch.Tensor, z_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores, flagged): score = 1 - mean similarity to the k nearest; flagged by the modified z-score."""
    scores = (1.0 - similarities.mean(1)).numpy().astype(np.float64)
    median = np.median(scores)
    spread = np.median(np.abs(scores - median))
    if spread <= 0:
        return scores, np.zeros(len(scores), dtype=bool)
    z = 0.6745 * (scores - median) / spread
    return scores, z > z_limit


# --- the entry point ---------------------------------------------------------------------------


def audit(data: str | os.PathLike, *, model: Any = None, pretrained: Any = None, out: str | os.PathLike | None = "audit",
          image_size: int | None = None, batch_size: int = 64, workers: int = 0, device: str = "cpu",
          progress: bool = True, settings: AuditSettings | None = None, **overrides: Any) -> dict[str, Any]:
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
        **overrides: any `AuditSettings` field (folds, neighbours, near_similarity, hash_distance, ...).
    """
    import dataclasses
    import tempfile

    settings = dataclasses.replace(settings or AuditSettings(), **overrides)
    if settings.folds < 2:
        raise SettingError(f"folds must be at least 2, got {settings.folds}")
    require_extra("imagehash", "audit", "visionzoo audit")  # before any work: the hashes come first
    require_extra("cleanlab", "audit", "visionzoo audit")
    files = _collect(data)
    digests, hashes, sizes, unreadable = _hash_all(files.paths, progress)
    good = np.array([i for i in range(len(files.paths)) if i not in unreadable], dtype=np.int64)

    torch.manual_seed(settings.seed)  # random weights (--pretrained none) are then the same in every audit
    backbone, spec = _backbone(model, pretrained)
    from visionzoo.factory import data_config as model_data_config

    data_config = dict(model_data_config(backbone))
    size = int(data_config["input_size"][-1])
    # Weights see at their own input size: an ImageNet backbone on 32 px CIFAR images upsampled to
    # 224 finds the label issues and near-duplicates, at 32 px it sees nothing (EfficientNet-Lite0:
    # label-issue precision 0.03 and leak recall 0.08 at 32 px, benchmarks/audit_cifar.py). Only
    # random weights, whose features are no better at any size, embed small images at their size.
    random_weights = spec.get("pretrained") in (False, "none", None) and not Path(str(spec["spec"])).exists() \
        and not isinstance(model, torch.nn.Module)
    if image_size is None and len(good) and random_weights:
        median_side = float(np.median(sizes[good].min(1)))
        image_size = min(size, max(32, int(-(-median_side // 32) * 32)))
    if image_size and image_size != size:
        data_config = {**data_config, "input_size": (3, image_size, image_size), "crop_pct": 1.0}
    key = hashlib.sha1(json.dumps([spec, list(data_config["input_size"]), settings.seed], sort_keys=True, default=str)
                       .encode()).hexdigest()[:10]
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="visionzoo-audit-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    # A module given in Python has no name to rebuild it by: its embeddings are not cached between audits
    cache_dir = Path(tempfile.mkdtemp(prefix="visionzoo-audit-")) if isinstance(model, torch.nn.Module) else out_dir
    embeddings, embedded = (_embed(files, good, backbone, spec, data_config, cache_dir / f"embeddings-{key}.safetensors",
                                   batch_size, workers, device, progress) if len(good) else (torch.zeros(0, 1), good))
    for i in good[~embedded]:
        unreadable[int(i)] = "the embedder could not read it"
    good = good[embedded]

    report: dict[str, Any] = {finding: [] for finding in FINDINGS}
    if len(good) >= 2:
        similarities, neighbours = _neighbours(embeddings, settings.neighbours, progress)
        leaks, duplicates = _duplicates_and_leaks(files, _pairs(files, digests, hashes, good, similarities,
                                                                neighbours, settings))
        report["leaks"], report["duplicates"] = leaks, duplicates
        scores, flagged = _outliers(similarities, settings.outlier_z)
        report["outliers"] = [{"path": files.paths[good[i]], "score": round(float(scores[i]), 4),
                               "split": files.split_names[files.splits[good[i]]],
                               "label": files.classes[files.labels[good[i]]]}
                              for i in np.flatnonzero(flagged)[np.argsort(-scores[flagged])]]
    if len(good) >= 2 * settings.folds and len(np.unique(files.labels[good])) >= 2:
        probabilities = out_of_sample_probabilities(embeddings, files.labels[good], len(files.classes),
                                                    folds=settings.folds, seed=settings.seed)
        issues, quality = _label_issues(probabilities, files.labels[good])
        issues = issues[np.argsort(quality[issues], kind="stable")]
        report["label_issues"] = [{"path": files.paths[good[i]], "given": files.classes[files.labels[good[i]]],
                                   "suggested": files.classes[int(probabilities[i].argmax())],
                                   "score": round(float(quality[i]), 4),
                                   "split": files.split_names[files.splits[good[i]]]} for i in issues]
    report["bad_files"] = [{"path": files.paths[i], "reason": reason, "split": files.split_names[files.splits[i]]}
                           for i, reason in sorted(unreadable.items())]
    decoded = np.ones(len(files.paths), dtype=bool)
    decoded[list(unreadable)] = False
    report["class_counts"] = {name: {files.classes[c]: int((decoded & (files.splits == s) & (files.labels == c)).sum())
                                     for c in range(len(files.classes))}
                              for s, name in enumerate(files.split_names)}
    report["summary"] = {"data": str(data), "images": len(files.paths), "splits": files.split_names,
                         "classes": len(files.classes), "model": spec.get("spec"),
                         "pretrained": spec.get("pretrained"), "image_size": int(data_config["input_size"][-1]),
                         **{f"{finding}": len(report[finding]) for finding in CSV_FIELDS},
                         "settings": dataclasses.asdict(settings)}
    if out is not None:
        _write(report, out_dir)
    return report


def _write(report: dict[str, Any], out: Path) -> None:
    from visionzoo.diagnose.data_audit.report import write_html
    from visionzoo.files import atomic_write, atomic_write_json

    atomic_write_json(out / "audit.json", report)
    for finding, fields in CSV_FIELDS.items():
        with open(out / f"{finding}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(report[finding])
    with open(out / "class_counts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *report["class_counts"]])
        classes = next(iter(report["class_counts"].values()), {})
        for name in classes:
            writer.writerow([name, *(counts[name] for counts in report["class_counts"].values())])
    atomic_write(out / "audit.html", write_html(report).encode())


def thumbnail_data_uri(path: str, side: int = 96) -> str | None:
    """A small JPEG of the image as a data: URI, or None when it does not decode."""
    import base64

    try:
        image = decode_image(path)
    except ImageDecodeError:
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
