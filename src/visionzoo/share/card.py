"""The model card of a pushed run: README.md with the Hub's YAML metadata and a body that says what
the model is, how it was trained, how well it did and where it stops working.

The metadata (`huggingface_hub.ModelCardData`): `library_name: visionzoo`, `pipeline_tag:
image-classification`, `tags` (the family, the task), `license` (the base weights' licence unless one
is chosen; a licence that allows commercial use is refused over non-commercial base weights),
`base_model`, `datasets` when known and `model-index` (top-1, top-5, balanced accuracy when the run
has it, ECE; mAP for multi-label).
"""

from __future__ import annotations

from typing import Any

from visionzoo.errors import SettingError
from visionzoo.share.record import RunRecord, data_name, hub_dataset

__all__ = ["model_card", "card_license", "NON_COMMERCIAL", "COMMERCIAL_USE"]

# Licences that forbid commercial use, as the weight catalog names them.
NON_COMMERCIAL = frozenset({"cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc-by-nc-2.0",
                            "fair-noncommercial-research-license", "apple-amlr"})
# Licences that allow it (permissive and copyleft alike): refused over non-commercial weights.
COMMERCIAL_USE = frozenset({"apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "bsd", "cc-by-4.0", "cc-by-sa-4.0",
                            "cc0-1.0", "unlicense", "wtfpl", "bsl-1.0", "mpl-2.0", "afl-3.0", "artistic-2.0",
                            "gpl-3.0", "lgpl-3.0", "agpl-3.0", "openrail"})
# The Hub's own licence identifiers among those; any other licence is `other` with its name.
_HUB_LICENSES = COMMERCIAL_USE | {"cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc-by-nc-2.0", "unknown"}
# Pretraining data the Hub knows by id (the weight catalog's `pretraining`).
_HUB_DATASETS = {"ImageNet-1k": "ILSVRC/imagenet-1k"}
_KEY_SETTINGS = ("recipe", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs",
                 "warmup_steps", "label_smoothing", "augment", "mixup", "cutmix", "image_size", "adapt", "precision",
                 "ema", "freeze_stages", "freeze_bn", "layer_decay", "head_lr_scale", "seed")


def _base_entry(record: RunRecord):
    from visionzoo.weights import catalog

    base = record.base_weights
    return catalog().get(base) if base else None


def card_license(record: RunRecord, chosen: str | None = None) -> tuple[str, str | None]:
    """(the card's `license`, its `license_name` when that is `other`) for `record`: `chosen` when given,
    else the base weights' licence (`unknown` from scratch or for weights outside the catalog). Refuses a
    licence allowing commercial use over base weights whose licence forbids it."""
    entry = _base_entry(record)
    base = entry.license if entry is not None else None
    if chosen and base in NON_COMMERCIAL and chosen.lower() in COMMERCIAL_USE:
        raise SettingError(f"--license {chosen} allows commercial use, but the base weights {entry.name} are "
                           f"licensed {base} (non-commercial); keep their licence (drop --license) or train from "
                           "weights that allow it")
    license_id = (chosen or base or "unknown").lower()
    return (license_id, None) if license_id in _HUB_LICENSES else ("other", license_id)


