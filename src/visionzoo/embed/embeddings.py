"""Embeddings of a folder of images, cached in safetensors files, resumable.

`embed_folder(model, "photos/", "photos.safetensors")` runs the model over every image of a
class-per-folder tree and writes its pooled features (`forward_head(pre_logits=True)`), and
optionally the patch tokens, with the file paths, labels and class names in the file's
metadata. Nothing is lost when a run stops: finished images are written to shards in
`FILE.partial/` every `shard_size` images, a rerun skips every file already in a shard (or
already in FILE), and the shards are merged into FILE at the end.

The folder is read by the rules every command reads a data folder with (`data.layout`). A tree of
split folders (train/, val/, ...) gives one file per split, as `train` and `eval` keep them apart:
FILE holds train/ (the first split when there is no train/), and each other split the file named
with the split before the suffix (`photos.val.safetensors`, `split_files`). Each file records its
split and the files of the others, so a probe fits on train/ and scores on val/
(`validation_split`) when it is given FILE alone.

The file holds tensors `embeddings` (N, D) float32, `labels` (N,) int64 and, with
`patch_tokens=True`, `patch_tokens` (N, L, D); its metadata holds JSON strings `paths`,
`classes`, `model` (how to rebuild the backbone), `data_config` (the preprocessing) and, for a
split, `split` and `splits` ({split: file name beside it}).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save

from visionzoo.data.datasets import ImageDataset, collate_skipping
from visionzoo.data.layout import VAL_FOLDER_NAMES, scan_tree, split_folders, tree_classes, tree_root
from visionzoo.data.samples import FileSamples
from visionzoo.data.transforms import eval_transform
from visionzoo.errors import DataError
from visionzoo.factory import channels_last, find_spec
from visionzoo.factory import data_config as model_data_config
from visionzoo.files import atomic_write, jsonable
from visionzoo.resolve import resolve_model
from visionzoo.runtime import tune_allocator

__all__ = ["Embeddings", "embed_folder", "embed_samples", "samples_digest", "load_embeddings", "save_embeddings",
           "pooled_and_tokens", "build_backbone", "scan_folder", "split_files", "validation_split", "EMBEDDING_INDEX"]

FORMAT = "visionzoo-embeddings/1"
EMBEDDING_INDEX = "index.json"  # in a folder of per-process embedding files (embed.sharded)


@dataclass
class Embeddings:
    """Pooled features of N images with their labels, paths and class names."""

    embeddings: torch.Tensor  # (N, D)
    labels: torch.Tensor  # (N,) int64, indices into `classes`
    paths: list[str]
    classes: list[str]
    patch_tokens: torch.Tensor | None = None  # (N, L, D)
    model: dict[str, Any] = field(default_factory=dict)  # spec, pretrained, overrides of the backbone
    data_config: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # the split folder the images came from (train, val, ...), None for one set
    splits: dict[str, str] = field(default_factory=dict)  # every split embedded with it: its file beside this one
    source: Path | None = field(default=None, compare=False)  # the file it was read from (not stored)

    def __len__(self) -> int:
        return len(self.paths)


def save_embeddings(result: Embeddings, path: str | Path) -> None:
    tensors = {"embeddings": result.embeddings.float().contiguous(), "labels": result.labels.long().contiguous()}
    if result.patch_tokens is not None:
        tensors["patch_tokens"] = result.patch_tokens.float().contiguous()
    metadata = {"format": FORMAT, "paths": json.dumps(result.paths), "classes": json.dumps(result.classes),
                "model": json.dumps(result.model), "data_config": json.dumps(jsonable(result.data_config))}
    if result.split is not None:
        metadata.update(split=result.split, splits=json.dumps(result.splits))
    atomic_write(Path(path), save(tensors, metadata=metadata))


def load_embeddings(path: str | Path) -> Embeddings:
    """An embeddings file, or a folder of them with their merged index (`embed.sharded`), as one set."""
    path = Path(path)
    if path.is_dir() and (path / EMBEDDING_INDEX).is_file():
        index = json.loads((path / EMBEDDING_INDEX).read_text())
        parts = [load_embeddings(path / part["file"]) for part in index["parts"]]
        return _concat(parts, index["classes"], parts[0].model, parts[0].data_config)
    if not path.is_file():
        raise FileNotFoundError(f"no embeddings file {path}; "
                                f"make one with `visionzoo embed MODEL --data DIR --out {path}`")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise DataError(f"{path} is not a visionzoo embeddings file (format {metadata.get('format')!r}); "
                             "make one with `visionzoo embed`")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return Embeddings(tensors["embeddings"], tensors["labels"], json.loads(metadata["paths"]),
                      json.loads(metadata["classes"]), tensors.get("patch_tokens"), json.loads(metadata["model"]),
                      json.loads(metadata["data_config"]), metadata.get("split"),
                      json.loads(metadata.get("splits", "{}")), path)


def validation_split(embeddings: Embeddings) -> Embeddings | None:
    """The validation split embedded with `embeddings` (read from its file beside theirs): the first of
    val, validation, valid, test that the tree held, as training validates on; None for embeddings of
    one set, or of a validation split themselves."""
    if embeddings.split is None or embeddings.split in VAL_FOLDER_NAMES or embeddings.source is None:
        return None
    name = next((split for split in VAL_FOLDER_NAMES if split in embeddings.splits), None)
    if name is None:
        return None
    path = Path(embeddings.source).parent / embeddings.splits[name]
    if not path.is_file():
        raise FileNotFoundError(f"{embeddings.source} was embedded with its {name} split in {path}, which is "
                                "gone; embed the folder again, or give the validation embeddings (--val FILE)")
    return load_embeddings(path)


def pooled_and_tokens(model: nn.Module, images: torch.Tensor, patch_tokens: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled features (N, D) and, if asked, the patch tokens (N, L, D) of one batch.

    Tokens of a transformer (N, L, C) lose their prefix (class, register) tokens; the map of a
    CNN (N, C, H, W) becomes (N, H*W, C).
    """
    features = model.forward_features(images)
    pooled = model.forward_head(features, pre_logits=True)
    if not patch_tokens:
        return pooled, None
    if features.ndim == 4:
        tokens = features.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)
    elif features.ndim == 3:
        tokens = features[:, getattr(model, "num_prefix_tokens", 0):]
    else:
        raise DataError(f"cannot take patch tokens from features of shape {tuple(features.shape)}")
    return pooled, tokens


