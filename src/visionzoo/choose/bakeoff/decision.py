"""The bake-off's rules of decision, as pure functions of numbers, so that each is tested with made-up curves.

1. Finalists (`choose_finalists`): candidates ranked by one transferability score (`RANKING_SCORE`);
   the leader is always a finalist, and another joins only while its gap to the leader is within the
   noise (the standard error of the paired per-class differences of the score) or it leads another
   score. A clear leader, on which every score agrees, costs one fine-tune; a tie costs both.
2. Successive halving (`rung_every`, `halving_verdict`): one rung at half the schedule (a bigger
   model is often still catching up at a third), and a run is stopped there only when it is out of
   the better half *and* trails the leader by more than the selection's standard error.
3. The tie-break (`close_to_leader`, `closeness`): when the finished finalists end within one standard
   error of each other on the selection, the selection cannot tell them apart; they are scored on the
   full validation set and the result says how close it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["RANKING_SCORE", "SCORE_NAMES", "choose_finalists", "close_to_leader", "closeness", "halving_verdict",
           "paired_gap", "rung_every", "standard_error"]

# The score the finalists are ranked by. LogME ranked pretrained models best in You et al. 2021 and is
# the default; benchmarks/choose_cifar.py measures every score's Kendall tau against fine-tuned truth.
RANKING_SCORE = "logme"
SCORE_NAMES = {"logme": "LogME", "knn_loo": "k-NN leave-one-out", "linear": "linear probe"}


def standard_error(top1: float, n: int) -> float:
    """The binomial standard error of an accuracy `top1` measured on `n` images."""
    if n <= 0:
        return math.inf
    p = min(max(top1, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / n)


def paired_gap(leader: Sequence[float], other: Sequence[float]) -> tuple[float, float]:
    """(mean of leader - other, its standard error) over paired items (classes, or images).

    The standard error is that of the mean of the differences; with one item it is 0 (no spread known)."""
    differences = [a - b for a, b in zip(leader, other) if not (math.isnan(a) or math.isnan(b))]
    if not differences:
        return 0.0, math.inf
    mean = sum(differences) / len(differences)
    if len(differences) < 2:
        return mean, 0.0
    variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
    return mean, math.sqrt(variance / len(differences))


def choose_finalists(scores: dict[str, float], per_item: dict[str, Sequence[float]], most: int,
                     z: float = 1.0, other_leaders: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """(finalists, leader first; why each other candidate is left out).

    Candidates are ranked by `scores` (higher is better). The leader is a finalist; each next one joins
    while fewer than `most` are chosen and its gap to the leader is at most `z` standard errors of the
    paired per-item differences (`per_item`: each candidate's score per class, in the same order). The
    leaders of the other scores (`other_leaders`) join too while there is room: when the scores disagree
    on the best, that disagreement is noise the ranking score alone cannot see."""
    ranked = sorted(scores, key=lambda name: -scores[name])
    if most < 1 or not ranked:
        return [], {name: f"rank {rank} > --finetune-top {most}" for rank, name in enumerate(ranked, 1)}
    leader = ranked[0]
    within = {leader}
    for name in ranked[1:]:
        gap, error = paired_gap(per_item.get(leader, [scores[leader]]), per_item.get(name, [scores[name]]))
        if gap <= z * error:
            within.add(name)
    wanted = within | (set(other_leaders) & set(ranked))
    finalists, left_out = [], {}
    for rank, name in enumerate(ranked, 1):
        if name in wanted and len(finalists) < most:
            finalists.append(name)
        elif name in wanted:
            left_out[name] = f"rank {rank} > --finetune-top {most}"
        else:
            gap, error = paired_gap(per_item.get(leader, [scores[leader]]), per_item.get(name, [scores[name]]))
            left_out[name] = (f"rank {rank}, clearly behind {leader} (gap {gap:.3g} > {z:g} standard error "
                              f"{error:.2g} of the per-class differences) and the best by no other score")
    return finalists, left_out


def rung_every(epochs: int) -> int:
    """Epochs between validations: half the run, so that the one rung falls at half the schedule."""
    return max(1, math.ceil(epochs / 2))


def halving_verdict(key: str, curves: dict[str, dict[int, float]], epochs: int,
                    num_val: int | None = None, z: float = 1.0) -> tuple[int, float, float] | None:
    """(epoch, its top-1, the leader's) when run `key` is stopped at a rung before the end; None while it
    may continue. `curves` holds {run: {epoch: validation top-1}} on a selection of `num_val` images.

    A run is stopped only at a rung at or after half its schedule, only when it is not in the better
    half of the runs that reached that epoch (eta 2; ties stay), and only when it trails the leader by
    more than `z` of the selection's standard error at the leader's top-1."""
    for epoch in sorted(curves[key]):
        if epoch >= epochs:
            break
        if 2 * epoch < epochs:  # before the first rung (a curve of an older, denser schedule)
            continue
        mine = curves[key][epoch]
        others = [curve[epoch] for other, curve in curves.items() if other != key and epoch in curve]
        if not others:
            continue
        better = sum(value > mine for value in others)
        leader = max(others)
        within_noise = num_val is not None and leader - mine <= z * standard_error(leader, num_val)
        if better >= math.ceil((len(others) + 1) / 2) and not within_noise:
            return epoch, mine, leader
    return None


def close_to_leader(top1: dict[str, float], num_val: int, z: float = 1.0) -> list[str]:
    """The runs within `z` standard errors (at the leader's top-1, on `num_val` images) of the leader,
    the leader first, by top-1; one name when the leader is clear."""
    ranked = sorted(top1, key=lambda name: -top1[name])
    if not ranked:
        return []
    leader = top1[ranked[0]]
    margin = z * standard_error(leader, num_val)
    return [name for name in ranked if leader - top1[name] <= margin]


def closeness(selection_top1: dict[str, float], num_selection: int, full_top1: dict[str, float] | None = None,
              num_full: int | None = None) -> str:
    """In words: how close the finalists in `selection_top1` were, and, when they were scored on the full
    validation set too, what decided it."""
    ranked = sorted(selection_top1, key=lambda name: -selection_top1[name])
    error = standard_error(selection_top1[ranked[0]], num_selection)
    gap = selection_top1[ranked[0]] - selection_top1[ranked[-1]]
    said = (f"close: {', '.join(f'{n} {100 * selection_top1[n]:.2f}%' for n in ranked)} on the {num_selection}-image "
            f"selection, {100 * gap:.2f} points apart, within its standard error of {100 * error:.2f} points")
    if full_top1:
        decided = sorted(full_top1, key=lambda name: -full_top1[name])
        said += (f"; decided on all {num_full} validation images: "
                 + ", ".join(f"{n} {100 * full_top1[n]:.2f}%" for n in decided))
    else:
        said += "; the selection is the whole validation set, so nothing more can tell them apart"
    return said
