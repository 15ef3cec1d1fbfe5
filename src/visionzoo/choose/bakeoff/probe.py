"""Stage 2 of the bake-off: each chosen candidate's transferability scores (`visionzoo.embed.scores`:
LogME and k-NN leave-one-out on the training embeddings, the linear probe and k-NN on the selection) from
frozen embeddings of the user's images, embedded once per model and weights and cached by contents.

The state keeps, per candidate, probe_top1 and knn_top1 (as before) and "scores": {name: {"value",
"per_class"}}; a state written before the scores existed gets them on the next run, from the cache."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visionzoo.choose.bakeoff.state import BakeoffRequest, BakeoffState, BudgetSpent, Deadline, kill_point
from visionzoo.choose.candidates import Candidate

__all__ = ["per_class_scores", "probe_candidate", "probe_all", "weights_identity"]


def weights_identity(weights: str) -> str:
    """A local file by its contents (a checkpoint overwritten in place is new weights); else its name."""
    if not Path(weights).is_file():
        return f"catalog:{weights}"
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"file:{digest.hexdigest()}"


def _data_config(model, image_size: int | None) -> dict[str, Any]:
    from visionzoo.factory import data_config

    config = dict(data_config(model))
    if image_size:
        config.update(input_size=(3, image_size, image_size), crop_pct=1.0)
    return config


def probe_candidate(c: Candidate, splits, selection, cache_dir: Path, image_size: int | None,
                    device: str, progress: Callable[[int], None]) -> tuple[float, float, int, dict[str, Any]]:
    """(linear top-1, k-NN top-1, images embedded now, {score: {"value", "per_class"}}) of one candidate."""
    import visionzoo
    from visionzoo.embed.embeddings import embed_samples
    from visionzoo.embed.probe import run_probe
    from visionzoo.embed.scores import transferability
    from visionzoo.factory import size_overrides
    from visionzoo.registry import get_card

    # built for the side it is fed at, as training builds it: a ViT's position table is resampled to it
    overrides = size_overrides(get_card(c.name), image_size) if image_size else {}
    model = visionzoo.create_model(c.name, pretrained=c.weights, **overrides)
    config = _data_config(model, image_size)
    identity = {"model": c.name, "weights": weights_identity(c.weights)}
    parts = {part: embed_samples(model, samples, splits.classes, cache_dir, identity=identity, data_config=config,
                                 device=device, on_batch=progress)
             for part, samples in (("train", splits.train), ("val", selection))}
    embedded = sum(result.embedded for result in parts.values())  # type: ignore[attr-defined]
    scores = transferability(parts["train"], parts["val"])
    knn = run_probe(parts["train"], parts["val"], "knn").top1
    saved = {name: {"value": score.value, "per_class": score.per_class} for name, score in scores.items()}
    return scores["linear"].value, knn, embedded, saved


def probe_all(chosen: list[Candidate], request: BakeoffRequest, state: BakeoffState, splits, selection,
              bars, overall, deadline: Deadline = Deadline()) -> int:
    """Probe every chosen candidate (saved scores reused) until `deadline`; returns the images embedded by this
    call. A candidate left unprobed at the deadline keeps probe_top1 None and says why in its status."""
    embedded = 0
    per_candidate = len(splits.train) + len(selection)
    task = bars.add_task("probe: embedding", total=len(chosen) * per_candidate)

    def advance(count: int) -> None:
        bars.advance(task, count)
        deadline.check()  # between batches: one large model's embedding must not outlast the budget

    for c in chosen:
        saved = state.get(c.name)
        if saved.get("probe_top1") is None or "scores" not in saved:  # an older state: scores from the cache
            if deadline.passed():
                c.status = deadline.reason("not probed")
                continue
            bars.update(task, description=f"probe: embedding with {c.name}")
            try:
                saved["probe_top1"], saved["knn_top1"], count, saved["scores"] = probe_candidate(
                    c, splits, selection, request.cache_dir, request.image_size, request.devices[0], advance)
            except BudgetSpent:
                c.status = deadline.reason("not probed (stopped while embedding)")
                continue
            embedded += count
            state.save()
            kill_point("after-probe")
        else:
            bars.advance(task, per_candidate)
        c.probe_top1, c.knn_top1 = saved["probe_top1"], saved["knn_top1"]
        c.scores = {name: score["value"] for name, score in saved["scores"].items()}
        c.status = "probed"
        bars.advance(overall, 1 + per_candidate // 64)
    return embedded


def per_class_scores(state: BakeoffState, names: list[str], score: str) -> dict[str, list[float]]:
    """{candidate: its `score` per class}, as saved by `probe_all`, for the finalists' noise."""
    return {name: list(state.get(name).get("scores", {}).get(score, {}).get("per_class", [])) for name in names}