def build_backbone(spec: dict[str, Any], *, allow_random: bool = False) -> nn.Module:
    """A model from a spec {"spec": registered name or saved model folder, "pretrained": weights,
    "overrides": {...}}, as `embed` records it. Random weights cannot be rebuilt, so they are
    refused unless `allow_random` (when embedding, not when rebuilding)."""
    name = spec.get("spec")
    if not name:
        raise DataError("the embeddings file does not record which model made it; re-embed with `visionzoo embed`")
    if Path(name).exists():
        if spec.get("pretrained"):
            raise DataError(f"--pretrained does not apply to the saved model {name}")
        return resolve_model(name)
    if not spec.get("pretrained") and not allow_random:
        raise DataError(f"the embeddings were made by '{name}' with random weights, which cannot be rebuilt; "
                         "embed with --pretrained WEIGHTS or with a saved model folder")
    return resolve_model(name, spec["pretrained"], **spec.get("overrides", {}))


def scan_folder(root: str | Path) -> tuple[dict[str | None, FileSamples], list[str]]:
    """The images of a class-per-folder tree by split, and its class names, by the rules training reads
    a tree with (`data.layout`): a wrapping folder is unwrapped; a tree of split folders (train/,
    val/, ...) gives each split's images under the class folders of train/ ({split: samples}, in
    `SPLIT_FOLDERS` order), and folders beside the splits (logs/, __pycache__/) are no classes; a plain
    class tree gives {None: samples}."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    root = tree_root(root)
    classes = tree_classes(root)
    if not classes:
        raise DataError(f"{root} holds no class folders; expected {root}/CLASS/IMAGE files "
                        f"or {root}/train/CLASS/IMAGE and {root}/val/CLASS/IMAGE")
    splits: dict[str | None, FileSamples] = {split: scan_tree(root / split, classes) for split in split_folders(root)}
    splits = {split: samples for split, samples in splits.items() if len(samples)} or {None: scan_tree(root, classes)}
    if not any(len(samples) for samples in splits.values()):
        raise DataError(f"no images under {root} (looked in {len(classes)} class folders)")
    return splits, classes


def split_files(out: str | Path, splits: list[str | None]) -> dict[str | None, Path]:
    """Where each split's embeddings go: the first split (train/ where there is one) to `out`, each
    other to `out`'s name with the split before its suffix (photos.safetensors -> photos.val.safetensors)."""
    out = Path(out)
    return {split: out if position == 0 else out.with_name(f"{out.stem}.{split}{out.suffix}")
            for position, split in enumerate(splits)}


def _read_shards(folder: Path) -> list[Embeddings]:
    if not folder.is_dir():
        return []
    return [load_embeddings(shard) for shard in sorted(folder.glob("shard-*.safetensors"))]


def _concat(parts: list[Embeddings], classes: list[str], model: dict, data_config: dict) -> Embeddings:
    tokens = [p.patch_tokens for p in parts]
    return Embeddings(
        torch.cat([p.embeddings for p in parts]), torch.cat([p.labels for p in parts]),
        [path for p in parts for path in p.paths], classes,
        torch.cat(tokens) if tokens and all(t is not None for t in tokens) else None, model, data_config)


