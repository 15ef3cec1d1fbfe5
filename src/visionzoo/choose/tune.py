"""Hyperparameter search for a fine-tune: `tune(model, data, trials=N, budget_min=B)`.

Optuna's TPE sampler (Bergstra et al. 2011) draws the settings that matter when fine-tuning
(`SEARCH_SPACE`: learning rate, weight decay, frozen stages, label smoothing, mixup and cutmix,
`freeze_bn`, epochs); each trial is a training run (`visionzoo.train`) in the tuning folder, and
reports its validation top-1 after every epoch to a successive-halving pruner (Jamieson & Talwalkar
2016, as Optuna implements it: a trial that is not in the top third of those that reached the same
epoch stops there).

The study lives in `study.db` (SQLite) in the tuning folder, so a tuner killed at any moment, even
by SIGKILL, goes on when run again with the same folder: the trial that was running is marked
failed and its settings are tried again first. At the end the folder holds `trials.csv`,
`importance.png` (how much each setting mattered, Optuna's PED-ANOVA) and `best_command.txt`, the
`visionzoo train` command of the best trial, whose run folder is `trial-NNN/`.
"""

from __future__ import annotations

import csv
import json
import shlex
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from visionzoo.errors import SettingError, require_extra

__all__ = ["SEARCH_SPACE", "TuneResult", "tune", "suggest_settings", "train_trial"]

# name -> ("log", low, high) | ("float", low, high) | ("choice", values); epochs are added by `suggest_settings`
SEARCH_SPACE: dict[str, tuple] = {
    "lr": ("log", 1e-4, 1e-2),
    "weight_decay": ("log", 1e-5, 1e-1),
    "freeze_stages": ("choice", (-1, 0, 1, 2)),  # -1: nothing frozen
    "label_smoothing": ("float", 0.0, 0.2),
    "mixup": ("choice", (0.0, 0.2, 0.4)),
    "cutmix": ("choice", (0.0, 0.5, 1.0)),
    "freeze_bn": ("choice", (True, False)),
}

Report = Callable[[int, float], None]  # (epoch from 1, validation score) -> None; raises optuna.TrialPruned
TrialFunction = Callable[[dict[str, Any], Path, Report], float]  # (settings, run folder, report) -> score


@dataclass
class TuneResult:
    folder: Path
    trials: int  # finished: completed or pruned
    pruned: int
    best_value: float
    best_settings: dict[str, Any]
    best_run: Path
    command: str  # the best trial's `visionzoo train ...`
    importance_plot: Path | None


def suggest_settings(trial, max_epochs: int) -> dict[str, Any]:
    """One trial's settings from `SEARCH_SPACE`, and its epochs (1 to `max_epochs`)."""
    settings: dict[str, Any] = {}
    for name, (kind, *spec) in SEARCH_SPACE.items():
        if kind == "choice":
            settings[name] = trial.suggest_categorical(name, list(spec[0]))
        else:
            settings[name] = trial.suggest_float(name, spec[0], spec[1], log=kind == "log")
    settings["epochs"] = trial.suggest_int("epochs", 1, max_epochs)
    return settings


def train_trial(model: str, data: Any, pretrained: bool | str, fixed: dict[str, Any]) -> TrialFunction:
    """The real trial: a training run in `folder`, reporting its validation top-1 after every epoch."""
    import visionzoo

    def run(settings: dict[str, Any], folder: Path, report: Report) -> float:
        def on_epoch(record: dict[str, Any]) -> None:
            if record.get("val_top1") is not None:
                report(record["epoch"], record["val_top1"])

        result = visionzoo.train(model, data, pretrained=pretrained, out=folder, overwrite=True, on_epoch=on_epoch,
                                 **{"progress": False, "plots": False, "tensorboard": False, **fixed, **settings})
        return float(result.best_metric or 0.0)

    return run


