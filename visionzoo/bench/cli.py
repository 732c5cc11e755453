"""``visionzoo bench``: measure zoo models (optionally side by side with timm) and write the tables and plot.

Wire into the ``visionzoo`` command with ``add_bench_parser(subparsers)``; the parser's ``func`` is
:func:`run_bench`, which returns the process exit code.
"""
from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from visionzoo.bench.machine import machine_info, pin_threads
from visionzoo.bench.ops import bench_ops, format_ops_table, ops_markdown
from visionzoo.bench.report import (
    ResultsFormatError, check_output_dir, format_console, render_readme, write_outputs,
)
from visionzoo.bench.runner import DEFAULT_BATCH_SIZE, BenchArgumentError, BenchSettings
from visionzoo.bench.runtimes import available_runtimes
from visionzoo.bench.suite import run_suite
from visionzoo.bench.timing import Schedule
from visionzoo.bench.vs import check_baseline_name, check_vs_schedule
from visionzoo.export.trained import create_trained_model
from visionzoo.models._cards import CARDS_DIR, load_cards
from visionzoo.models._factory import UnknownModelError, check_model_name, create_model, list_models

DEFAULT_OUTPUT_DIR = Path("output/bench")
DEFAULT_README_PLOT = Path("docs/images/bench_top1_vs_throughput.png")
# The README's main job: the smallest variant of every family, on the CPU, in a few minutes on 2 cores.
DEFAULT_SET_SETTINGS = {"batch_size": 4, "warmup": 1, "time_budget": 1.0}
DEFAULT_SCHEDULE = Schedule()


def default_model_set(cards: dict | None = None, registered: set[str] | None = None) -> list[str]:
    """The smallest registered variant (by the card's parameter count) of each family that has a card."""
    if cards is None:
        if not CARDS_DIR.is_dir():
            raise BenchArgumentError(f"--default-set reads the model cards in {CARDS_DIR}, which is missing; "
                                     "reinstall visionzoo, whose wheel ships them")
        cards = load_cards()
    registered = set(list_models()) if registered is None else registered
    chosen = []
    for _family, card in sorted(cards.items()):
        variants = [(v["params"], name) for name, v in card["variants"].items() if name in registered]
        if variants:
            chosen.append(min(variants)[1])
    if not chosen:
        raise BenchArgumentError("--default-set found no registered zoo model with a model card")
    return chosen


