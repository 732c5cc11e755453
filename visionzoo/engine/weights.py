"""``visionzoo weights list`` and ``visionzoo weights import NAME FILE``: the published checkpoints and the caches
``pretrained=True`` reads (see :mod:`visionzoo.models._pretrained`)."""
from __future__ import annotations

import argparse
import json

from visionzoo.models._pretrained import import_weights, list_weight_sources


def weights_table() -> list[dict]:
    rows = []
    for source in list_weight_sources():
        cached = source.cached_file()
        rows.append({
            "name": source.name,
            "source": source.source,
            "location": source.location,
            "license": source.license,
            "paper_top1": source.top1,
            "size_mb": round(cached.stat().st_size / 2**20, 1) if cached else None,
            "cached": str(cached) if cached else None,
        })
    return rows


def add_weights_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("weights", help="published checkpoints: list them, import a file fetched elsewhere")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every pretrained tag, its source, size when cached, and whether it is")
    listing.add_argument("--json", action="store_true", help="print JSON")
    importing = actions.add_parser(
        "import", help="check a downloaded checkpoint and cache it where pretrained=True finds it"
    )
    importing.add_argument("name", help="pretrained tag (vz_model.tag) or model (its default tag)")
    importing.add_argument("file", help="the file fetched from the tag's hub id or URL")
    return parser


def run_weights(args: argparse.Namespace) -> int:
    if args.action == "import":
        target = import_weights(args.name, args.file)
        print(f"checked {args.file} against {args.name} and cached it at {target}")
        return 0
    rows = weights_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["tag", "source", "size (MB)", "cached", "location"]
    table = [[row["name"], row["source"], "-" if row["size_mb"] is None else f"{row['size_mb']:.1f}",
              "yes" if row["cached"] else "no", row["location"]] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *table)]
    for line in [header, ["-" * width for width in widths], *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0