def _card_data(record: RunRecord, repo: str, license_id: str, license_name: str | None,
               dataset: str | None):
    from huggingface_hub import EvalResult, ModelCardData

    from visionzoo.registry import get_card

    family = get_card(record.architecture).family
    entry = _base_entry(record)
    dataset = dataset or hub_dataset(record.config["data"])
    datasets = [d for d in (dataset, _HUB_DATASETS.get(entry.pretraining) if entry else None) if d]
    base = record.base_weights
    base_model = (base[len("hf-hub:"):].split("@")[0] if base and base.startswith("hf-hub:")
                  else entry.hub["repo"] if entry is not None and entry.hub else None)
    metrics = record.best_metrics()
    names = {"top1": ("accuracy", "top-1 accuracy"), "top5": ("top_5_accuracy", "top-5 accuracy"),
             "balanced_accuracy": ("balanced_accuracy", "balanced accuracy"), "ece": ("ece", "ECE (15 bins)"),
             "map": ("mean_average_precision", "mAP")}
    dataset_id = dataset or "imagefolder"
    results = [EvalResult(task_type="image-classification", dataset_type=dataset_id,
                          dataset_name=data_name(record.config["data"]), dataset_split="validation",
                          metric_type=names[key][0], metric_name=names[key][1], metric_value=round(float(value), 4))
               for key, value in metrics.items() if key in names]
    return ModelCardData(
        library_name="visionzoo", pipeline_tag="image-classification", license=license_id, license_name=license_name,
        tags=["visionzoo", "image-classification", family, record.task, record.architecture],
        base_model=base_model, datasets=datasets or None, model_name=repo.split("/")[-1],
        eval_results=results or None)


