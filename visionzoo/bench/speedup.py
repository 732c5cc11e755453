"""Measured speed of an op that replaces dense work, and of its model against the dense model, rendered from runs.

A speed claim such as Sparsifiner's ("attention over the kept keys is faster than dense attention") has two
parts: the op against the dense computation it replaces (``bench --ops``, whose rows carry ``vs_dense``) and
the whole model against the dense model (``bench MODEL --vs DENSE``, timed alternately). This module merges
those runs into one results file and writes a Markdown table (between ``<!-- speedup:start -->`` and
``<!-- speedup:end -->``) and a card block (between ``# speedup:start`` and ``# speedup:end``) from it, so
that the figures in the docs and on the card are the measured ones::

    python -m visionzoo.bench.speedup merge RESULTS.json OPS.json... BENCH.json...
    python -m visionzoo.bench.speedup render RESULTS.json --markdown docs/x.md --card visionzoo/cards/x.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from visionzoo._markers import MarkerError, replace_marked_block

MARKDOWN_MARKERS = ("<!-- speedup:start -->", "<!-- speedup:end -->")
CARD_MARKERS = ("# speedup:start", "# speedup:end")


def merge(ops_docs: list[dict], model_docs: list[dict], command: str) -> dict:
    """One results file from ``bench --ops`` outputs (ops.json) and ``bench --vs`` outputs (bench.json)."""
    for doc in ops_docs:
        if "rows" not in doc:
            raise ValueError("an ops run must be the ops.json that `visionzoo bench --ops` writes (it has 'rows')")
    for doc in model_docs:
        if not doc.get("results") or not doc["results"][0].get("vs"):
            raise ValueError("a model run must be the bench.json of `visionzoo bench MODEL --vs OTHER`")
    return {"command": command, "ops_runs": ops_docs, "model_runs": model_docs}


def _mode(settings: dict) -> str:
    return "compiled" if settings.get("compile") else "eager"


def speedups(results: dict) -> list[dict]:
    """Per (input size, mode): each op backend's speed over the dense computation, and the model's over the dense
    model (with the p10–p90 range of the alternating pairs; several runs of one comparison, each in its own process,
    are summarised by :func:`_across_processes`)."""
    entries: dict[tuple[int, str], dict] = {}

    def entry(size: int, mode: str) -> dict:
        return entries.setdefault((size, mode), {"img_size": size, "mode": mode, "ops": {}, "model": None})

    for doc in results["ops_runs"]:
        for row in doc["rows"]:
            for mode in ("eager", "compiled"):
                ratio = row.get(mode, {}).get("vs_dense")
                if ratio is not None and row["backend"] != "dense (replaced)":
                    ops = entry(doc["settings"]["img_size"], mode)["ops"]
                    ops.setdefault(row["op"], {"call": row["call"], "backends": {}})["backends"][row["backend"]] = ratio
    for doc in results["model_runs"]:
        record = doc["results"][0]
        vs = record["vs"]
        row = entry(doc["settings"]["img_size"], _mode(doc["settings"]))
        if row["model"] is None:
            row["model"] = {"model": record["model"], "against": vs["against"], "batch": doc["settings"]["batch_size"],
                            "processes": []}
        row["model"]["processes"].append({"ratio": vs["speed_ratio"], "p10": vs["speed_ratio_p10"],
                                          "p90": vs["speed_ratio_p90"], "pairs": vs["pairs"]})
    for row in entries.values():
        if row["model"] is not None:
            row["model"].update(_across_processes(row["model"]["processes"]))
    return [entries[key] for key in sorted(entries)]


def _across_processes(processes: list[dict]) -> dict:
    """One comparison run in several processes: the median of their ratios, the widest p10–p90 of their pairs and
    the pairs in all. The ratio moves by a few percent from one process to the next, more than the pairs within one
    process show."""
    return {"ratio": statistics.median(process["ratio"] for process in processes),
            "p10": min(process["p10"] for process in processes),
            "p90": max(process["p90"] for process in processes), "pairs": sum(p["pairs"] for p in processes)}


def _op_cell(ops: dict) -> str:
    cells = []
    for name, op in ops.items():
        ranked = sorted(op["backends"].items(), key=lambda item: -item[1])
        cells.append(f"{name}: " + ", ".join(f"{backend} {ratio:.2f}×" for backend, ratio in ranked))
    return "<br>".join(cells) or "—"


def _model_cell(model: dict | None) -> str:
    if model is None:
        return "—"
    processes = model["processes"]
    if len(processes) == 1:
        return (f"{model['ratio']:.2f}× {model['against']} ({model['p10']:.2f}–{model['p90']:.2f}, "
                f"{model['pairs']} pairs, batch {model['batch']})")
    each = " / ".join(f"{process['ratio']:.2f}" for process in processes)
    return (f"{model['ratio']:.2f}× {model['against']} (median of {len(processes)} processes: {each}; pairs "
            f"{model['p10']:.2f}–{model['p90']:.2f}, {model['pairs']} in all, batch {model['batch']})")


def format_markdown(results: dict, results_path: str) -> str:
    rows = speedups(results)
    machine = (results["ops_runs"] or results["model_runs"])[0]["machine"]
    lines = ["| input | mode | op over dense (each backend; > 1: faster) | model over the dense model |", "|---|---|---|---|"]
    lines += [f"| {row['img_size']} | {row['mode']} | {_op_cell(row['ops'])} | {_model_cell(row['model'])} |"
              for row in rows]
    lines += [
        "",
        f"<sub>{machine['device_name']} ({machine['device']}), {machine['torch_threads']} torch thread(s), torch "
        f"{machine['torch']}. Op: the dense computation's median ms over the backend's (`bench --ops`, the calls the "
        "model makes). Model: our img/s over the dense model's, timed alternately, p10–p90 of the pair ratios "
        "(`bench --vs`); run in several processes, the median of their ratios and the widest p10–p90. "
        f"Command: <code>{results['command']}</code>.</sub><br>",
        f"<sub>Generated from <code>{results_path}</code> by <code>python -m visionzoo.bench.speedup render</code>; "
        "do not edit by hand.</sub>",
    ]
    return "\n".join(lines)


def format_card(results: dict, results_path: str) -> str:
    lines = [f"# Rendered from {results_path} by `python -m visionzoo.bench.speedup render`; do not edit by hand.",
             "measured_speedup:"]
    for row in speedups(results):
        lines.append(f"  \"{row['img_size']} {row['mode']}\":")
        for name, op in row["ops"].items():
            ratios = ", ".join(f"{backend}: {ratio:.2f}" for backend, ratio in op["backends"].items())
            lines.append(f"    {name}_vs_dense: {{{ratios}}}")
        if row["model"] is not None:
            model = row["model"]
            each = ", ".join(f"{process['ratio']:.2f}" for process in model["processes"])
            lines.append(f"    model_vs_{model['against']}: {{ratio: {model['ratio']:.2f}, p10: {model['p10']:.2f}, "
                         f"p90: {model['p90']:.2f}, pairs: {model['pairs']}, processes: [{each}]}}")
    return "\n".join(lines)


def _render_into(path: Path, block: str, markers: tuple[str, str]) -> None:
    try:
        path.write_text(replace_marked_block(path.read_text(), block, str(path), *markers))
    except MarkerError as error:
        raise SystemExit(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionzoo.bench.speedup", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merging = commands.add_parser("merge", help="merge ops.json and bench.json runs into one results file")
    merging.add_argument("results", type=Path)
    merging.add_argument("runs", type=Path, nargs="+")
    merging.add_argument("--command-line", default="", help="the command that made the runs, for the tables")
    rendering = commands.add_parser("render", help="write the measured ratios into Markdown files and a card")
    rendering.add_argument("results", type=Path)
    rendering.add_argument("--markdown", type=Path, action="append", default=[])
    rendering.add_argument("--card", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    if args.command == "merge":
        docs = [json.loads(run.read_text()) for run in args.runs]
        results = merge([doc for doc in docs if "rows" in doc], [doc for doc in docs if "rows" not in doc],
                        args.command_line)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        return 0
    results = json.loads(args.results.read_text())
    for path in args.markdown:
        source = Path(os.path.relpath(args.results, path.parent)).as_posix()
        _render_into(path, format_markdown(results, source), MARKDOWN_MARKERS)
    for path in args.card:
        _render_into(path, format_card(results, Path(os.path.relpath(args.results)).as_posix()), CARD_MARKERS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
