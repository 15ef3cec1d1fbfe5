"""Steps run once training ends, on the best model and the validation data.

Extension point: `after_training_steps(settings)` lists them, chosen from the settings. Today:
`heads.fit_head_step`, which fits temperature scaling, per-class decision thresholds (multi-label)
and the unknown rule (single-label) and writes them into best/'s config.json. Each step is given a
`TrainedRun` (the best model with its weights loaded back from `best/`, its validation logits
and labels) and may write what it fits next to the model in `best/`. The trainer runs them on rank 0, after
`best/` and `last/` are exported and before the plots and `summary.json`; with no steps,
nothing is loaded or evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from visionzoo.training.settings import TrainSettings

__all__ = ["TrainedRun", "AfterTrainingStep", "after_training_steps"]


@dataclass
class TrainedRun:
    """What each step after training is given."""

    run_dir: Path
    best_dir: Path  # the best model's export (run_dir / "best")
    model: nn.Module  # that model (best/'s weights in a copy of the trained module), in eval mode, on the device
    validation: dict[str, Any] | None  # its metrics on the validation data (`evaluate.classification_metrics`)
    # with "_logits", "_labels" and "_indices" (dataset order); None when the run has no validation data
    classes: list[str]
    data_config: dict[str, Any]
    settings: TrainSettings


AfterTrainingStep = Callable[[TrainedRun], None]


def after_training_steps(settings: TrainSettings) -> list[AfterTrainingStep]:
    """The steps to run after training with `settings`, in order."""
    from visionzoo.training.heads import fit_head_step

    steps: list[AfterTrainingStep] = [fit_head_step]  # always: best/ at least records its task
    return steps