def model_card(record: RunRecord, repo: str, *, license: str | None = None, dataset: str | None = None,
               plots: list[str] = (), exports: dict[str, str] | None = None) -> str:
    """README.md of `repo` for the run `record`: YAML metadata, then the body. `plots`: the image files
    uploaded beside it; `exports`: format -> path in the repo of the exported files."""
    license_id, license_name = card_license(record, license)
    data = _card_data(record, repo, license_id, license_name, dataset)
    body = "\n".join([*_about(record, repo, license_id, license_name), *_results(record, plots),
                      *_training(record), *_limitations(record), *_usage(record, repo, exports or {})])
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _about(record: RunRecord, repo: str, license_id: str, license_name: str | None) -> list[str]:
    from visionzoo import __version__
    from visionzoo.registry import get_card

    classes = list(record.model_config.get("class_names") or record.config.get("classes") or [])
    entry = _base_entry(record)
    base = record.base_weights
    start = (f"fine-tuned from `{base}`" + (f" (pretrained on {entry.pretraining}, licence {entry.license})"
                                           if entry is not None else "")) if base else "trained from scratch"
    kind = "multi-label" if record.task == "multilabel" else "single-label"
    shown = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
    lines = [f"# {repo.split('/')[-1]}", "",
             f"A {kind} image classifier: `{record.architecture}` ({get_card(record.architecture).family} family), "
             f"{start} on `{data_name(record.config['data'])}`, with visionzoo "
             f"{record.config.get('visionzoo_version', __version__)}. It answers one of {len(classes)} classes: "
             f"{shown}.", ""]
    if license_name:
        lines += [f"Licence: `{license_name}`, the base weights' own; read its terms before use.", ""]
    elif license_id == "unknown":
        lines += ["Licence: not stated (push with `--license` to state one).", ""]
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _results(record: RunRecord, plots: list[str]) -> list[str]:
    metrics = record.best_metrics()
    labels = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "balanced_accuracy": "balanced accuracy",
              "map": "mAP", "ece": "ECE (15 bins, before calibration)", "ece_calibrated": "ECE after calibration",
              "loss": "loss"}
    lines = ["## Validation results", ""]
    if not metrics:
        return lines + ["The run had no validation data: no results to report.", ""]
    best = record.summary.get("best_epoch")
    lines += [f"Of best/ (epoch {best} of {record.summary.get('epochs', '?')}), on the run's validation split:", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {labels[key]} | {_fmt(metrics[key])} |" for key in labels if key in metrics]
    head = record.model_config.get("head") or {}
    if head.get("temperature"):
        lines += ["", f"The outputs are calibrated by temperature scaling (T = {head['temperature']:.3f}, fitted on "
                  "validation)" + (f"; images scoring below the {head['ood']['score']} threshold "
                                  f"{head['ood']['threshold']:.3f} are answered `unknown`" if head.get("ood") else "")
                  + "."]
    lines.append("")
    captions = {"confusion_matrix.png": "confusion matrix", "reliability.png": "reliability (calibration)",
                "curves.png": "loss and accuracy per epoch", "per_class_ap.png": "average precision per class"}
    lines += [f"![{captions.get(name, name)}]({name})" for name in plots]
    return lines + ([""] if plots else [])


def _training(record: RunRecord) -> list[str]:
    resolved, sources = record.config["resolved"], record.config.get("settings_source") or {}
    lines = ["## How it was trained", "",
             "The main settings, and the rule that chose each (`user`: given on the command line; every setting is "
             "in `training_config.json` beside this card):", "", "| setting | value | chosen by |", "|---|---|---|"]
    for key in _KEY_SETTINGS:
        if resolved.get(key) is not None and (key in sources or key in ("recipe", "epochs", "batch_size", "lr")):
            lines.append(f"| {key} | {_fmt(resolved[key])} | {sources.get(key, 'recipe')} |")
    summary = record.summary
    if summary.get("total_params"):
        lines += ["", f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters trained "
                  f"({summary.get('adapt', 'full')}); peak memory {summary.get('peak_memory_mb', 0):.0f} MB, "
                  f"{summary.get('step_time_s', 0):.3f} s per step, {record.train_seconds()} s in all."]
    return lines + [""]


def _limitations(record: RunRecord) -> list[str]:
    preprocessing = record.model_config.get("preprocessing") or {}
    size = preprocessing.get("input_size", [3, "?", "?"])
    classes = record.model_config.get("class_names") or record.config.get("classes") or []
    metrics = record.best_metrics()
    lines = ["## Limitations", "",
             f"- It knows only its {len(classes)} classes; any other image is given one of them"
             + (" unless its score falls below the unknown threshold." if (record.model_config.get("head") or {}).get("ood")
                else "."),
             f"- Images are resized to {size[1]}x{size[2]} pixels ({preprocessing.get('interpolation', 'bicubic')}, "
             f"crop fraction {preprocessing.get('crop_pct', 1.0)}, mean {preprocessing.get('mean')}, std "
             f"{preprocessing.get('std')}); `load_model` and the exported files apply this themselves.",
             f"- It saw only the images of `{data_name(record.config['data'])}`; expect lower accuracy on photos "
             "unlike them (other cameras, lighting, backgrounds)."]
    if metrics and len(record.history) and record.summary.get("epochs", 0) < 3:
        lines.append(f"- A short run ({record.summary.get('epochs')} epoch(s)): the results above are a smoke test, "
                     "not a measure of what the architecture can do.")
    return lines + [""]


def _usage(record: RunRecord, repo: str, exports: dict[str, str]) -> list[str]:
    lines = ["## Usage", "", "With visionzoo (`pip install visionzoo`):", "", "```python", "import visionzoo", "",
             f'model = visionzoo.load_model("hf-hub:{repo}")  # the weights, classes, preprocessing and calibration',
             "```", "", "```bash", f"visionzoo predict hf-hub:{repo} photo.jpg", "```", ""]
    onnx = exports.get("onnx")
    if onnx:
        lines += ["Without PyTorch, the exported ONNX file (`pip install 'visionzoo[edge]'`; its preprocessing and "
                  "classes travel in its metadata):", "", "```python", "from huggingface_hub import hf_hub_download",
                  "from visionzoo.deploy.runtimes import open_exported", "",
                  f'classifier = open_exported(hf_hub_download("{repo}", "{onnx}"))',
                  'print(classifier.predict_files(["photo.jpg"], topk=3))', "```", ""]
    else:
        lines += ["Without PyTorch: export it first, then run the file with onnxruntime alone:", "", "```bash",
                  f"visionzoo export hf-hub:{repo} --format onnx --out model.onnx",
                  "visionzoo predict model.onnx photo.jpg", "```", ""]
    others = {fmt: path for fmt, path in exports.items() if fmt != "onnx"}
    if others:
        lines += ["Also exported: " + ", ".join(f"{fmt} (`{path}`)" for fmt, path in others.items())
                  + "; each with the `verify.json` of its check against the PyTorch model.", ""]
    return lines
