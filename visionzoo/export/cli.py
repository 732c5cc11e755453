"""``visionzoo export``: argument parsing and the command, for the coordinator to wire into visionzoo/cli.py."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from visionzoo.export._files import ExportError, atomic_output, check_writable
from visionzoo.export.core import DEFAULT_TOLERANCE, export_model, get_format
from visionzoo.export.formats import FORMATS
from visionzoo.export.matrix import DEFAULT_RESULTS, TABLE_HEADER, markdown_table, merge_results, run_matrix, select_models, update_readme, write_json


def _formats(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    try:
        return [get_format(name).name for name in names]
    except ExportError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _img_size(value: str) -> int | tuple[int, int]:
    parts = value.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--img-size takes SIZE or HxW in pixels (e.g. 224 or 192x256), got {value!r}")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export to ONNX, Core ML or ExecuTorch and check parity in the runtime",
        description="Export a zoo model and compare the runtime's output with PyTorch's on random input and "
        "on three real photographs; error = max|out - ref| / max|ref|. Core ML prediction needs macOS: "
        "on Linux the conversion and the saved spec are checked, nothing is run.",
    )
    parser.add_argument("name", nargs="?",
                        help="zoo model name (see `visionzoo list`); may be left out with a training --checkpoint")
    parser.add_argument("--format", type=_formats, help=f"one of {', '.join(FORMATS)} (with --matrix: a comma list, default all)")
    parser.add_argument("--deploy", action="store_true", help="fold BatchNorms first (visionzoo.layers.fuse.fuse_model)")
    parser.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch dimension")
    parser.add_argument("--dynamic-size", action="store_true", help="export dynamic height and width")
    parser.add_argument("--img-size", type=_img_size,
                        help="SIZE or HxW (default: the training checkpoint's input size, else the model's "
                        "pretrained one)")
    parser.add_argument("--checkpoint",
                        help="weights to load (any layout the family's checkpoint_filter_fn reads); a "
                        "`visionzoo train` checkpoint also gives the model name, class count and input size")
    parser.add_argument("--num-classes", type=int,
                        help="classifier outputs (default: the training checkpoint's, else the model's 1000)")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    parser.add_argument("--out", help="output file (default exports/NAME.EXT); with --matrix the results JSON")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="largest max relative error that passes")
    parser.add_argument("--latency-repeats", type=int, default=10, help="batch-1 runs timed for the median (0: none)")
    parser.add_argument("--json", action="store_true", help="print the result record as JSON")
    parser.add_argument("--matrix", metavar="PATTERN", help="export every model matching PATTERN in every format")
    parser.add_argument("--smallest", action="store_true", help="with --matrix: only each family's smallest variant")
    parser.add_argument("--merge", action="store_true", help="with --matrix: keep the results file's other models' rows")
    parser.add_argument("--markdown", help="with --matrix: also write the Markdown table here")
    parser.add_argument(
        "--update-readme", nargs="?", const="README.md", metavar="README",
        help="rewrite the table between <!-- export:start --> and <!-- export:end --> from the results JSON (--out)",
    )
    parser.set_defaults(func=run_export)
    return parser


def _print_result(record: dict) -> None:
    print(f"{record['model']} -> {record['format']}: {record['status']}")
    for key in ("file", "checkpoint", "num_classes", "exporter", "file_bytes", "runtime"):
        if record.get(key) is not None:
            print(f"  {key}: {record[key]}")
    for label, value in record.get("max_rel_error", {}).items():
        print(f"  max|out - ref| / max|ref| on {label}: {value:.2e}")
    if "latency_ms_b1_median" in record:
        print(f"  latency (batch 1, median): {record['latency_ms_b1_median']:.1f} ms")
    for key in ("note", "stage", "error", "failing_op", "kept"):
        if record.get(key):
            print(f"  {key}: {record[key]}")


def run_export(args: argparse.Namespace) -> int:
    """Run ``visionzoo export``; bad requests raise ExportError (a ValueError), failed exports return 1."""
    if args.update_readme:
        update_readme(args.out or DEFAULT_RESULTS, args.update_readme)
        print(f"updated the export table in {args.update_readme} from {args.out or DEFAULT_RESULTS}")
        return 0
    if args.matrix:
        names = select_models(args.matrix, args.smallest)
        out = Path(args.out or DEFAULT_RESULTS)
        if out.suffix != ".json":
            raise ExportError(f"--out {out}: the matrix writes JSON, give a .json path")
        check_writable(out)
        if args.markdown:
            check_writable(Path(args.markdown))
        print("\n".join(TABLE_HEADER))
        matrix = run_matrix(names, args.format or list(FORMATS), args.img_size, args.deploy, args.latency_repeats)
        if args.merge and out.is_file():
            matrix = merge_results(json.loads(out.read_text()), matrix)
        write_json(matrix, out)
        if args.markdown:
            with atomic_output(args.markdown) as temp:
                temp.write_text(markdown_table(matrix) + "\n")
        print(f"wrote {out}")
        return 0 if all(r["status"] in ("ok", "converted") for r in matrix["results"]) else 1
    if not args.name and not args.checkpoint:
        raise ExportError("name a model to export (e.g. `visionzoo export vz_shvit_s1 --format onnx`), or use --matrix")
    if not args.format or len(args.format) != 1:
        raise ExportError(f"give exactly one --format ({', '.join(FORMATS)}) for a single export")
    record = export_model(
        args.name, args.format[0], args.out, img_size=args.img_size, dynamic_batch=args.dynamic_batch,
        dynamic_size=args.dynamic_size, deploy=args.deploy, checkpoint=args.checkpoint,
        tolerance=args.tolerance, latency_repeats=args.latency_repeats, num_classes=args.num_classes, ema=args.ema,
    )
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        _print_result(record)
    return 0 if record["status"] in ("ok", "converted") else 1
