"""`visionzoo embed`, `probe` and `zero-shot`: what foundation features do without training."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from visionzoo.cli.common import (
    add_device_argument,
    add_model_argument,
    add_pretrained_argument,
    add_progress_argument,
    console,
    err_console,
    shown,
    shown_markup,
    warn,
)
from visionzoo.errors import UsageError
from visionzoo.heads import printable
from visionzoo.measure import counted

__all__ = ["add_parsers", "cmd_embed", "cmd_probe", "cmd_zero_shot"]


def cmd_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.data.shards import looks_like_shards
    from visionzoo.embed.embeddings import build_backbone, embed_folder
    from visionzoo.resolve import parse_pretrained

    # the one --pretrained rule: a folder carries its own weights, a registered name gets its default ones
    pretrained = parse_pretrained(args.pretrained)
    spec = {"spec": args.model, "overrides": {},
            "pretrained": (not Path(args.model).exists()) if pretrained is None else pretrained}
    model = build_backbone(spec, allow_random=True)
    if not spec["pretrained"] and not Path(args.model).exists():
        warn(f"'{args.model}' has random weights (--pretrained none); its embeddings only test the mechanics")
    if looks_like_shards(str(args.data)):  # tar shards: each torchrun process embeds its own (embed.sharded)
        from visionzoo.embed.sharded import embed_shards

        result = embed_shards(model, str(args.data), args.out, batch_size=args.batch_size,
                              patch_tokens=args.patch_tokens, device=args.device, model_spec=spec)
    else:
        result = embed_folder(model, args.data, args.out, batch_size=args.batch_size, patch_tokens=args.patch_tokens,
                              workers=args.workers, device=args.device, model_spec=spec,
                              progress=args.progress and not args.json)
    skipped = getattr(result, "skipped", [])
    dim = int(result.embeddings.shape[-1]) if len(result) else 0
    summary = {"out": str(args.out), "images": len(result), "dim": dim, "classes": len(result.classes),
               "skipped": [{"path": p, "reason": r} for p, r in skipped]}
    # a train/ val/ tree: one file per split, --out holding train/ (embed.embeddings.split_files)
    splits = {name: {"out": str(Path(args.out).with_name(result.splits[name])), "images": len(part)}
              for name, part in getattr(result, "parts", {}).items() if name in result.splits}
    if splits:
        summary["split"], summary["splits"] = result.split, splits
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    where = f"{args.out} ({result.split})" if splits else str(args.out)
    others = "".join(f"; {counted(part['images'], 'embedding')} to {part['out']} ({name})"
                     for name, part in splits.items() if name != result.split)
    console.print(f"wrote {counted(summary['images'], 'embedding')} of dimension {summary['dim']} "
                  f"({counted(summary['classes'], 'class', 'classes')}) to {where}{others}", highlight=False)
    for path, reason in skipped:
        err_console.print(f"skipped {path}: {reason}", highlight=False)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from visionzoo.embed.embeddings import load_embeddings
    from visionzoo.embed.probe import run_probe, save_probe_model

    train = load_embeddings(args.features)
    val = load_embeddings(args.val) if args.val else None
    if args.scores:
        return _print_scores(train, val, args)
    if args.save_model and args.method != "linear":
        raise UsageError("--save-model needs --method linear (a k-NN probe is not a layer)")
    result = run_probe(train, val, args.method, seed=args.seed)
    saved = str(save_probe_model(result, train, args.save_model)) if args.save_model else None
    if args.json:
        print(json.dumps({**result.as_dict(), "saved_model": saved}, indent=2))
        return 0
    chosen = ", ".join(f"{k}={v:g}" for k, v in result.chosen.items())
    console.print(f"{result.method} probe: top-1 {100 * result.top1:.2f}% on {result.num_eval} images "
                  f"({result.evaluated_on}); {chosen} chosen on held-out training embeddings")
    if len(result.classes) <= 20:
        table = Table(title="confusion matrix (rows: true class, columns: predicted)")
        table.add_column("")
        for name in result.classes:
            table.add_column(shown(name[:12]), justify="right")
        for name, row in zip(result.classes, result.confusion.tolist()):
            table.add_row(shown(name), *(str(v) for v in row))
        console.print(table)
    else:
        pairs = [(int(result.confusion[i, j]), result.classes[i], result.classes[j])
                 for i in range(len(result.classes)) for j in range(len(result.classes)) if i != j]
        console.print("most confused (true -> predicted): " + ", ".join(
            f"{shown_markup(t)} -> {shown_markup(p)} ({n})" for n, t, p in sorted(pairs, reverse=True)[:10] if n))
    if saved:
        console.print(f"saved the probe as a model: {saved}")
    return 0


def _print_scores(train, val, args: argparse.Namespace) -> int:
    """`probe --scores`: LogME, k-NN leave-one-out and the linear probe of one embedding file."""
    from visionzoo.embed.scores import transferability

    if args.save_model:
        raise UsageError("--scores prints scores only; drop --save-model (or --scores)")
    scores = transferability(train, val, seed=args.seed)
    if args.json:
        print(json.dumps({name: score.as_dict() for name, score in scores.items()}, indent=2))
        return 0
    linear = scores["linear"]
    console.print(f"{args.features}: {len(train)} embeddings, {counted(len(train.classes), 'class', 'classes')}",
                  highlight=False)
    console.print(f"LogME {scores['logme'].value:.4f} (log evidence per image, mean over classes; higher is better)",
                  highlight=False)
    console.print(f"k-NN leave-one-out top-1 {100 * scores['knn_loo'].value:.2f}% (k={scores['knn_loo'].extra['k']})",
                  highlight=False)
    console.print(f"linear probe top-1 {100 * linear.value:.2f}% on {linear.extra['num_eval']} images "
                  f"({linear.extra['evaluated_on']})", highlight=False)
    return 0


def cmd_zero_shot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from visionzoo.factory import create_clip, zero_shot_classifier
    from visionzoo.prediction import classify_images
    from visionzoo.resolve import parse_pretrained

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(labels) < 2:
        raise UsageError(f"--labels needs at least two comma-separated class names, got {args.labels!r}")
    missing = [image for image in args.images if not Path(image).is_file()]
    if missing:
        raise UsageError(f"no such image file: {missing[0]}")
    pretrained = parse_pretrained(args.pretrained)
    if pretrained is False:
        warn("--pretrained none: random weights, the answers are meaningless")
    tokenizer = _siglip_tokenizer(args, pretrained)
    clip = create_clip(args.model, pretrained=pretrained)
    classifier = zero_shot_classifier(clip, labels, templates=args.template or None, tokenizer=tokenizer)
    results = classify_images(classifier, args.images, top_k=min(args.top_k, len(labels)))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    table = Table(title=f"zero-shot with {args.model}", caption=(
        "sigmoid scores: independent probabilities; they need not sum to 1" if classifier.sigmoid else None))
    table.add_column("image")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for row in results:
        best = row["top"][0]
        others = ", ".join(f"{printable(t['label'])} {100 * t['probability']:.1f}%" for t in row["top"][1:])
        probability = f"{100 * best['probability']:.1f}%" + (f" ({others})" if others else "")
        table.add_row(shown(row["image"]), shown(best["label"]), shown(probability))
    console.print(table)
    return 0


def _siglip_tokenizer(args: argparse.Namespace, pretrained):
    """A SigLIP model's tokenizer: --tokenizer, else the one in the --pretrained Hub repo or beside the
    --pretrained file; None for CLIP (its tokenizer comes with open_clip)."""
    from pathlib import Path

    from visionzoo.siglip_text import SIGLIP_MODELS, load_siglip_tokenizer

    if args.model not in SIGLIP_MODELS:
        if args.tokenizer:
            raise UsageError(f"--tokenizer is for SigLIP models ({', '.join(SIGLIP_MODELS)}); "
                             f"{args.model} uses CLIP's own tokenizer")
        return None
    source = args.tokenizer
    entry = _catalog_entry(args.model, pretrained)
    if source is None and entry is not None and entry.hub:
        source = f"hf-hub:{entry.hub['repo']}"  # the catalogued pair's Hub repo ships its tokenizer
    elif source is None and isinstance(pretrained, str) and pretrained.startswith("hf-hub:"):
        source = pretrained.split("@")[0]  # the Hub repo of the weights ships the tokenizer too
    elif source is None and isinstance(pretrained, str) and Path(pretrained).is_file():
        source = Path(pretrained).with_name("tokenizer.json")
    if source is None or (not str(source).startswith("hf-hub:") and not Path(source).exists()):
        raise UsageError(f"{args.model} needs its tokenizer: pass --tokenizer path/to/tokenizer.json (it ships with "
                         "the weights) or --tokenizer hf-hub:timm/ViT-B-16-SigLIP2"
                         + (f"; found none at {source}" if source else ""))
    return load_siglip_tokenizer(source, SIGLIP_MODELS[args.model][1].context_length)


def _catalog_entry(model: str, pretrained):
    """The catalog entry `--pretrained` names for a pair (`default`, or `MODEL.TAG`), else None."""
    from visionzoo.weights import catalog, default_weight

    if pretrained is True:
        return default_weight(model)
    return catalog().get(pretrained) if isinstance(pretrained, str) else None


def add_parsers(commands) -> None:
    p = commands.add_parser("embed", help="cache a model's embeddings of a folder of images",
                            description="Embed every image of a class-per-folder tree (pooled features, optionally "
                                        "patch tokens) into a safetensors file with paths and labels, one file per "
                                        "split of a train/ val/ tree. Resumable: a rerun skips images already done.")
    add_model_argument(p, "registered model name or saved model folder", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="class-per-folder images: DIR/CLASS/IMAGE, or DIR/train/CLASS/IMAGE with val/ (each split "
                        "embedded into its own file, under train/'s classes; folders beside the splits such as logs/ "
                        "are no classes), read as train reads them; or tar shards (a packed folder or "
                        "train-{000000..000099}.tar), split across torchrun processes")
    p.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file; a train/ val/ tree writes "
                   "one file per split, FILE holding train/ and FILE's name with .val (.test, ...) before the suffix "
                   "the others (photos.val.safetensors), which probe scores on; tar shards: a folder of one file per "
                   "process and index.json")
    add_pretrained_argument(p)
    p.add_argument("--patch-tokens", action="store_true", help="also store the patch tokens (N, L, D)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="image decoding processes (default: 0)")
    add_device_argument(p)
    add_progress_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_embed)

    p = commands.add_parser("probe", help="k-NN or linear probe on cached embeddings",
                            description="Fit a k-NN (cosine) or linear (logistic regression) probe on embeddings from "
                                        "`visionzoo embed`; k or the L2 strength is chosen on held-out training "
                                        "embeddings. Reports top-1 and a confusion matrix.")
    p.add_argument("--features", required=True, metavar="FILE", help="training embeddings (.safetensors)")
    p.add_argument("--val", metavar="FILE", help="validation embeddings (default: the val split embedded with --features "
                   "when embed read a train/ val/ tree, else 20%% of --features held out)")
    p.add_argument("--method", choices=["knn", "linear"], default="knn")
    p.add_argument("--save-model", metavar="DIR", help="save the linear probe as a model folder (backbone + head)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out splits")
    p.add_argument("--scores", action="store_true",
                   help="print transferability scores instead: LogME, k-NN leave-one-out top-1 and the linear probe")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_probe)

    p = commands.add_parser("zero-shot", help="classify images by label names with CLIP or SigLIP 2",
                            description="Zero-shot classification: CLIP compares each image with prompts made from "
                                        "the labels (averaged over the 80 ImageNet templates unless --template). "
                                        "SigLIP 2 scores each label on its own (a sigmoid): independent "
                                        "probabilities that need not sum to 1.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", required=True, help="comma-separated class names, e.g. 'cat,dog,car'")
    p.add_argument("--model", default="ViT-B-32", help="CLIP model: ViT-B-32, ViT-B-16, ViT-L-14 (or -quickgelu); "
                   "or SigLIP 2: ViT-B-16-SigLIP2, ViT-B-16-SigLIP2-256 (sigmoid: independent probabilities per label)")
    p.add_argument("--tokenizer", metavar="PATH", help="SigLIP only: its tokenizer.json (or folder, or "
                   "hf-hub:REPO); default: the --pretrained Hub repo's, or tokenizer.json beside the --pretrained file")
    add_pretrained_argument(p, default="default", rule="default: the default weights; none is for testing only")
    p.add_argument("--template", action="append", metavar="T", help="prompt template with {} for the label; repeatable")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="labels to show per image (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_zero_shot)
