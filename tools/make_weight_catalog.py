"""Regenerate src/visionzoo/weights/catalog.json from timm's pretrained configs.

The catalog is committed data: visionzoo never imports timm at run time. This script reads
the facts (Hub location, license, input size, crop, interpolation, mean, std, classes) from
timm's pretrained configs for every architecture in `catalog_arches.txt`, the published
ImageNet accuracies from timm's results table (the subset kept in
`timm_results_imagenet_subset.csv`), and adds torchvision's AlexNet and GoogLeNet weights
from `torchvision.models.*_Weights.IMAGENET1K_V1.meta`.

    .venv/bin/python tools/make_weight_catalog.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import timm
import torchvision

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "visionzoo" / "weights" / "catalog.json"
TIMM_RESULTS = ("timm results table: huggingface/pytorch-image-models results/results-imagenet.csv "
                "(commit 0173a139a2c66db3a41ebfe1d8ac4fb02483642e)")

# Tag tokens -> the data the weights were (pre)trained on, most specific first.
_DATA_TOKENS = [
    ("ns_jft", "JFT-300M (Noisy Student, unlabelled) + ImageNet-1k"),
    ("mim_m38m", "Merged-38M (EVA-CLIP-teacher MIM)"),
    ("mim_in22k", "ImageNet-22k (EVA-CLIP-teacher MIM)"),
    ("m38m", "Merged-38M"),
    ("laion2b", "LAION-2B"),
    ("laion400m", "LAION-400M"),
    ("laiona", "LAION-Aesthetic"),
    ("datacompxl", "DataComp-XL"),
    ("dfndr2b", "DFN-DR-2B"),
    ("dfn2b", "DFN-2B"),
    ("metaclip_2pt5b", "MetaCLIP-2.5B"),
    ("metaclip_400m", "MetaCLIP-400M"),
    ("openai", "OpenAI WIT-400M"),
    ("lvd142m", "LVD-142M (DINOv2 self-supervised)"),
    ("lvd1689m", "LVD-1689M (DINOv3 self-supervised)"),
    ("sat493m", "SAT-493M satellite imagery (DINOv3 self-supervised)"),
    ("v2_webli", "WebLI (SigLIP 2 image-text)"),
    ("webli_i18n", "WebLI multilingual (SigLIP image-text)"),
    ("webli", "WebLI (SigLIP image-text)"),
    ("ig1b", "Instagram-1B (weakly/semi-supervised) + ImageNet-1k"),
    ("yfcc100m", "YFCC-100M (semi-supervised) + ImageNet-1k"),
    ("in22k", "ImageNet-22k"),
    ("in21k", "ImageNet-21k"),
    ("in12k", "ImageNet-12k (timm's subset of ImageNet-22k)"),
    ("bamboo", "Bamboo"),
    ("dino", "ImageNet-1k (DINO self-supervised)"),
    ("mae", "ImageNet-1k (MAE self-supervised)"),
]
_LABEL_SETS = {1000: "imagenet-1k", 11821: "imagenet-12k", 21841: "imagenet-21k", 21843: "imagenet-21k"}


def _pretraining(tag: str) -> str:
    for token, data in _DATA_TOKENS:
        if token in tag:
            return data
    return "ImageNet-1k"


def _as_list(value) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _first_conv(value) -> str | None:
    """The catalog names one first convolution; timm lists several for a reparameterizable stem
    (FastViT, MobileOne: the kxk and the 1x1 scale branch), of which the first is the main one."""
    if not value or isinstance(value, str):
        return value or None
    return value[0]


def _results() -> dict[str, dict]:
    with open(HERE / "timm_results_imagenet_subset.csv") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return {row["model"]: row for row in rows}


def _timm_entry(name: str, results: dict[str, dict], default: bool) -> dict:
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    arch, tag = name.split(".", 1)
    num_classes = int(cfg.get("num_classes") or 0)
    entry = {
        "architecture": arch,
        "tag": tag,
        "default": default,
        "hub": {"repo": cfg["hf_hub_id"], "files": ["model.safetensors", "pytorch_model.bin"]},
        "license": cfg.get("license") or "unknown",
        "pretraining": _pretraining(tag),
        "num_classes": num_classes,
        "label_set": _LABEL_SETS.get(num_classes),
        "input_size": list(cfg["input_size"]),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "crop_mode": cfg.get("crop_mode", "center"),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "first_conv": _first_conv(cfg.get("first_conv")),
        "classifier": _as_list(cfg.get("classifier")),
    }
    if cfg.get("test_input_size"):
        entry["test_input_size"] = list(cfg["test_input_size"])
    row = results.get(name)
    if row is not None:
        entry["imagenet"] = {"top1": float(row["top1"]), "top5": float(row["top5"]),
                             "eval_size": int(row["img_size"]), "source": TIMM_RESULTS}
    if cfg.get("notes"):
        entry["notes"] = list(cfg["notes"])
    return entry


# The layer names timm's configs would give, for the two torchvision-only architectures.
_TORCHVISION_LAYERS = {"alexnet": ("features.0", ["classifier.6"]),
                       "googlenet": ("conv1.conv", ["fc", "aux1.fc2", "aux2.fc2"])}


def _torchvision_entry(arch: str, weights) -> dict:
    meta = weights.meta
    metrics = meta["_metrics"]["ImageNet-1K"]
    transform = weights.transforms()
    return {
        "architecture": arch,
        "tag": "tv_in1k",
        "default": True,
        "url": weights.url,
        "license": "bsd-3-clause",  # torchvision's license; the weights' meta names none
        "pretraining": "ImageNet-1k",
        "num_classes": len(meta["categories"]),
        "label_set": "imagenet-1k",
        "input_size": [3, transform.crop_size[0], transform.crop_size[0]],
        "crop_pct": transform.crop_size[0] / transform.resize_size[0],
        "crop_mode": "center",
        "interpolation": transform.interpolation.value,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "first_conv": _TORCHVISION_LAYERS[arch][0],
        "classifier": _TORCHVISION_LAYERS[arch][1],
        "imagenet": {"top1": metrics["acc@1"], "top5": metrics["acc@5"], "eval_size": transform.crop_size[0],
                     "source": f"torchvision docs: torchvision.models.{type(weights).__name__}.IMAGENET1K_V1 "
                               f"(torchvision {torchvision.__version__.split('+')[0]})"},
        "notes": [meta["_docs"].strip()],
    }


def main() -> None:
    arches = (HERE / "catalog_arches.txt").read_text().split()
    results = _results()
    weights: dict[str, dict] = {}
    for arch in arches:
        if arch == "alexnet":
            weights["alexnet.tv_in1k"] = _torchvision_entry(arch, torchvision.models.AlexNet_Weights.IMAGENET1K_V1)
            continue
        if arch == "googlenet":
            weights["googlenet.tv_in1k"] = _torchvision_entry(arch, torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1)
            continue
        names = [n for n in timm.list_pretrained(f"{arch}.*") if timm.models.get_pretrained_cfg(n).hf_hub_id]
        if not names:
            continue  # no published weights for this variant
        default = timm.models.get_pretrained_cfg(arch)  # timm's default tag for the architecture
        default_name = f"{arch}.{default.tag}" if default is not None and f"{arch}.{default.tag}" in names else names[0]
        for name in names:
            weights[name] = _timm_entry(name, results, name == default_name)
    catalog = {
        "about": "visionzoo's pretrained weight catalog: one entry per weight, named arch.tag. "
                 "Generated by tools/make_weight_catalog.py from timm's pretrained configs and results table "
                 "and torchvision's weight metadata; edit the generator, not this file.",
        "weights": weights,
    }
    OUT.write_text(json.dumps(catalog, indent=1) + "\n")
    categories = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    (OUT.parent / "imagenet_classes.txt").write_text("\n".join(categories) + "\n")
    print(f"wrote {len(weights)} weights for {len({w['architecture'] for w in weights.values()})} architectures "
          f"to {OUT}")


if __name__ == "__main__":
    main()
