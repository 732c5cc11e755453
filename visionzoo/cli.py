"""The ``visionzoo`` command: one subcommand per package (``visionzoo bench ...``)."""
from __future__ import annotations

import argparse

from visionzoo.bench.cli import add_bench_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionzoo", description="Efficient-attention vision backbones for timm.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_bench_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
