"""The candidate pool both ways of choosing start from: `advise` (published figures, latency measured
or estimated) and the bake-off (measured on the user's images).

A candidate is a registered variant with weights: by default the catalog entry with a published
ImageNet-1k top-1 (the variant's default weight when it has one, else its best), or a local weight
file the user names. `Constraints` say how far a candidate is from what was asked, `nothing_fits`
says which constraint rules everything out and what came closest, and `pareto_front` picks the
candidates no other beats on both speed and accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionzoo.errors import SettingError

__all__ = ["COMMERCIAL_LICENSES", "Candidate", "Constraints", "candidate_pool", "nothing_fits", "pareto_front",
           "spread"]

COMMERCIAL_LICENSES = frozenset({"apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "cc-by-4.0"})


@dataclass
class Candidate:
    """One model and its weights, with what is known about it so far: the static facts from the
    registry and the catalog, then what `advise` or the bake-off measured."""

    name: str
    weights: str  # catalog weight name, or a local weight file
    family: str = ""
    year: int = 0
    top1: float | None = None  # published ImageNet-1k top-1, percent
    params: int = 0
    gmacs: float = 0.0
    size_mb: float | None = None  # the weight file on disk (local file), else fp32 parameters
    latency_ms: float | None = None  # edge/cpu: batch-1 latency (p50); gpu: milliseconds per image at batch 64
    memory_mb: float | None = None
    measured: bool = False
    latency_note: str = ""  # a measurement reused from the cache says so: "cached 3 h ago, load 0.40"
    engine: str | None = None  # the deploy engine the bake-off measured latency in
    probe_top1: float | None = None  # bake-off: linear probe on the selection part of the user's validation
    knn_top1: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # bake-off: transferability scores (embed.scores)
    finetune_top1: float | None = None
    status: str = "candidate"  # bake-off: what happened to it, in words
    run_dir: str | None = None

    def row(self) -> dict[str, Any]:
        """The bake-off's `--json` row."""
        return {"name": self.name, "weights": self.weights, "probe_top1": self.probe_top1,
                "finetune_top1": self.finetune_top1, "latency_ms": self.latency_ms, "engine": self.engine,
                "params": self.params, "status": self.status, "scores": dict(self.scores)}


@dataclass(frozen=True)
class Constraints:
    latency_ms: float | None = None
    max_params_m: float | None = None
    max_memory_mb: float | None = None
    min_top1: float | None = None

    def violations(self, c: Candidate) -> dict[str, float]:
        """Each violated constraint with how far off it is, as a fraction of the limit."""
        out = {}
        if self.max_params_m is not None and c.params / 1e6 > self.max_params_m:
            out["max_params"] = c.params / 1e6 / self.max_params_m - 1
        if self.min_top1 is not None and c.top1 is not None and c.top1 < self.min_top1:
            out["min_top1"] = (self.min_top1 - c.top1) / self.min_top1
        if self.latency_ms is not None and c.latency_ms is not None and c.latency_ms > self.latency_ms:
            out["latency_ms"] = c.latency_ms / self.latency_ms - 1
        if self.max_memory_mb is not None and c.memory_mb is not None and c.memory_mb > self.max_memory_mb:
            out["max_memory_mb"] = c.memory_mb / self.max_memory_mb - 1
        return out


def candidate_pool(weights: dict[str, str] | None = None, commercial: bool = False, *, here: bool = False,
                   names: list[str] | None = None) -> tuple[list[Candidate], list[Candidate]]:
    """(usable, dropped) candidates with their static facts, best published top-1 first.

    `weights` ({model name: local weight file}) restricts the pool to those models with those files;
    `names` picks models from the whole zoo instead (each with its `weights` file when given, else its
    catalog weights; one without pretrained weights is refused, since random weights must never win a
    bake-off); `commercial` keeps only catalog weights whose licence allows commercial use; `here` keeps
    only catalog weights that can be had now (cached, or online), the others dropped as skipped, and
    raises at once, before any measuring, when none can."""
    if names:
        return _named_pool(names, weights or {}, commercial, here)
    if weights:
        return [_local_candidate(name, file) for name, file in weights.items()], []
    best, dropped_by_licence = _catalog_best(commercial)
    dropped = _not_here(best) if here else []  # first: when nothing can be had, it says so before any work
    for architecture, entry in dropped_by_licence.items():
        if architecture not in best and all(c.name != architecture for c in dropped):
            dropped.append(_licence_dropped(entry))
    usable = sorted((_catalog_candidate(entry) for entry in best.values()), key=lambda c: -(c.top1 or 0.0))
    return usable, dropped


