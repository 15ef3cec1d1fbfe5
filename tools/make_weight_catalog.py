"""Regenerate src/visionzoo/weights/catalog.json from timm's pretrained configs.

The catalog is committed data: visionzoo never imports timm at run time. This script reads
the facts (Hub location, license, input size, crop, interpolation, mean, std, classes) from
timm's pretrained configs for every architecture in `catalog_arches.txt`, the published
ImageNet accuracies from timm's results table (the subset kept in
`timm_results_imagenet_subset.csv`) or, for weights newer than that table, from the sourced rows
of `PUBLISHED` below, and adds torchvision's AlexNet and GoogLeNet weights from
`torchvision.models.*_Weights.IMAGENET1K_V1.meta`, and the open_clip image-text pairs visionzoo builds
(`OPEN_CLIP_PAIRS`, from open_clip's pretrained configs). A weight with no label set (features or an
image-text embedding) is noted as a feature backbone; a classifier whose source publishes no
accuracy says so in its notes (`UNPUBLISHED`).

    .venv/bin/python tools/make_weight_catalog.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import open_clip
import timm
import torchvision

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "visionzoo" / "weights" / "catalog.json"
TIMM_RESULTS = ("timm results table: huggingface/pytorch-image-models results/results-imagenet.csv "
                "(commit 0173a139a2c66db3a41ebfe1d8ac4fb02483642e)")

# Published ImageNet-1k accuracies of weights newer than the results table above, each row as
# published (never estimated): weight -> (top1, top5 or None where the source gives none, eval_size, source).
# Where the source gives several evaluation sizes, the row at timm's test_input_size (else input_size) is kept,
# as the results table does.
_TIMM_README = ("timm README, What's New, {date} (https://github.com/huggingface/pytorch-image-models#whats-new); "
                "the same row in the Model Comparison table of https://huggingface.co/timm/{name}")
_REPVIT = ("RepViT authors' README, Classification on ImageNet-1K, Top-1 (300 / 450 epochs), 224 px: "
           "https://github.com/THU-MIG/RepViT/blob/298f42075eda5d2e6102559fad260c970769d34e/README.md")
_FASTVIT = ("FastViT authors' README, FastViT Model Zoo, {table}, 256 px: "
            "https://github.com/apple/ml-fastvit/blob/8af5928238cab99c45f64fc3e4e7b1516b8224ba/README.md")
_MOBILEONE = ("MobileOne authors' README, model table (Top-1 Acc., unfused checkpoints), 224 px: "
              "https://github.com/apple/ml-mobileone/blob/main/README.md; Table 9 of https://arxiv.org/abs/2206.04040")
_EFFICIENTVIT_M = ("EfficientViT (Microsoft) authors' README, Evaluation (Acc@1, Acc@5 of the released checkpoint): "
                   "https://github.com/microsoft/Cream/blob/74fb8c5ebfc3a3dbfb397df27d74b2e4322d68a0/"
                   "EfficientViT/classification/README.md")
_EFFICIENTVIT_B = ("EfficientViT (MIT) authors' README, EfficientViT B series table: "
                   "https://github.com/mit-han-lab/efficientvit/blob/7c004eb4ab02bba69dba920671f008d096995c74/"
                   "applications/efficientvit_cls/README.md")
PUBLISHED: dict[str, tuple[float, float | None, int, str]] = {
    **{name: (top1, top5, size, _TIMM_README.format(date=date, name=name)) for name, top1, top5, size, date in [
        ("mobilenetv4_conv_small.e1200_r224_in1k", 74.292, 92.116, 256, "June 12 2024"),
        ("mobilenetv4_conv_small.e2400_r224_in1k", 74.616, 92.072, 256, "June 12 2024"),
        ("mobilenetv4_conv_medium.e500_r224_in1k", 79.808, 95.186, 256, "June 12 2024"),
        ("mobilenetv4_conv_medium.e500_r256_in1k", 80.858, 95.768, 320, "June 12 2024"),
        ("mobilenetv4_conv_large.e500_r256_in1k", 82.674, 96.31, 320, "June 12 2024"),
        ("mobilenetv4_conv_large.e600_r384_in1k", 83.392, 96.622, 448, "June 12 2024"),
        ("mobilenetv4_hybrid_medium.e500_r224_in1k", 81.276, 95.742, 256, "June 12 2024"),
        ("mobilenetv4_hybrid_large.e600_r384_in1k", 84.266, 96.936, 448, "June 12 2024"),
        ("mobilenetv4_hybrid_medium.ix_e550_r256_in1k", 82.492, 96.278, 320, "June 24 2024"),
        ("mobilenetv4_hybrid_medium.ix_e550_r384_in1k", 83.394, 96.760, 448, "June 24 2024"),
        ("mobilenetv4_hybrid_large.ix_e600_r384_in1k", 84.356, 96.892, 448, "June 24 2024"),
        ("mobilenetv4_hybrid_medium.e200_r256_in12k_ft_in1k", 82.99, 96.67, 320, "July 26 2024"),
        ("efficientnet_b0.ra4_e3600_r224_in1k", 79.364, 94.754, 256, "July 26 2024"),
        ("efficientnet_b1.ra4_e3600_r240_in1k", 81.440, 95.700, 288, "Aug 21 2024"),
        ("mobilenetv3_large_100.ra4_e3600_r224_in1k", 77.16, None, 256, "Sept 2024"),
    ]},
    **{f"repvit_{size}.dist_{epochs}e_in1k": (top1, None, 224, _REPVIT) for size, epochs, top1 in [
        ("m0_9", 300, 78.7), ("m0_9", 450, 79.1), ("m1_0", 300, 80.0), ("m1_0", 450, 80.3),
        ("m1_1", 300, 80.7), ("m1_1", 450, 81.2), ("m1_5", 300, 82.3), ("m1_5", 450, 82.5),
        ("m2_3", 300, 83.3), ("m2_3", 450, 83.7)]},
    **{f"fastvit_{size}.apple_{tag}in1k": (top1, None, 256, _FASTVIT.format(table=table))
       for tag, table, rows in [("", "models trained on ImageNet-1K", [("t8", 76.2), ("t12", 79.3), ("s12", 79.9),
                                                                       ("sa12", 80.9)]),
                                ("dist_", "models trained on ImageNet-1K with knowledge distillation",
                                 [("t8", 77.2), ("t12", 80.3), ("s12", 81.1), ("sa12", 81.9)])]
       for size, top1 in rows},
    **{f"mobileone_{size}.apple_in1k": (top1, None, 224, _MOBILEONE)
       for size, top1 in [("s0", 71.4), ("s1", 75.9), ("s2", 77.4), ("s3", 78.1), ("s4", 79.4)]},
    **{f"efficientvit_{size}.r224_in1k": (top1, top5, 224, _EFFICIENTVIT_M) for size, top1, top5 in [
        ("m0", 63.296, 85.150), ("m1", 68.356, 88.672), ("m2", 70.786, 90.150), ("m3", 73.390, 91.350),
        ("m4", 74.266, 91.788), ("m5", 77.124, 93.360)]},
    **{f"efficientvit_{size}.r{res}_in1k": (top1, top5, res, _EFFICIENTVIT_B) for size, res, top1, top5 in [
        ("b1", 224, 79.390, 94.346), ("b1", 256, 79.918, 94.704), ("b1", 288, 80.410, 94.984),
        ("b2", 224, 82.100, 95.782), ("b2", 256, 82.698, 96.096), ("b2", 288, 83.086, 96.302),
        ("b3", 224, 83.468, 96.356), ("b3", 256, 83.806, 96.514), ("b3", 288, 84.150, 96.732)]},
}

# Classifier weights whose source publishes no ImageNet accuracy, with why: said in the entry, never guessed.
UNPUBLISHED = {
    "efficientvit_b0.r224_in1k": "no published ImageNet top-1: the EfficientViT (MIT) authors' model tables list "
                                 "B1 to B3 and L1 to L3, not B0",
}
FEATURE_BACKBONE = ("a feature backbone: no ImageNet classifier, so no ImageNet top-1 of its own "
                    "(a linear probe or fine-tune gives one on your data)")

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
    ("eupe_lvd1689m", "LVD-1689M (EUPE distillation, https://arxiv.org/abs/2603.22387)"),
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
    elif name in PUBLISHED:
        top1, top5, eval_size, source = PUBLISHED[name]
        entry["imagenet"] = {"top1": top1, "top5": top5, "eval_size": eval_size, "source": source}
    notes = list(cfg.get("notes") or ())
    if entry["label_set"] is None:  # no label set: features or an image-text embedding, not classes
        notes.append(FEATURE_BACKBONE)
    elif name in UNPUBLISHED:
        notes.append(UNPUBLISHED[name])
    if notes:
        entry["notes"] = notes
    return entry


# open_clip's image-text pairs visionzoo builds (`create_clip`), each with the timm weight of its image tower: the
# pair's entry names the open_clip file in the Hub repo that ships it with its tokenizer, and takes the licence from
# the tower's timm config (the same release). Named `pair.tag` by open_clip's own model and tag names.
OPEN_CLIP_PAIRS = {("ViT-B-16-SigLIP2", "webli"): "vit_base_patch16_siglip_224.v2_webli",
                   ("ViT-B-16-SigLIP2-256", "webli"): "vit_base_patch16_siglip_256.v2_webli"}
IMAGE_TEXT_PAIR = ("an image-text pair (image and text towers, logit scale and bias) for `visionzoo zero-shot "
                   "--model {model}`; its tokenizer.json ships in the same Hub repo. The image tower alone is "
                   "{tower}")


def _open_clip_entry(model: str, tag: str, tower: str) -> dict:
    cfg = open_clip.get_pretrained_cfg(model, tag)
    size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    tower_cfg = timm.models.get_pretrained_cfg(tower).to_dict()
    squash = cfg.get("resize_mode") == "squash"  # the whole image resized to the input, as open_clip preprocesses
    return {
        "architecture": model,
        "tag": tag,
        "default": True,
        "hub": {"repo": cfg["hf_hub"].rstrip("/"),
                "files": ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]},
        "license": tower_cfg.get("license") or "unknown",
        "pretraining": _pretraining(tower.split(".", 1)[1]),
        "num_classes": 0,
        "label_set": None,
        "input_size": [3, size, size],
        "crop_pct": 1.0,
        "crop_mode": "squash" if squash else "center",
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "first_conv": "visual." + tower_cfg["first_conv"],
        "classifier": [],
        "notes": [IMAGE_TEXT_PAIR.format(model=model, tower=tower), FEATURE_BACKBONE],
    }


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
    for (model, tag), tower in OPEN_CLIP_PAIRS.items():
        weights[f"{model}.{tag}"] = _open_clip_entry(model, tag, tower)
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
