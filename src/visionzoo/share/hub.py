"""`push`: a run's best model to the Hugging Face Hub, with its model card, plots and exported files.

The repository, which `--to-folder` writes locally instead (the same files):

    README.md                 the model card (visionzoo.share.card)
    config.json               best/'s: architecture, classes, preprocessing, head (calibration, thresholds)
    model.safetensors         best/'s weights (or the LoRA adapter and what rebuilds its base)
    training_config.json      the run's settings, and the rule that chose each (settings_source)
    training_summary.json     history, best epoch, cost
    calibration.json, metrics_epochs.csv, confusion_matrix.png, reliability.png, curves.png, ...
    exports/onnx/model.onnx   with --export onnx, and its verify.json (the check against PyTorch)

`load_model("hf-hub:OWNER/NAME")` rebuilds the model from the repository (or from that folder).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from visionzoo.errors import SettingError, UsageError
from visionzoo.share.card import model_card
from visionzoo.share.record import RunRecord

__all__ = ["push", "PushResult", "PUSHED_RUN_FILES"]

# Run files uploaded beside the model, renamed where a name would clash with the model's own.
PUSHED_RUN_FILES = {"config.json": "training_config.json", "summary.json": "training_summary.json",
                    "calibration.json": "calibration.json", "metrics_epochs.csv": "metrics_epochs.csv"}
PLOTS = ("confusion_matrix.png", "reliability.png", "curves.png", "per_class_ap.png")


@dataclass
class PushResult:
    repo: str
    folder: Path | None  # the local folder written (--to-folder), None after an upload
    url: str | None  # the repository's address after an upload
    files: list[str] = field(default_factory=list)  # every file, relative to the repository's root


def push(run_dir: str | Path, repo: str, *, private: bool = False, token: str | None = None,
         to_folder: str | Path | None = None, export: list[str] | tuple[str, ...] = (), license: str | None = None,
         dataset: str | None = None, commit_message: str | None = None) -> PushResult:
    """Upload the run `run_dir`'s best model to the Hub repository `repo` (`owner/name`, created when new),
    with a model card, the plots and, per format in `export`, an exported file and its verify.json.

    `to_folder`: write the repository's files there instead of uploading (for review, or offline use:
    `load_model(to_folder)` reads it). `license`: the card's licence (default: the base weights');
    `dataset`: the Hub id of the training data, for the card's metadata. `token`: a Hub token (default:
    the one `hf auth login` stored, or HF_TOKEN)."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise SettingError(f"--repo must be OWNER/NAME, got {repo!r}")
    record = RunRecord.read(run_dir)
    if not (record.run_dir / "best" / "config.json").is_file():
        raise SettingError(f"{record.run_dir} has no best/ model (the run did not finish an epoch); nothing to push")
    from visionzoo.deploy.export import FORMATS

    unknown = [fmt for fmt in export if fmt not in FORMATS]
    if unknown:
        raise SettingError(f"unknown --export format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    plots = [name for name in PLOTS if (record.run_dir / name).is_file()]
    exports = {fmt: _export_path(fmt) for fmt in export}
    card = model_card(record, repo, license=license, dataset=dataset, plots=plots, exports=exports)  # refuses first
    if to_folder is not None:
        folder = Path(to_folder)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise SettingError(f"--to-folder {folder} is not an empty folder; choose a new one")
        _write_repository(record, folder, card, plots, exports)
        return PushResult(repo, folder, None, _listing(folder))
    with tempfile.TemporaryDirectory(prefix="visionzoo-push-") as staging:
        _write_repository(record, Path(staging), card, plots, exports)
        url = _upload(Path(staging), repo, private=private, token=token,
                      message=commit_message or f"visionzoo push {record.run_dir.name}")
        return PushResult(repo, None, url, _listing(Path(staging)))


def _export_path(fmt: str) -> str:
    from visionzoo.deploy.export import SUFFIXES

    return f"exports/{fmt}/model{SUFFIXES[fmt]}"


def _write_repository(record: RunRecord, folder: Path, card: str, plots: list[str], exports: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((record.run_dir / "best").iterdir()):
        if path.is_file() and not path.name.endswith(".partial"):
            shutil.copy2(path, folder / path.name)
    for name, target in PUSHED_RUN_FILES.items():
        if (record.run_dir / name).is_file():
            shutil.copy2(record.run_dir / name, folder / target)
    for name in plots:
        shutil.copy2(record.run_dir / name, folder / name)
    if exports:
        import visionzoo
        from visionzoo.deploy.export import export_model

        model = visionzoo.load_model(record.run_dir / "best")
        for fmt, relative in exports.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            report = export_model(model, target, format=fmt)
            if report.verified is False:
                raise SettingError(f"the {fmt} export of {record.run_dir / 'best'} does not match the PyTorch model "
                                   f"(max relative difference {report.max_relative_difference}); not pushed")
            report_dict = report.as_dict()
            report_dict["path"] = Path(relative).name
            (target.parent / "verify.json").write_text(json.dumps(report_dict, indent=2) + "\n")
    (folder / "README.md").write_text(card)


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def _upload(folder: Path, repo: str, *, private: bool, token: str | None, message: str) -> str:
    """Create `repo` when new and upload `folder` as one commit, through `huggingface_hub.HfApi`."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise UsageError("the Hub is offline (HF_HUB_OFFLINE=1); write the repository locally with --to-folder DIR")
    host = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((host.hostname, host.port or (443 if host.scheme == "https" else 80)), 5).close()
    except OSError as error:
        raise UsageError(f"cannot reach the Hub at {constants.ENDPOINT} ({error}); check the network, or write "
                         "the repository locally with --to-folder DIR") from None
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise UsageError(f"the Hub refused the push to {repo} ({status}): log in with `hf auth login`, or pass "
                             "--token with write access to that owner") from None
        raise
    return str(url)