def embed_folder(model: nn.Module, data: str | Path | tuple[FileSamples, list[str]], out: str | Path, *,
                 batch_size: int = 64, patch_tokens: bool = False, shard_size: int = 512, workers: int = 0,
                 device: str | torch.device = "cpu", model_spec: dict[str, Any] | None = None,
                 progress: bool = True, max_images: int | None = None,
                 data_config: dict[str, Any] | None = None) -> Embeddings:
    """Embed every image of the class-per-folder tree `data` (or of `(samples, class names)`,
    as `visionzoo audit` gives) and write them to `out`: a tree of split folders one file per split
    (`split_files`; see the module docstring). `data_config` replaces the model's preprocessing (e.g.
    a smaller input size). Returns the embeddings written to `out`; `result.parts` has every split's
    ({split: Embeddings}) and `result.skipped` the files of every split that did not decode.

    Resumable: images already in a split's file or in its `.partial/` shards are skipped. `model_spec`
    (e.g. {"spec": "resnet50", "pretrained": "default"}) is recorded so that a probe can be saved
    as a model on the same backbone. `max_images` stops after that many new images (as an
    interruption would; used to test resuming).
    """
    tune_allocator()
    splits, classes = ({None: data[0]}, data[1]) if isinstance(data, tuple) else scan_folder(data)
    files = split_files(out, list(splits))
    names = {split: path.name for split, path in files.items() if split is not None}
    data_config = data_config or model_data_config(model)
    made = find_spec(model)
    spec = dict(model_spec or {"spec": made.name if made else None})
    parts: dict[str | None, Embeddings] = {}
    skipped: list[tuple[str, str]] = []
    for split, samples in splits.items():
        left = None if max_images is None else max(0, max_images - sum(p.embedded for p in parts.values()))  # type: ignore[attr-defined]
        parts[split] = _embed_set(model, samples, classes, files[split], source=str(data if split is None else
                                  f"{data}/{split}"), batch_size=batch_size, patch_tokens=patch_tokens,
                                  shard_size=shard_size, workers=workers, device=device, spec=spec,
                                  progress=progress, max_images=left, data_config=data_config, split=split,
                                  splits=names)
        skipped += parts[split].skipped  # type: ignore[attr-defined]
    result = next(iter(parts.values()))
    result.parts = {split or "all": part for split, part in parts.items()}  # type: ignore[attr-defined]
    result.skipped = skipped  # type: ignore[attr-defined]
    return result