def _catalog_best(commercial: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """({architecture: its catalog entry with a published ImageNet-1k top-1}, {architecture: an entry
    left out for its licence}): the default weight when it has a top-1, otherwise the best one that does."""
    from visionzoo.registry import list_models
    from visionzoo.weights.catalog import list_weights

    registered = set(list_models())
    best: dict[str, Any] = {}
    dropped_by_licence: dict[str, Any] = {}
    for entry in list_weights():
        if entry.architecture not in registered or entry.num_classes != 1000 or not entry.imagenet \
                or entry.imagenet.get("top1") is None:
            continue
        if commercial and entry.license not in COMMERCIAL_LICENSES:
            dropped_by_licence.setdefault(entry.architecture, entry)
            continue
        current = best.get(entry.architecture)
        if current is None or (entry.default and not current.default) or (
                entry.default == current.default and entry.imagenet["top1"] > current.imagenet["top1"]):
            best[entry.architecture] = entry
    return best, dropped_by_licence


def _licence_dropped(entry) -> Candidate:
    c = _catalog_candidate(entry)
    c.status = f"dropped: licence {entry.license} does not allow commercial use"
    return c


def _named_pool(names: list[str], weights: dict[str, str], commercial: bool, here: bool
                ) -> tuple[list[Candidate], list[Candidate]]:
    """The models the user named: a local weight file when given, else the catalog's weights; refused
    when there are none (random weights must never win), skipped when they cannot be had here."""
    from visionzoo.registry import get_card

    best, dropped_by_licence = _catalog_best(commercial)
    usable, chosen, dropped = [], {}, []
    for name in dict.fromkeys(names):
        card = get_card(name)  # an unknown name raises the unknown-model error with suggestions
        if name in weights:
            usable.append(_local_candidate(name, weights[name]))
        elif name in best:
            chosen[name] = best[name]
        elif name in dropped_by_licence:
            dropped.append(_licence_dropped(dropped_by_licence[name]))
        else:
            dropped.append(Candidate(name=name, weights="", family=card.family, year=card.year, status=(
                f"refused: {name} has no pretrained ImageNet weights in the catalog, and random weights must never "
                f"win a bake-off; give --weights {name}=FILE")))
    for name in weights:
        if name not in names:
            raise SettingError(f"--weights {name}=... names a model that is not among the candidates "
                               f"({', '.join(names)}); add it to --candidates or drop the --weights")
    if not usable and not chosen:
        raise SettingError("no named candidate has pretrained weights: "
                           + "; ".join(c.status.removeprefix("refused: ").removeprefix("dropped: ") for c in dropped))
    dropped += _not_here(chosen, raise_when_none=not usable) if here else []
    usable += [_catalog_candidate(entry) for entry in chosen.values()]
    return sorted(usable, key=lambda c: -(c.top1 or 0.0)), dropped


def _not_here(best: dict[str, Any], raise_when_none: bool = True) -> list[Candidate]:
    """Removes from `best` the architectures whose weights cannot be had now and returns them as skipped
    candidates (no parameter count: measuring it would be work for a model that cannot be used)."""
    from visionzoo.registry import get_card
    from visionzoo.weights import WeightsNotAvailableError, unobtainable_weights

    reasons = {name: unobtainable_weights(name, entry.name) for name, entry in best.items()}
    missing = {name: reason for name, reason in reasons.items() if reason}
    if raise_when_none and missing and len(missing) == len(best):
        example = next(iter(missing.values()))
        raise WeightsNotAvailableError(
            f"none of the {len(best)} candidates' weights can be had here (e.g. {example}); give "
            "local weight files with --weights NAME=FILE (repeatable, e.g. --weights efficientnet_lite0=lite0.pth), "
            "or connect to the Hub once to fill its cache")
    skipped = []
    for name, reason in missing.items():
        entry, card = best.pop(name), get_card(name)
        skipped.append(Candidate(name=name, weights=entry.name, family=card.family, year=card.year,
                                 top1=float(entry.imagenet["top1"]),
                                 status=f"skipped: weights not here ({reason}); give --weights {name}=FILE"))
    return skipped


def _catalog_candidate(entry) -> Candidate:
    from visionzoo.factory import model_complexity
    from visionzoo.registry import get_card

    card, complexity = get_card(entry.architecture), model_complexity(entry.architecture)
    return Candidate(name=entry.architecture, weights=entry.name, family=card.family, year=card.year,
                     top1=float(entry.imagenet["top1"]), params=complexity["params"], gmacs=complexity["gmacs"],
                     size_mb=complexity["params"] * 4 / 2**20)


def _local_candidate(name: str, file: str) -> Candidate:
    from visionzoo.factory import model_complexity
    from visionzoo.registry import get_card
    from visionzoo.weights.catalog import default_weight

    card = get_card(name)  # an unknown name raises the unknown-model error with suggestions
    if not Path(file).is_file():
        raise SettingError(f"--weights {name}={file}: no such file; give NAME=PATH/TO/WEIGHTS")
    entry, complexity = default_weight(name), model_complexity(name)
    published = entry.imagenet.get("top1") if entry and entry.imagenet else None
    return Candidate(name=name, weights=str(Path(file).resolve()), family=card.family, year=card.year,
                     top1=float(published) if published else None, params=complexity["params"],
                     gmacs=complexity["gmacs"], size_mb=Path(file).stat().st_size / 2**20)


def spread(pool: list[Candidate]) -> list[Candidate]:
    """The pool reordered so that any prefix spans families and sizes: round-robin over families
    (best ImageNet top-1 first), each family's sizes alternating from the middle outwards."""
    families: dict[str, list[Candidate]] = {}
    for c in sorted(pool, key=lambda c: c.params):
        families.setdefault(c.family, []).append(c)
    queues = []
    for members in families.values():
        middle, order = len(members) // 2, []
        for step in range(len(members)):  # middle, then one smaller, one larger, ...
            index = middle + (step + 1) // 2 * (-1 if step % 2 else 1)
            if 0 <= index < len(members):
                order.append(members[index])
        order += [m for m in members if m not in order]
        queues.append(order)
    queues.sort(key=lambda q: -max(c.top1 or 0.0 for c in q))
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def nothing_fits(pool: list[Candidate], violations: Callable[[Candidate], dict[str, float]]) -> str:
    """Why no candidate is left: the constraints (as `violations` names them) that rule out every one,
    and the three closest, by their total relative violation."""
    if not pool:
        return "nothing fits: no candidate is left (check --weights and --commercial)"
    counts: dict[str, int] = {}
    for c in pool:
        for key in violations(c):
            counts[key] = counts.get(key, 0) + 1
    ruling = [key for key, count in counts.items() if count == len(pool)]
    reason = (f"{' and '.join(ruling)} rule{'s' if len(ruling) == 1 else ''} out every candidate" if ruling else
              "no candidate meets every constraint together, though each alone can be met")
    closest = sorted(pool, key=lambda c: sum(violations(c).values()))[:3]
    details = "; ".join(
        f"{c.name} ({', '.join(f'{k} off by {100 * v:.0f}%' for k, v in violations(c).items()) or 'fits'}"
        + (f", {c.latency_ms:.2f} ms" if c.latency_ms is not None else "") + f", {c.params / 1e6:.2f}M params)"
        for c in closest)
    return f"nothing fits: {reason}. Closest: {details}"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not beaten on both axes (lower x, higher y), ordered by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