def tune(model: str, data: Any, *, pretrained: bool | str = True, trials: int = 20, budget_min: float | None = None,
         out: str | Path | None = None, seed: int = 0, max_epochs: int = 10, run_trial: TrialFunction | None = None,
         **settings: Any) -> TuneResult:
    """Search fine-tuning settings; returns the best trial.

    Args:
        model, data, pretrained: as for `visionzoo.train` (the weights every trial starts from).
        trials: how many trials to finish (completed or pruned), counting those of earlier runs of the
            same folder.
        budget_min: start no trial after this many minutes (of this call).
        out: the tuning folder (default runs/tune-MODEL-DATA); give the same one to continue.
        max_epochs: the most epochs a trial may draw.
        run_trial: `(settings, run folder, report) -> score` instead of a training run (for tests).
        **settings: `TrainSettings` fields every trial shares (batch_size, image_size, workers, ...).
    """
    optuna = require_extra("optuna", "tune", "visionzoo tune")
    if trials < 1 or max_epochs < 1:
        raise SettingError(f"tune needs at least one trial and one epoch, got trials={trials}, max_epochs={max_epochs}")
    clash = set(settings) & (set(SEARCH_SPACE) | {"epochs"})
    if clash:
        raise SettingError(f"{sorted(clash)} are searched by tune; leave them out of the fixed settings")
    data_name = Path(str(data).split("?")[0].replace("builtin:", "")).name.split(".")[0] or "data"
    folder = Path(out) if out is not None else Path("runs") / f"tune-{model}-{data_name}"
    folder.mkdir(parents=True, exist_ok=True)
    run_trial = run_trial or train_trial(model, data, pretrained, settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="tune", storage=f"sqlite:///{folder / 'study.db'}", load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    _retry_interrupted(study, optuna)
    deadline = time.monotonic() + budget_min * 60 if budget_min is not None else None

    def objective(trial) -> float:
        chosen = suggest_settings(trial, max_epochs)
        run_dir = folder / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if epoch < chosen["epochs"] and trial.should_prune():  # a trial at its last epoch completes
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at {value:.4f}")

        return run_trial(chosen, run_dir, report)

    while _finished(study, optuna) < trials and (deadline is None or time.monotonic() < deadline):
        study.optimize(objective, n_trials=1)
    return _report(study, optuna, folder, model, data, pretrained, settings)


def _finished(study, optuna) -> int:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(trial.state in done for trial in study.get_trials(deepcopy=False))


def _retry_interrupted(study, optuna) -> None:
    """Trials still RUNNING belong to a tuner that was killed (one tuner works in a folder): marked failed,
    their settings queued to run first."""
    for trial in study.get_trials(deepcopy=True, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _report(study, optuna, folder: Path, model: str, data: Any, pretrained: bool | str,
            fixed: dict[str, Any]) -> TuneResult:
    states = optuna.trial.TrialState
    completed = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    if not completed:
        raise SettingError(f"no trial in {folder} completed (all pruned or failed); run tune again with more trials")
    with open(folder / "trials.csv", "w", newline="") as handle:
        names = [*SEARCH_SPACE, "epochs"]
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", "value", "epochs_run", *names, "run_dir"])
        for trial in study.get_trials(deepcopy=False):
            writer.writerow([trial.number, trial.state.name, trial.value, len(trial.intermediate_values),
                             *(trial.params.get(name) for name in names), trial.user_attrs.get("run_dir")])
    best = study.best_trial
    command = _command(model, data, pretrained, {**fixed, **best.params})
    (folder / "best_command.txt").write_text(command + "\n")
    (folder / "best.json").write_text(json.dumps({"value": best.value, "settings": best.params,
                                                  "run_dir": best.user_attrs.get("run_dir"), "command": command},
                                                 indent=2, default=str))
    return TuneResult(folder, _finished(study, optuna),
                      len(study.get_trials(deepcopy=False, states=(states.PRUNED,))), float(best.value),
                      dict(best.params), Path(best.user_attrs.get("run_dir", "")), command,
                      _importance_plot(study, optuna, folder))


def _command(model: str, data: Any, pretrained: bool | str, settings: dict[str, Any]) -> str:
    """The `visionzoo train` command of these settings (booleans as --name / --no-name)."""
    words = ["visionzoo", "train", model, "--data", str(data)]
    if pretrained:
        words += ["--pretrained", "default" if pretrained is True else str(pretrained)]
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif value is not None:
            words += [flag, f"{value:.3g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def _importance_plot(study, optuna, folder: Path) -> Path | None:
    """importance.png: how much each setting matters to reach the best trials' scores (PED-ANOVA); None
    while too few trials completed to say."""
    try:
        # PED-ANOVA (Watanabe et al. 2023): which settings set the best trials apart; in milliseconds, where
        # Optuna's default fANOVA fits random forests (seconds, and scikit-learn)
        with warnings.catch_warnings():  # "quantiles select the same set of trials" with very few trials
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError):  # fewer than two completed trials, or nothing varied
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]
    figure, axis = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    axis.barh(names, [importances[name] for name in names], color="tab:blue")
    axis.set_xlabel("importance to the best trials' scores (PED-ANOVA)")
    axis.set_title(f"{len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))} completed trials")
    figure.tight_layout()
    figure.savefig(folder / "importance.png", dpi=100)
    plt.close(figure)
    return folder / "importance.png"