@torch.no_grad()
def _embed_set(model: nn.Module, samples: FileSamples, classes: list[str], out: Path, *, source: str,
               batch_size: int, patch_tokens: bool, shard_size: int, workers: int, device: str | torch.device,
               spec: dict[str, Any], progress: bool, max_images: int | None, data_config: dict[str, Any],
               split: str | None, splits: dict[str, str]) -> Embeddings:
    """`embed_folder` for one set of samples, written to `out` (resumably, through `out.partial/`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    partial = out.with_name(out.name + ".partial")
    done = _read_shards(partial)
    if out.is_file():
        done.insert(0, load_embeddings(out))
    for part in done:
        if part.model.get("spec") != spec.get("spec") or part.model.get("pretrained") != spec.get("pretrained"):
            raise DataError(f"{out} holds embeddings of {part.model.get('spec')!r} "
                             f"(pretrained={part.model.get('pretrained')!r}), not of {spec.get('spec')!r} "
                             f"(pretrained={spec.get('pretrained')!r}); write to a new --out file")
        if part.classes != classes:
            raise DataError(f"{out} was made from classes {part.classes[:5]}... but {source} has {classes[:5]}...; "
                             "write to a new --out file")
        if (part.patch_tokens is not None) != patch_tokens and len(part):
            raise DataError(f"{out} was made {'with' if part.patch_tokens is not None else 'without'} patch tokens; "
                             "rerun with the same --patch-tokens setting or write to a new --out file")
    finished = {path for part in done for path in part.paths}
    todo = [i for i, path in enumerate(samples.paths) if path not in finished]
    if max_images is not None:
        todo = todo[:max_images]

    model = channels_last(model.to(device).eval())
    dataset = ImageDataset(samples.subset(np.array(todo, dtype=np.int64)), eval_transform(data_config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_skipping)
    shard_index = len(list(partial.glob("shard-*.safetensors"))) if partial.is_dir() else 0
    pending: list[Embeddings] = []
    skipped = []

    def flush() -> None:
        nonlocal shard_index, pending
        if pending:
            shard = _concat(pending, classes, spec, data_config)
            save_embeddings(shard, partial / f"shard-{shard_index:05d}.safetensors")
            done.append(shard)
            shard_index += 1
            pending = []

    columns = [TextColumn("embedding" + (f" {split}" if split else "")), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task("embed", total=len(todo))
        try:
            for images, labels, indices, bad in loader:
                skipped.extend(bad)
                if len(indices):
                    pooled, tokens = pooled_and_tokens(model, images.to(device), patch_tokens)
                    paths = [dataset.samples.paths[i] for i in indices.tolist()]
                    pending.append(Embeddings(pooled.float().cpu(), labels, paths, classes,
                                              tokens.float().cpu() if tokens is not None else None))
                    if sum(len(p) for p in pending) >= shard_size:
                        flush()
                bar.advance(task, len(indices) + len(bad))
        finally:  # also on Ctrl-C: what was computed is kept for the rerun
            flush()

    wanted = set(samples.paths)  # a file written from other images (all splits in one, as before) keeps only these
    done = [_rows(part, [path in wanted for path in part.paths]) for part in done]
    result = _concat(done, classes, spec, data_config) if done else Embeddings(
        torch.empty(0), torch.empty(0, dtype=torch.long), [], classes, model=spec, data_config=data_config)
    result.split, result.splits = split, dict(splits)
    result.skipped = [(s.path, s.reason) for s in skipped]  # type: ignore[attr-defined]
    result.embedded = len(todo)  # type: ignore[attr-defined]
    if max_images is None or len(todo) == 0 or len(finished) + len(todo) == len(samples):
        if len(result):
            save_embeddings(result, out)
            result.source = out
        shutil.rmtree(partial, ignore_errors=True)
    return result


def _rows(part: Embeddings, keep: list[bool]) -> Embeddings:
    if all(keep):
        return part
    mask = torch.tensor(keep, dtype=torch.bool)
    return Embeddings(part.embeddings[mask], part.labels[mask], [p for p, k in zip(part.paths, keep) if k],
                      part.classes, part.patch_tokens[mask] if part.patch_tokens is not None else None,
                      part.model, part.data_config)


# --- a cache keyed by contents -----------------------------------------------------------------

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def samples_digest(samples) -> str:
    """What a set of samples holds, by contents: each file's bytes (or the decoded array) with its
    label, in order. Renaming or moving the files keeps the digest; editing one image changes it."""
    import hashlib

    digest = hashlib.sha256()
    if isinstance(samples, FileSamples):
        for path, label in zip(samples.paths, samples.labels.tolist()):
            stat = os.stat(path)
            memo = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
            if memo not in _FILE_DIGESTS:
                with open(path, "rb") as handle:
                    _FILE_DIGESTS[memo] = hashlib.sha256(handle.read()).hexdigest()
            digest.update(f"{_FILE_DIGESTS[memo]}:{label};".encode())
    else:
        digest.update(np.ascontiguousarray(samples.images).tobytes())
        digest.update(np.asarray(samples.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


@torch.no_grad()
def embed_samples(model: nn.Module, samples, classes: list[str], cache_dir: str | Path, *,
                  identity: dict[str, Any], data_config: dict[str, Any], batch_size: int = 64,
                  device: str | torch.device = "cpu", on_batch: Any = None) -> Embeddings:
    """Pooled features of `samples` (files or arrays), cached in `cache_dir` under a key made of the
    samples' contents, `identity` (the model and a digest of its weights) and the preprocessing.

    A second call with the same images, model and weights reads the file and runs no model; the
    result's `embedded` says how many images were embedded by this call. `on_batch(n)` is called
    as images are done (for a progress bar).
    """
    tune_allocator()
    import hashlib

    key = hashlib.sha256(json.dumps({"samples": samples_digest(samples), "classes": list(classes),
                                     "identity": identity, "data_config": jsonable(data_config)},
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{identity.get('model', 'model')}-{key}.safetensors"
    if path.is_file():
        result = load_embeddings(path)
        result.embedded = 0  # type: ignore[attr-defined]
        if on_batch:
            on_batch(len(result))
        return result
    model = channels_last(model.to(device).eval())
    dataset = ImageDataset(samples, eval_transform(data_config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skipping)
    pooled_parts, label_parts, names = [], [], []
    for images, labels, indices, bad in loader:
        if len(indices):
            pooled, _ = pooled_and_tokens(model, images.to(device))
            pooled_parts.append(pooled.float().cpu())
            label_parts.append(labels)
            names.extend(dataset.name(i) for i in indices.tolist())
        if on_batch:
            on_batch(len(indices) + len(bad))
    if not names:
        raise DataError(f"none of the {len(samples)} images could be read")
    result = Embeddings(torch.cat(pooled_parts), torch.cat(label_parts).long(), names, list(classes),
                        model=dict(identity), data_config=dict(data_config))
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    save_embeddings(result, path)
    result.embedded = len(names)  # type: ignore[attr-defined]
    return result
