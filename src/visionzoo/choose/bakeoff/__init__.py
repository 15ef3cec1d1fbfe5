"""`advise --data`: a budgeted bake-off that picks the best model for the user's images and device.

ImageNet rank predicts rank on a user's task only loosely, and eager latency is not the latency
of the engine one deploys with; so this measures both here:

1. candidates (`latency`): registered models with weights that meet every constraint, latency measured on
   this machine in the deploy engine (edge/cpu: onnxruntime fp32 and int8, the faster; gpu: eager
   PyTorch on CUDA), at most N, spread across families and sizes;
2. scores (`probe`): train and validation images embedded once per candidate (`embeddings.embed_samples`,
   cached by file contents, model and weights, reused across runs), scored before any training
   (`visionzoo.embed.scores`): LogME and k-NN leave-one-out on the training images, the linear probe
   and k-NN on the validation selection;
3. fine-tune (`finetune`, `decision`): the finalists, ranked by `rank_by` (default LogME,
   `decision.RANKING_SCORE`): the leader, and the next ones (at most --finetune-top in all) only
   while they are within the noise of it or lead another score (`decision.choose_finalists`;
   finalists="top" takes the K best regardless), with the transfer
   recipe, one `visionzoo.training.worker` process per device, within what is left of the budget;
   successive halving (ASHA, eta 2) with one rung at half the schedule, where a run stops only when it
   is out of the better half and trails the leader by more than the selection's standard error;
4. result (`result`): the best fine-tune on the selection, or, when the finished finalists end within
   one standard error of each other there, the best on the full validation set (and the result says
   how close it was); a table, the winner's run folder and export in --out, a Pareto plot, the commands.

--budget-min bounds the whole run: each stage starts no new work past the deadline (`state.Deadline`), an
embedding stops between batches, and the fine-tunes get what is left less a tenth kept for the result.
Before any of it, candidates whose weights are neither local nor in the Hugging Face cache while the Hub
is unreachable are skipped, saying which; when none is left, that is an error at once.

Everything finished is recorded in OUT/bakeoff-state.json (`state`, written atomically): a rerun with the
same --out after any interruption, kill -9 included, reuses measurements, probes and finished
fine-tunes, and resumes an interrupted fine-tune from its checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionzoo.choose.bakeoff.data import SELECTION_IMAGES, selection, split_csv
from visionzoo.choose.bakeoff.decision import RANKING_SCORE, SCORE_NAMES, choose_finalists
from visionzoo.choose.bakeoff.finetune import FineTuneScheduler, fine_tune_all, planned_epochs, record_outcomes
from visionzoo.choose.bakeoff.latency import MeasureFn, measure_latency, shortlist
from visionzoo.choose.bakeoff.probe import per_class_scores, probe_all
from visionzoo.choose.bakeoff.result import BakeoffResult, choose_winner, plot_bakeoff, write_result
from visionzoo.choose.bakeoff.state import BakeoffRequest, BakeoffState, Deadline, kill_point
from visionzoo.choose.candidates import Candidate, candidate_pool
from visionzoo.errors import DataError, SettingError

__all__ = ["BakeoffResult", "bakeoff", "plot_bakeoff"]


def bakeoff(data: str | os.PathLike, *, target: str = "cpu", latency_ms: float | None = None,
            max_params_m: float | None = None, commercial: bool = False, weights: dict[str, str] | None = None,
            candidates: int | list[str] = 8, finetune_top: int = 2, finalists: str = "adaptive",
            rank_by: str = RANKING_SCORE, budget_min: float | None = None,
            out: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
            devices: list[str] | None = None, image_size: int | None = None,
            finetune_settings: dict[str, Any] | None = None, selection_images: int = SELECTION_IMAGES,
            cache_dir: str | os.PathLike | None = None, progress: bool = True, max_measured: int | None = None,
            measure_fn: MeasureFn | None = None) -> BakeoffResult:
    """Choose a model on `data` (a folder, CSV, archive or builtin:shapes) for `target`; see the module docstring.

    `candidates` is how many to take from the zoo, or the zoo names to take (a model without pretrained
    weights is refused: random weights must never win); `finetune_top` bounds the finalists, which
    `finalists="adaptive"` picks by the gaps in the ranking score `rank_by` ("logme", "knn_loo" or
    "linear") and `"top"` takes as the K best;
    `image_size` trains, embeds and measures every candidate at that side (default: each model's
    own); `finetune_settings` adds `visionzoo train` settings (e.g. {"epochs": 3}); `cache_dir`
    holds the embeddings (default: the visionzoo cache, shared by every run); `measure_fn`
    replaces the latency measurement: (candidate, target, image_size) -> (ms, engine).
    """
    from visionzoo.data.archives import cache_root
    from visionzoo.data.sources import resolve_data

    deadline = Deadline.after(budget_min)  # the whole run, from now
    data_text = str(data)
    names = [candidates] if isinstance(candidates, str) else list(candidates) if not isinstance(candidates, int) else None
    if names is not None:
        candidates = len(names)
    request = BakeoffRequest(
        data=data_text, target=target, out=Path(out or f"bakeoff-{Path(data_text).stem or 'data'}"),
        cache_dir=Path(cache_dir) if cache_dir else cache_root() / "embeddings", devices=tuple(devices or ["cpu"]),
        latency_ms=latency_ms, max_params_m=max_params_m, commercial=commercial, weights=weights,
        candidates=candidates, finetune_top=finetune_top, finalists=finalists, rank_by=rank_by,
        names=tuple(names or ()), budget_min=budget_min, plot=plot, image_size=image_size,
        finetune_settings=dict(finetune_settings or {}), selection_images=selection_images, progress=progress,
        max_measured=max_measured)
    _check(request)
    with _progress(request.progress) as bars:
        say = _say(bars, request.progress)
        say(f"bake-off on {data_text} for target {target}"
            + (f" within --budget-min {budget_min:g}" if budget_min else "")
            + ": checking that each candidate's weights are here (a local file, or the Hugging Face cache)")
        pool = candidate_pool(request.weights, request.commercial, here=True,  # raises at once when none are
                              names=list(request.names) or None)
        for c in pool[1]:
            if c.status.startswith("refused"):
                say(f"{c.name}: {c.status}")
        skipped = [c.name for c in pool[1] if c.status.startswith("skipped")]
        if skipped:
            say(f"skipped {len(skipped)} candidate{'s' if len(skipped) != 1 else ''} whose weights are not here "
                f"({', '.join(skipped[:8])}{', ...' if len(skipped) > 8 else ''}); add one with --weights NAME=FILE")
        say(f"{len(pool[0])} candidate{'s' if len(pool[0]) != 1 else ''} with weights here; reading {data_text}")
        request.out.mkdir(parents=True, exist_ok=True)
        state = BakeoffState(request.out, request.saved())
        splits = resolve_data(data_text)
        if splits.val is None or not len(splits.val):
            raise DataError(f"{data_text} has no validation images to choose on; add a val/ folder or more images")
        return _run(request, state, splits, measure_fn or measure_latency, _Stages(bars, say, pool, deadline))


@dataclass
class _Stages:
    """What every stage shares: the progress bars, the line printer, the candidates, the deadline."""

    bars: Any
    say: Callable[[str], None]
    pool: tuple[list[Candidate], list[Candidate]]
    deadline: Deadline


def _say(bars, enabled: bool) -> Callable[[str], None]:
    """Prints a line that stays (above the bars) saying what the bake-off does now."""
    return (lambda text: bars.console.print(text, highlight=False, markup=False, soft_wrap=True)) if enabled else (lambda text: None)


def _check(request: BakeoffRequest) -> None:
    from visionzoo.choose.benchmark import TARGETS

    if request.target not in TARGETS:
        raise SettingError(f"target must be one of {', '.join(TARGETS)}, got {request.target!r}")
    if request.candidates < 1 or request.finetune_top < 0:
        raise SettingError(f"--candidates must be >= 1 and --finetune-top >= 0, got {request.candidates} and "
                           f"{request.finetune_top}")
    if request.finalists not in ("adaptive", "top"):
        raise SettingError(f"finalists must be 'adaptive' or 'top', got {request.finalists!r}")
    if request.rank_by not in SCORE_NAMES:
        raise SettingError(f"rank_by must be one of {', '.join(SCORE_NAMES)}, got {request.rank_by!r}")
    if request.target == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise SettingError("target 'gpu' measures on a CUDA GPU and none is visible; use --target cpu or edge")


def _run(request: BakeoffRequest, state: BakeoffState, splits, measure: MeasureFn, stages: _Stages) -> BakeoffResult:
    """The four stages, each timed and each stopping new work at the deadline; see the module docstring."""
    seconds: dict[str, float] = {}
    bars, deadline = stages.bars, stages.deadline
    chosen_val, kept = selection(splits.val, request.selection_images)
    train_data = request.data
    if kept is not None:  # fine-tunes validate (and halve) on the selection; the winner is scored on all of val
        train_data = str(split_csv(request.out / "selection.csv", splits.classes,
                                   [(splits.train, "train"), (chosen_val, "val")]))
    summary = {"train": len(splits.train), "val": len(splits.val), "classes": list(splits.classes)}
    result = BakeoffResult(request.target, request.constraints, summary, [], None, out=str(request.out),
                           seconds=seconds)
    overall = bars.add_task("bake-off", total=None)
    with _timed(seconds, "candidates"):
        stages.say(f"candidates: measuring latency on this machine ({request.target})")
        result.candidates, chosen, result.message = shortlist(request, state, bars, measure, stages.pool, deadline)
    kill_point("after-candidates")
    if not chosen:
        if deadline.passed() and all(c.latency_ms is None for c in result.candidates):
            result.message = f"--budget-min {request.budget_min:g} ran out before any candidate was measured"
        return write_result(result, request.plot, request.out)
    per_candidate = len(splits.train) + len(chosen_val)
    probe_work = len(chosen) * (1 + per_candidate // 64)
    bars.update(overall, total=probe_work + request.finetune_top * 10)
    with _timed(seconds, "probe"):
        stages.say(f"probe: embedding your images with {len(chosen)} candidate{'s' if len(chosen) != 1 else ''}")
        result.embedded = probe_all(chosen, request, state, splits, chosen_val, bars, overall, deadline)
    probed = [c for c in chosen if c.probe_top1 is not None]
    if not probed:
        result.message = f"--budget-min {request.budget_min:g} ran out before any candidate was probed; raise it"
        return write_result(result, request.plot, request.out)
    ranked, finalists = _finalists(probed, request, state)
    with _timed(seconds, "finetune"):
        if finalists:
            stages.say(f"fine-tune: {', '.join(c.name for c in finalists)} (by {SCORE_NAMES[request.rank_by]}"
                       + ("; a clear leader" if len(finalists) == 1 < min(len(ranked), request.finetune_top)
                          else "") + ")")
        _fine_tune(finalists, request, state, train_data, splits, len(chosen_val), bars, overall, probe_work,
                   deadline)
    with _timed(seconds, "result"):
        stages.say("result: scoring and exporting the winner")
        result.winner, result.commands = choose_winner(ranked, finalists, request, state, splits, kept,
                                                       len(chosen_val), seconds=seconds)
        if result.winner.get("decision"):
            stages.say(result.winner["decision"])
    return write_result(result, request.plot, request.out)


def _finalists(probed: list[Candidate], request: BakeoffRequest, state: BakeoffState
               ) -> tuple[list[Candidate], list[Candidate]]:
    """(the probed candidates ranked by the ranking score, the finalists); the others say why not."""
    def score(c: Candidate) -> float:
        value = c.scores.get(request.rank_by)
        return value if value is not None else c.probe_top1

    ranked = sorted(probed, key=lambda c: (-score(c), -c.probe_top1, c.latency_ms))
    if request.finalists == "top":
        names = [c.name for c in ranked[:request.finetune_top]]
        left_out = {c.name: f"rank {rank} > --finetune-top {request.finetune_top}"
                    for rank, c in enumerate(ranked[request.finetune_top:], request.finetune_top + 1)}
    else:
        others = [max(ranked, key=lambda c, name=name: c.scores.get(name, float("-inf"))).name
                  for name in SCORE_NAMES if name != request.rank_by]
        names, left_out = choose_finalists({c.name: score(c) for c in ranked},
                                           per_class_scores(state, [c.name for c in ranked], request.rank_by),
                                           request.finetune_top, other_leaders=others)
    for c in ranked:
        if c.name in left_out:
            c.status = f"not fine-tuned: {SCORE_NAMES[request.rank_by]} {left_out[c.name]}"
    return ranked, [c for c in ranked if c.name in names]


def _fine_tune(finalists: list[Candidate], request: BakeoffRequest, state: BakeoffState, train_data: str, splits,
               num_val: int, bars, overall, probe_work: int, deadline: Deadline) -> None:
    if not finalists:
        return
    epochs_of = {c.name: planned_epochs(c.name, splits, num_val, request.image_size, request.finetune_settings)
                 for c in finalists}
    total = sum(epochs_of.values())
    task = bars.add_task("fine-tune", total=total)
    bars.update(overall, total=probe_work + total)
    scheduler = FineTuneScheduler(finalists, state, train_data, request, epochs_of,
                                  _epoch_progress(bars, task, overall), num_val)
    left = deadline.left_s()
    if left is not None:  # what is left of the whole run, less a tenth of it kept for scoring and exporting the winner
        left -= 6 * request.budget_min
    # fine_tune_all counts its budget across reruns: this run's share comes on top of what earlier ones used
    fine_tune_all(scheduler, None if left is None else float(state.data.get("finetune_seconds", 0.0)) + max(left, 0))
    record_outcomes(finalists, state)


def _epoch_progress(bars, task, overall) -> Callable[[str, int, int], None]:
    """Advances the bars by the epochs each run newly reports."""
    reached: dict[str, int] = {}

    def on_epoch(key: str, epoch: int, epochs: int) -> None:
        delta = epoch - reached.get(key, 0)
        if delta > 0:
            reached[key] = epoch
            bars.update(task, description=f"fine-tune: {key} epoch {epoch}/{epochs}")
            bars.advance(task, delta)
            bars.advance(overall, delta)

    return on_epoch


class _timed:
    """`with _timed(seconds, "probe"):` adds the block's wall time to seconds["probe"]."""

    def __init__(self, seconds: dict[str, float], stage: str):
        self.seconds, self.stage = seconds, stage

    def __enter__(self):
        self.started = time.monotonic()

    def __exit__(self, *exc) -> None:
        self.seconds[self.stage] = time.monotonic() - self.started


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                    disable=not enabled)
