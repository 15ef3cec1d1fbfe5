"""Asynchronous successive halving (ASHA, Li et al. 2020) with eta 2, as the bake-off's fine-tunes use it.

Each run is validated at rungs (about a third and two thirds of its epochs, and the end). At each
rung before the last a run continues only while it is in the better half of the runs that reached
that epoch, so a candidate that trails the leader at the same point stops. Pure functions of the
validation curves, so that the rule is tested with made-up curves.
"""

from __future__ import annotations

import math

__all__ = ["halving_verdict", "rung_every"]


def rung_every(epochs: int) -> int:
    """Epochs between validations: about a third of the run, so the rungs fall at a third, two thirds and the end."""
    return max(1, round(epochs / 3))


def halving_verdict(key: str, curves: dict[str, dict[int, float]], epochs: int) -> tuple[int, float, float] | None:
    """(epoch, its top-1, the leader's) when run `key` falls out of the better half at a rung before
    the end; None while it may continue. `curves` holds {run: {epoch: validation top-1}}."""
    for epoch in sorted(curves[key]):
        if epoch >= epochs:
            break
        mine = curves[key][epoch]
        others = [curve[epoch] for other, curve in curves.items() if other != key and epoch in curve]
        if not others:
            continue
        better = sum(value > mine for value in others)
        if better >= math.ceil((len(others) + 1) / 2):  # not in the top half (eta 2); ties stay
            return epoch, mine, max(others)
    return None
