"""The ``visionzoo`` command. Each subcommand parses its arguments here and calls a package below."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from visionzoo.models._cards import CardError
from visionzoo.models._checkpoint import CheckpointError
from visionzoo.models._factory import UnknownModelError, check_model_name, list_models


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no zoo model matches {args.pattern!r}; `visionzoo list` shows them all", file=sys.stderr)
        return 1
    if not args.details:
        print("\n".join(names))
        return 0
    from visionzoo.bench.summary import measure

    header = ["model", "input", "params (M)", "paper (M)", "GMACs", "paper GMACs", "diff", "top-1"]
    rows = []
    for name in names:
        facts = measure(name)
        diff = facts["gmacs_vs_paper"]
        rows.append([
            name,
            "x".join(str(v) for v in facts["input_size"][1:]),
            _fmt(facts["params"] / 1e6, ".2f"),
            _fmt(facts["paper_params_m"], ".1f"),
            _fmt(facts["gmacs"], ".3f"),
            _fmt(facts["paper_gmacs"], ".3f"),
            "-" if diff is None else f"{diff * 100:+.1f}%",
            _fmt(facts["top1"], ".1f"),
        ])
    print(_table(rows, header))
    print("\nGMACs: multiply-accumulates of matmul, conv and attention counted by torch.utils.flop_counter "
          "(elementwise ops, norms, softmax and pooling are not counted); paper figures from models/*.yaml.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from visionzoo.bench.summary import describe

    check_model_name(args.name)
    facts = describe(args.name)
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    card = facts["card"] or {}
    print(f"{args.name}  ({card.get('family', 'no model card')})")
    if card:
        paper = card["paper"]
        print(f"  paper: {paper['title']} ({paper['venue']}, arXiv {paper['arxiv']})")
        print(f"  code:  {card['official_repo']}  licence: {card['license']}")
    print(f"  input size: {facts['input_size']}")
    params_line = f"  params: {facts['params']:,}"
    if facts["card_params"] is not None:
        params_line += f"  (card: {facts['card_params']:,}, paper: {facts['paper_params_m']}M)"
    print(params_line)
    if "params_fused" in facts:
        print(f"  params in deploy form (BN folded): {facts['params_fused']:,}  (card: {card['params_fused']:,})")
    gmacs_line = f"  GMACs: {facts['gmacs']:.3f} (torch.utils.flop_counter)"
    if facts["paper_gmacs"]:
        gmacs_line += f"  paper: {facts['paper_gmacs']:.3f} {card['flops_unit']}  diff {facts['gmacs_vs_paper'] * 100:+.1f}%"
    print(gmacs_line)
    if facts["top1"] is not None:
        print(f"  paper ImageNet-1k top-1: {facts['top1']}")
    print(f"  num_features: {facts['num_features']}")
    print("  feature_info:")
    for info in facts["feature_info"]:
        print(f"    {info['module']:<24} channels {info['num_chs']:<5} reduction {info['reduction']}")
    print("  pretrained_cfg:")
    for key, value in facts["pretrained_cfg"].items():
        if value not in (None, "", [], ()):
            print(f"    {key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionzoo", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)

    list_parser = subparsers.add_parser("list", help="list registered zoo models")
    list_parser.add_argument("pattern", nargs="?", default="vz_*", help="shell-style pattern (default: vz_*)")
    list_parser.add_argument("--details", action="store_true", help="params, GMACs and the papers' figures")
    list_parser.set_defaults(func=cmd_list)

    info_parser = subparsers.add_parser("info", help="everything about one model")
    info_parser.add_argument("name")
    info_parser.add_argument("--json", action="store_true", help="print JSON")
    info_parser.set_defaults(func=cmd_info)

    from visionzoo.data.digits import add_data_parser, run_data
    from visionzoo.engine.evaluate import add_eval_parser, run_eval
    from visionzoo.engine.train import add_train_parser, run_train

    add_train_parser(subparsers).set_defaults(func=run_train)
    add_eval_parser(subparsers).set_defaults(func=run_eval)
    add_data_parser(subparsers).set_defaults(func=run_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import visionzoo  # noqa: F401  (registers the zoo before any name is looked up)

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UnknownModelError, CheckpointError, CardError, ValueError) as error:
        print(f"visionzoo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
