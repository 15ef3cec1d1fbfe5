"""Embeddings of tar shards, split across `torchrun` processes: `embed_shards`.

    torchrun --nproc-per-node 4 -m visionzoo embed resnet50 --data shards/ --out emb/

Each process embeds its own shards (shard i goes to rank i % world, read in order, never unpacked)
and writes `OUT/embeddings-RANK-of-WORLD.safetensors` (the `embeddings` format, its paths naming
each sample as `SHARD#KEY`); rank 0 then writes `OUT/index.json` listing every rank's file and
count, the merged index: `load_embeddings(OUT)` reads them all as one set, in rank order. Across
machines each writes its own files; the index names them all, so copy them beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from visionzoo.data.datasets import ImageDataset, Skipped, collate_skipping
from visionzoo.data.samples import EncodedSamples
from visionzoo.data.shards import Record, all_shards, read_records
from visionzoo.data.transforms import eval_transform
from visionzoo.embed.embeddings import EMBEDDING_INDEX, Embeddings, pooled_and_tokens, save_embeddings
from visionzoo.errors import DataError
from visionzoo.factory import data_config as model_data_config
from visionzoo.factory import find_spec
from visionzoo.files import atomic_write

__all__ = ["embed_shards", "INDEX_FORMAT"]

INDEX_FORMAT = "visionzoo-embeddings-index/1"


def _batch(model: nn.Module, records: list[Record], transform, classes: list[str], device, patch_tokens: bool,
           skipped: list[Skipped]) -> Embeddings | None:
    dataset = ImageDataset(EncodedSamples([r.image for r in records], np.array([r.label for r in records]),
                                          [r.name for r in records]), transform)
    images, labels, indices, bad = collate_skipping([dataset[i] for i in range(len(records))])
    skipped.extend(bad)
    if not len(indices):
        return None
    pooled, tokens = pooled_and_tokens(model, images.to(device), patch_tokens)
    return Embeddings(pooled.float().cpu(), labels, [records[i].name for i in indices.tolist()], classes,
                      tokens.float().cpu() if tokens is not None else None)


@torch.no_grad()
def embed_shards(model: nn.Module, data: str, out: str | Path, *, batch_size: int = 64, patch_tokens: bool = False,
                 device: str | torch.device = "cpu", model_spec: dict[str, Any] | None = None,
                 data_config: dict[str, Any] | None = None, image_column: str | None = None,
                 label_column: str | None = None) -> Embeddings:
    """Embed every image of the shards `data` (as `--data` names them) into the folder `out`; this
    process's share under torchrun (WORLD_SIZE > 1 starts the process group if none is up). Returns
    this process's embeddings; `load_embeddings(out)` gives all of them."""
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    try:
        classes, samples, _ = all_shards(data, image_key=image_column, label_key=label_column)
        if len(samples.urls) < world:
            raise DataError(f"{len(samples.urls)} shards cannot be split over {world} processes; pack smaller shards")
        data_config = data_config or model_data_config(model)
        made = find_spec(model)
        spec = dict(model_spec or {"spec": made.name if made else None})
        transform, model = eval_transform(data_config), model.to(device).eval()
        parts: list[Embeddings] = []
        skipped: list[Skipped] = []
        pending: list[Record] = []
        for shard in range(rank, len(samples.urls), world):
            for record in read_records(samples, shard):
                pending.append(record)
                if len(pending) == batch_size:
                    parts.append(_batch(model, pending, transform, classes, device, patch_tokens, skipped))
                    pending = []
        if pending:
            parts.append(_batch(model, pending, transform, classes, device, patch_tokens, skipped))
        parts = [part for part in parts if part is not None]
        if not parts:
            raise DataError(f"no image of rank {rank}'s shards of {data} decoded")
        tokens = [p.patch_tokens for p in parts]
        result = Embeddings(torch.cat([p.embeddings for p in parts]), torch.cat([p.labels for p in parts]),
                            [name for p in parts for name in p.paths], classes,
                            torch.cat(tokens) if patch_tokens else None, spec, data_config)
        result.skipped = [(s.path, s.reason) for s in skipped]  # type: ignore[attr-defined]
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        name = f"embeddings-{rank:05d}-of-{world:05d}.safetensors"
        save_embeddings(result, out / name)
        written: list[Any] = [None] * world
        if world > 1:
            dist.all_gather_object(written, (name, len(result)))
        else:
            written = [(name, len(result))]
        if rank == 0:
            index = {"format": INDEX_FORMAT, "data": str(data), "classes": classes, "model": spec,
                     "images": sum(count for _, count in written),
                     "parts": [{"file": file, "count": count} for file, count in written]}
            atomic_write(out / EMBEDDING_INDEX, json.dumps(index, indent=1).encode())
        if world > 1:
            dist.barrier()
        return result
    finally:
        if started:
            dist.destroy_process_group()
