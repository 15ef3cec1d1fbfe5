"""`visionzoo data pack`: a folder or CSV written once as WebDataset tar shards (`visionzoo.pack_shards`)."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parsers", "cmd_pack"]


def add_parsers(commands) -> None:
    p = commands.add_parser("data", help="convert data for streaming: data pack",
                            description="Tools for data larger than a folder.")
    tools = p.add_subparsers(dest="data_command", metavar="TOOL", required=True)
    p = tools.add_parser(
        "pack", help="write a folder or CSV as WebDataset tar shards with an index",
        description="Write the images of a folder, CSV or archive (the train and val splits training would make) as "
                    "WebDataset tar shards of about --shard-size each, shuffled, with OUT/index.json (classes and "
                    "counts). Train on them with --data OUT.")
    p.add_argument("data", metavar="DATA", help="class-per-folder tree, CSV of path,label[,split], or archive")
    p.add_argument("--out", required=True, metavar="DIR", help="the shards' folder")
    p.add_argument("--shard-size", default="1GB", metavar="SIZE", help="about this much per shard (default: 1GB)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out when DATA has no val split (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="the split's and the shuffle's seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace shards packed in OUT before")
    p.add_argument("--json", action="store_true", help="print the index")
    p.set_defaults(func=cmd_pack)


def cmd_pack(args: argparse.Namespace) -> int:
    from visionzoo.data.pack import pack_shards

    index = pack_shards(args.data, args.out, shard_size=args.shard_size, val_fraction=args.val_fraction,
                        seed=args.seed, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(index))
        return 0
    for name, entries in index["splits"].items():
        print(f"{name}: {sum(e['count'] for e in entries)} images in {len(entries)} shards")
    print(f"{len(index['classes'])} classes; train with: visionzoo train MODEL --data {args.out}")
    return 0
