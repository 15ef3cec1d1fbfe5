"""The run folder: what a run writes there, and the rules for writing into one that is not empty.

`train --out DIR` refuses a folder that already holds files (`check_out_folder`) unless told to
`overwrite`, so that a finished run is never replaced by accident; `--resume` continues in its own
folder. Before a run writes, `tidy_run_folder` removes the temporary files a killed or full-disk
write left there, and, for a run that starts afresh in an old folder (`--overwrite`, or a resume
of a run stopped before its first checkpoint), the previous run's outputs: only the files a run
writes (`RUN_FILES`, the model folders, the checkpoint's and TensorBoard's files); anything else
in the folder stays.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from visionzoo.errors import SettingError
from visionzoo.files import remove_stale_temporaries

__all__ = ["RUN_FILES", "MODEL_FOLDERS", "check_out_folder", "tidy_run_folder"]

# Files a run writes at the top of its folder (plots and calibration included).
RUN_FILES = ("config.json", "summary.json", "metrics_steps.jsonl", "metrics_epochs.csv", "bad_files.txt",
             "calibration.json", "curves.png", "confusion_matrix.png", "worst_mistakes.png", "per_class_ap.png",
             "reliability.png")
MODEL_FOLDERS = ("best", "last")  # written by `visionzoo.save_model`
_CHECKPOINT_FILES = re.compile(r"latest\.json|(?:model|state)-\d+\.(?:safetensors|json|pt)")
_TENSORBOARD_FILES = re.compile(r"events\.out\.tfevents\..*")


def check_out_folder(out: str | Path, overwrite: bool) -> None:
    """Refuse `out` when it holds anything, unless `overwrite`."""
    folder = Path(out)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise SettingError(f"{folder} is not empty (it may hold another run); choose a new --out, resume it with "
                           f"--resume {folder}, or replace its run with --overwrite")
    if folder.exists() and not folder.is_dir():
        raise SettingError(f"--out {folder} is a file; the run folder must be a directory")


def tidy_run_folder(folder: Path, *, fresh: bool) -> None:
    """Remove stale temporary files under `folder` (`files.remove_stale_temporaries`, and the
    `.partial` files of a model folder's interrupted write); with `fresh`, the previous run's outputs."""
    remove_stale_temporaries(folder)
    for name in MODEL_FOLDERS:
        for partial in (folder / name).glob("*.partial"):
            partial.unlink(missing_ok=True)
    if not fresh:
        return
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in MODEL_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
    for sub, pattern in (("checkpoint", _CHECKPOINT_FILES), ("tensorboard", _TENSORBOARD_FILES)):
        if (folder / sub).is_dir():
            for path in (folder / sub).iterdir():
                if pattern.fullmatch(path.name):
                    path.unlink(missing_ok=True)
