"""Nearest neighbours in embedding space: near-duplicates, leaks and outliers.

- near-duplicates: each image's nearest neighbours by cosine similarity, found block by block
  (one matrix product per block of queries, never a Python loop over pairs), kept when the
  perceptual hashes also agree (Hamming distance at most `hash_distance` of 64 bits): the
  embedding finds the candidates, the hash confirms that the pixels, not only the content, match;
  exact duplicates (the same bytes) come from the SHA-256 digests;
- leaks are duplicates whose two images lie in different splits (the later split's image is
  `path`); they are listed first, since they inflate validation scores;
- outliers: low k-NN density, scored as 1 - mean cosine similarity to the k nearest
  neighbours, flagged when the modified z-score (Iglewicz and Hoaglin, 1993) exceeds the limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visionzoo.diagnose.data_audit.collect import AuditFiles
from visionzoo.diagnose.data_audit.hashing import hamming

__all__ = ["nearest_neighbours", "duplicate_pairs", "duplicates_and_leaks", "outliers"]


def nearest_neighbours(embeddings: torch.Tensor, k: int, progress: bool, block_elements: int = 2**25
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


def duplicate_pairs(files: AuditFiles, digests: list[str], hashes: np.ndarray, good: np.ndarray,
                    similarities: torch.Tensor, neighbours: torch.Tensor, *, near_similarity: float,
                    hash_distance: int) -> list[dict[str, Any]]:
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
    keep = sims >= near_similarity
    a, b, sims = good[rows[keep]], good[cols[keep]], sims[keep]
    distance = hamming(hashes, a, b)
    confirmed = distance <= hash_distance
    for i, j, similarity, bits in zip(a[confirmed], b[confirmed], sims[confirmed], distance[confirmed]):
        key = (int(min(i, j)), int(max(i, j)))
        if key not in pairs:
            pairs[key] = {"similarity": round(float(min(similarity, 1.0)), 4), "hash_distance": int(bits),
                          "kind": "near"}
    return [{"i": i, "j": j, **facts} for (i, j), facts in sorted(pairs.items())]


def duplicates_and_leaks(files: AuditFiles, pairs: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(leaks, duplicates): pairs across splits and within one, the image to drop as `path`, most similar first."""
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


def outliers(similarities: torch.Tensor, z_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores, flagged): score = 1 - mean similarity to the k nearest; flagged by the modified z-score."""
    scores = (1.0 - similarities.mean(1)).numpy().astype(np.float64)
    median = np.median(scores)
    spread = np.median(np.abs(scores - median))
    if spread <= 0:
        return scores, np.zeros(len(scores), dtype=bool)
    z = 0.6745 * (scores - median) / spread
    return scores, z > z_limit