def resolve_models(requested: list[str]) -> list[str]:
    """Model names and shell patterns (``'vz_shvit_*'``) -> registered zoo names, in order, without repeats."""
    names: list[str] = []
    for item in requested:
        if any(char in item for char in "*?["):
            matches = list_models(item)
            if not matches:
                raise BenchArgumentError(f"the pattern {item!r} matches no zoo model; `visionzoo bench 'vz_*' --list` "
                                         "shows them all")
            names += matches
        else:
            names.append(check_model_name(item))
    return list(dict.fromkeys(names))


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="measure params, MACs, throughput, latency, memory, train speed and efficiency",
        description="Measure zoo models, optionally side by side with timm, and write tables and a plot. "
        "Figures are medians of repeated, warmed-up, synchronised timings; efficiency is achieved GFLOP/s "
        "over a large matmul's GFLOP/s measured in the same run.")
    parser.add_argument("models", nargs="*", help="zoo model names or shell patterns, e.g. vz_shvit_s1 'vz_*'")
    parser.add_argument("--default-set", action="store_true",
                        help="the smallest variant of each family, with quick settings (batch 4, 1 warm-up call, "
                             "1 s per measurement; the README's main job)")
    parser.add_argument("--list", action="store_true", help="print the models that would be measured and stop")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, help="throughput batch size (default: 32 on cpu, 256 on cuda)")
    parser.add_argument("--img-size", type=int,
                        help="square input size (default: the --checkpoint's training size, else each model's own)")
    parser.add_argument("--checkpoint", type=Path,
                        help="measure one model as trained: weights, and from a `visionzoo train` checkpoint its "
                             "class count, input size and model arguments (the model name may then be left out)")
    parser.add_argument("--num-classes", type=int,
                        help="classifier outputs of the measured models (default: the --checkpoint's, else 1000)")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (autocast; fp16 only on cuda)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for weights and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--deploy", action="store_true",
                        help="fold BatchNorms (visionzoo.layers.fuse_model); on the CPU without --compile, also run "
                        "stages in batch chunks where measured faster")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per physical core)")
    parser.add_argument("--warmup", type=int, help=f"untimed calls before timing (default: {DEFAULT_SCHEDULE.warmup})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, help=f"timed calls per measurement (default: {DEFAULT_SCHEDULE.iters})")
    budget.add_argument("--time-budget", type=float, help="seconds of timed calls per measurement instead of --iters")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    parser.add_argument("--vs", metavar="timm|NAME",
                        help="time each model alternately against timm's implementation of the same architecture "
                             "(weights copied, outputs checked) or against the registered model NAME")
    parser.add_argument("--runtime", default="torch",
                        help=f"inference runtime: {', '.join(available_runtimes())} (default: torch). onnxruntime and "
                             "executorch export the model at each timed shape, check it against PyTorch, then time "
                             "the program on the CPU in fp32; they measure inference only (as if --no-train)")
    parser.add_argument("--ops-backend", metavar="NAME",
                        help="run every op on this backend where it has it (e.g. reference, sdpa; default: auto, the "
                             "fastest that applies, or VZ_OPS_BACKEND); bench.json records what each op ran")
    parser.add_argument("--ops", action="store_true",
                        help="instead of whole models, time every (op, backend) pair on the op calls the named models "
                             "make (eager, and compiled with --compile): ms, GFLOP/s and speedup over the reference, "
                             "written to ops.json and ops.md")
    parser.add_argument("--matmul-size", type=int, help="size of the square matmul that measures the peak")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                        help=f"where bench.json/.csv/.md/.png go (default: {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--render-readme", type=Path, metavar="RESULTS.json",
                        help="regenerate README.md's results table and the plot from a results file, then stop")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="README to edit with --render-readme")
    parser.add_argument("--plot", type=Path, default=DEFAULT_README_PLOT, help="plot written by --render-readme")
    parser.set_defaults(func=run_bench)
    return parser


def _settings(args: argparse.Namespace, trained_size: int | None = None) -> BenchSettings:
    preset = DEFAULT_SET_SETTINGS if args.default_set else {}
    device_type = args.device.split(":")[0]
    time_budget = args.time_budget if args.iters is None else None
    if time_budget is None and args.iters is None:
        time_budget = preset.get("time_budget")
    schedule = Schedule(
        warmup=args.warmup if args.warmup is not None else preset.get("warmup", DEFAULT_SCHEDULE.warmup),
        iters=args.iters if args.iters is not None else DEFAULT_SCHEDULE.iters,
        time_budget=time_budget,
    )
    batch_size = args.batch_size if args.batch_size is not None else preset.get(
        "batch_size", DEFAULT_BATCH_SIZE.get(device_type, 32))
    img_size = args.img_size if args.img_size is not None else trained_size
    return BenchSettings(device=args.device, batch_size=batch_size, img_size=img_size, dtype=args.dtype,
                         channels_last=args.channels_last, compile=args.compile, deploy=args.deploy,
                         runtime=args.runtime, schedule=schedule,
                         train=not args.no_train and args.runtime == "torch", ops_backend=args.ops_backend)


def _trained_model(args: argparse.Namespace) -> tuple[list[str], Callable[[str], nn.Module], int | None, int]:
    """With --checkpoint: the one model it holds, built from it, its training input size and class count."""
    if args.default_set or len(args.models) > 1 or any(char in "".join(args.models) for char in "*?["):
        raise BenchArgumentError("--checkpoint holds one model: name that model, or none to take the checkpoint's")
    model, setup = create_trained_model(args.models[0] if args.models else None, args.checkpoint, args.num_classes)
    return [setup.model_name], lambda name: model, setup.input_size, model.num_classes


def _invocation(argv: list[str] | None) -> str:
    return shlex.join(["visionzoo", *(argv if argv is not None else sys.argv[1:])])


def _run_ops(names: list[str], settings: BenchSettings, build: Callable[[str], nn.Module],
             args: argparse.Namespace, command: str) -> int:
    pin_threads(args.threads)
    progress = None if args.no_progress else (lambda label: print(f"timing {label}", file=sys.stderr))
    rows = bench_ops(names, settings, build, **({"on_pair": progress} if progress else {}))
    table = format_ops_table(rows)
    print(table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    doc = {"command": command, "machine": machine_info(torch.device(settings.device)),
           "settings": settings.as_dict(), "rows": rows}
    (args.output_dir / "ops.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.output_dir / "ops.md").write_text(ops_markdown(doc))
    print(f"\nwrote {args.output_dir / 'ops.json'}, {args.output_dir / 'ops.md'}")
    return 1 if all("error" in row["eager"] for row in rows if row["backend"] == "reference") and rows else 0


def run_bench(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run the benchmark described by parsed ``args``; errors in the arguments exit with status 2 and a message."""
    try:
        if args.render_readme is not None:
            skipped = render_readme(args.render_readme, args.readme, args.plot)
            print(f"rewrote the results block of {args.readme}" + (f"; {skipped}" if skipped else
                                                                   f" and the plot {args.plot}"))
            return 0
        if args.default_set and args.models:
            raise BenchArgumentError("give model names or --default-set, not both")
        if not args.default_set and not args.models and args.checkpoint is None:
            raise BenchArgumentError("name the models to measure (e.g. vz_shvit_s1 or 'vz_*'), or use --default-set")
        if args.num_classes is not None and args.num_classes < 1:
            raise BenchArgumentError(f"--num-classes must be at least 1, got {args.num_classes}")
        build, build_other = create_model, timm.create_model
        trained_size, classes = None, args.num_classes
        if args.checkpoint is not None:
            names, build, trained_size, classes = _trained_model(args)
        else:
            names = default_model_set() if args.default_set else resolve_models(args.models)
            if classes is not None:
                build = functools.partial(create_model, num_classes=classes)
        if args.list:
            print("\n".join(names))
            return 0
        settings = _settings(args, trained_size)
        settings.validate()
        vs = check_baseline_name(args.vs) if args.vs else None
        if vs is not None:
            check_vs_schedule(settings.schedule)
        if classes is not None:
            # A --vs baseline gets the same head as the measured model (timm pairs are built to match it anyway).
            build_other = functools.partial(timm.create_model, num_classes=classes)
        if args.threads is not None and args.threads < 1:
            raise BenchArgumentError(f"--threads must be at least 1, got {args.threads}")
        check_output_dir(args.output_dir)
    except (BenchArgumentError, UnknownModelError, ResultsFormatError, ValueError) as error:
        print(f"visionzoo bench: error: {error}", file=sys.stderr)
        return 2
    if args.ops:
        return _run_ops(names, settings, build, args, _invocation(argv))
    doc = run_suite(names, settings, vs=vs, threads=args.threads, build=build, build_other=build_other,
                    matmul_size=args.matmul_size, progress=not args.no_progress, command=_invocation(argv))
    print(format_console(doc))
    try:
        paths = write_outputs(doc, args.output_dir)
    except (OSError, BenchArgumentError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        print(f"visionzoo bench: error: the results above could not be written to {args.output_dir}: {reason}",
              file=sys.stderr)
        return 1
    print("\nwrote " + ", ".join(str(path) for path in paths.values()))
    if "plot" not in paths:
        print("plot skipped: matplotlib is not installed (pip install 'visionzoo[bench]')")
    return 1 if any(record.get("error") for record in doc["results"]) else 0
