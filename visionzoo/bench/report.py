"""Writing a results document out: console table, JSON, CSV, Markdown, the top-1 vs throughput plot, and the
README's results table (regenerated from a committed JSON file between two marker lines, never typed by hand).

The JSON document (schema ``visionzoo.bench/1``) has ``machine`` (CPU model, cores, threads, torch, device),
``settings`` (device, dtype, batch size, ...), ``peak`` (the matmul GFLOP/s that efficiencies divide by),
``notes`` (what MACs and memory figures count) and ``results``: one record per model, either measured (fields in
``MEASURED_FIELDS``) or failed (``error`` says why).
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from visionzoo._markers import MarkerError, replace_marked_block
from visionzoo.bench.machine import GEMM_KERNELS
from visionzoo.bench.runner import BenchArgumentError
from visionzoo.bench.suite import SCHEMA

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
TOP_LEVEL_FIELDS = {"schema": str, "machine": dict, "settings": dict, "peak": dict, "notes": dict, "results": list}
MEASURED_FIELDS = {
    "model": str, "family": (str, type(None)), "top1": (float, int, type(None)), "input_size": list, "params": int,
    "gmacs": (float, int), "train_gmacs": (float, int, type(None)), "infer": dict, "latency": dict,
    "train": (dict, type(None)), "memory": dict, "efficiency": dict, "vs": (dict, type(None)), "error": type(None),
}
FAILED_FIELDS = {"model": str, "error": str}
OUTPUT_NAMES = {"json": "bench.json", "csv": "bench.csv", "markdown": "bench.md", "plot": "bench.png"}


class ResultsFormatError(ValueError):
    """A results file does not follow the visionzoo.bench schema."""


def _check_fields(record: dict, fields: dict, where: str) -> None:
    for key, kind in fields.items():
        if key not in record:
            raise ResultsFormatError(f"{where} lacks the field {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool) and kind is int:
            raise ResultsFormatError(f"{where}.{key} has type {type(record[key]).__name__}, expected {kind}")


def validate_results(doc: Any) -> dict:
    """Return ``doc`` if it is a results document, else raise saying which field is wrong."""
    if not isinstance(doc, dict):
        raise ResultsFormatError("a results document is a JSON object")
    _check_fields(doc, TOP_LEVEL_FIELDS, "results document")
    if doc["schema"] != SCHEMA:
        raise ResultsFormatError(f"results document has schema {doc['schema']!r}; this version reads {SCHEMA!r}")
    _check_fields(doc["peak"], {"gflops": (float, int), "dtype": str, "matmul_size": int}, "peak")
    for index, record in enumerate(doc["results"]):
        where = f"results[{index}]"
        if not isinstance(record, dict):
            raise ResultsFormatError(f"{where} is not an object")
        _check_fields(record, FAILED_FIELDS if record.get("error") else MEASURED_FIELDS, where)
        if not record.get("error"):
            _check_fields(record["infer"], {"batch_size": int, "img_per_s": (float, int), "timing": dict},
                          f"{where}.infer")
            _check_fields(record["latency"], {"median_ms": (float, int), "p90_ms": (float, int)}, f"{where}.latency")
    return doc


def _get(record: dict, *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _vs_cell(record: dict) -> str:
    vs = record.get("vs")
    if not vs:
        return "—"
    if vs.get("status") != "ok":
        return f"{vs.get('status')}"
    cell = f"{vs['speed_ratio']:.2f}× {vs['against']}"
    if vs.get("speed_ratio_p10") is None:  # results written before the ratio's range was recorded
        return cell
    return f"{cell} ({vs['speed_ratio_p10']:.2f}–{vs['speed_ratio_p90']:.2f}, {vs['pairs']} pairs)"


def _vs_efficiency_cell(record: dict) -> str:
    other = _get(record, "vs", "other_efficiency", "fraction_of_peak")
    ours = _get(record, "vs", "zoo_efficiency", "fraction_of_peak")
    if ours is None or other is None:
        return _percent(other)
    return f"{_percent(ours)} / {_percent(other)}"


# (header, value as text) for every column of the console / Markdown table and, unformatted, the CSV.
COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("model", lambda r: r["model"]),
    ("family", lambda r: r.get("family") or "—"),
    ("top-1", lambda r: _fmt(r.get("top1"), ".1f")),
    ("params (M)", lambda r: _fmt(r["params"] / 1e6 if r.get("params") else None, ".2f")),
    ("GMACs", lambda r: _fmt(r.get("gmacs"), ".3f")),
    ("FFT GMACs", lambda r: _fmt(r.get("fft_gmacs") or None, ".3f")),
    ("img/s", lambda r: _fmt(_get(r, "infer", "img_per_s"), ".1f")),
    ("±", lambda r: _percent(_get(r, "infer", "timing", "spread"))),
    ("lat. p50 ms", lambda r: _fmt(_get(r, "latency", "median_ms"), ".2f")),
    ("lat. p90 ms", lambda r: _fmt(_get(r, "latency", "p90_ms"), ".2f")),
    ("train img/s", lambda r: _fmt(_get(r, "train", "img_per_s"), ".1f")),
    ("mem MiB", lambda r: _fmt(_get(r, "memory", "infer", "mb"), ".0f")),
    ("train mem MiB", lambda r: _fmt(_get(r, "memory", "train", "mb"), ".0f")),
    ("eff.", lambda r: _percent(_get(r, "efficiency", "infer", "fraction_of_peak"))),
    ("train eff.", lambda r: _percent(_get(r, "efficiency", "train", "fraction_of_peak"))),
    ("vs", _vs_cell),
    ("vs eff.", _vs_efficiency_cell),
]

CSV_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("model",), "family": ("family",), "top1": ("top1",), "params": ("params",), "gmacs": ("gmacs",),
    "fft_gmacs": ("fft_gmacs",), "train_gmacs": ("train_gmacs",), "batch_size": ("infer", "batch_size"), "infer_img_per_s": ("infer", "img_per_s"),
    "infer_median_s": ("infer", "timing", "median_s"), "infer_spread": ("infer", "timing", "spread"),
    "latency_median_ms": ("latency", "median_ms"), "latency_p90_ms": ("latency", "p90_ms"),
    "train_img_per_s": ("train", "img_per_s"), "mem_infer_mb": ("memory", "infer", "mb"),
    "mem_train_mb": ("memory", "train", "mb"), "efficiency_infer": ("efficiency", "infer", "fraction_of_peak"),
    "efficiency_train": ("efficiency", "train", "fraction_of_peak"), "vs_against": ("vs", "against"),
    "vs_status": ("vs", "status"), "vs_speed_ratio": ("vs", "speed_ratio"),
    "vs_speed_ratio_p10": ("vs", "speed_ratio_p10"), "vs_speed_ratio_p90": ("vs", "speed_ratio_p90"),
    "vs_pairs": ("vs", "pairs"), "vs_zoo_efficiency_infer": ("vs", "zoo_efficiency", "fraction_of_peak"),
    "vs_efficiency_infer": ("vs", "other_efficiency", "fraction_of_peak"), "error": ("error",),
}


def header_lines(doc: dict) -> list[str]:
    machine, settings, peak = doc["machine"], doc["settings"], doc["peak"]
    size = f"{settings['img_size']}px" if settings.get("img_size") else "each model's own input size"
    timing = (f"{settings['time_budget_s']} s per measurement" if settings.get("time_budget_s")
              else f"{settings['iters']} timed iterations")
    flags = [flag for flag in ("channels_last", "compile", "deploy") if settings.get(flag)]
    if settings.get("compile") and settings.get("deploy"):
        flags[flags.index("compile")] = "compile (inductor, weights frozen)"
    elif settings.get("deploy") and settings["device"] == "cpu" and settings["runtime"] == "torch":
        flags[flags.index("deploy")] = "deploy (stages batch-chunked where measured faster)"
    compared = _compared(doc)
    return [
        f"Device: {machine['device_name']} ({machine['device']}), {machine['torch_threads']} torch threads of "
        f"{machine['usable_cores']} usable cores; torch {machine['torch']}, timm {machine['timm']}, "
        f"measured {machine['date_utc']}.",
        f"Settings: {settings['dtype']}, batch {settings['batch_size']}, {size}, runtime {settings['runtime']}"
        f"{', ' + ', '.join(flags) if flags else ''}; {settings['warmup']} warm-up call(s), {timing}; "
        "medians, ± = (p90 − p10) / median.",
        f"Peak: {peak['gflops']:.1f} GFLOP/s ({peak['dtype']} {peak['matmul_size']}² {_peak_kernel(peak)}, "
        f"median{_peak_source(peak)}); efficiency = model GFLOP/s (2 × MACs × img/s) / peak.",
        f"MACs: {doc['notes']['macs']}",
        *([_vs_note(doc)] if compared else []),
        *_exported_runtime_lines(doc),
        *_ops_backend_lines(doc),
    ]


def _vs_note(doc: dict) -> str:
    records = [record["vs"] for record in doc["results"] if record.get("vs")]
    note = ("vs: our img/s ÷ the other implementation's at the same batch, timed alternately (> 1: ours is faster); "
            "timm pairs share weights and their outputs are checked first.")
    if any(vs.get("speed_ratio_p10") is not None for vs in records):
        note += (" In brackets: p10–p90 of the ratio within each alternating pair, and the number of pairs; a range "
                 "that spans 1 means neither is reliably faster.")
    if any(vs.get("zoo_efficiency") for vs in records):
        return note + " vs eff.: ours / the other's efficiency, both from their img/s in that alternating run."
    return note + " vs eff.: the other's efficiency from its img/s in that run."


def _ops_backend_lines(doc: dict) -> list[str]:
    ran: dict[str, list[str]] = {}
    for record in doc["results"]:
        for op, backends in (record.get("ops_backends") or {}).items():
            ran.setdefault(op, []).extend(b for b in backends if b not in ran[op])
    if not ran:  # results written before bench recorded the ops
        return []
    choice = doc["settings"].get("ops_backend", "auto")
    return [f"Ops backends ({'auto: the fastest that applies' if choice == 'auto' else f'forced: {choice}'}): "
            + "; ".join(f"{op} {', '.join(backends)}" for op, backends in sorted(ran.items())) + "."]


def _peak_kernel(peak: dict) -> str:
    kernels = peak.get("kernels_gflops")
    if not kernels or len(kernels) < 2:  # results written before the peak compared GEMM libraries, or a GPU run
        return "matmul"
    others = ", ".join(f"{GEMM_KERNELS[name]} {gflops:.1f}" for name, gflops in kernels.items() if name != peak["kernel"])
    return f"GEMM as {GEMM_KERNELS[peak['kernel']]}, the faster of the libraries the layers use (also timed: {others})"


def _peak_source(peak: dict) -> str:
    if "at_start_gflops" not in peak:  # results written before the peak was measured at both ends of the run
        return ""
    return f"; the higher of the run's start {peak['at_start_gflops']:.1f}, end {peak['at_end_gflops']:.1f}"


def _exported_runtime_lines(doc: dict) -> list[str]:
    programs = [program for record in doc["results"] for program in (_get(record, "runtime", "programs") or [])]
    if not programs:
        return []
    runtime = next(record["runtime"] for record in doc["results"] if _get(record, "runtime", "programs"))
    worst = max(program["max_rel_error"] for program in programs)
    return [f"Runtime: {runtime['name']} ({runtime.get('version') or 'version unknown'}) on {runtime['threads']} "
            f"threads, timing {runtime['format']} exports (one static shape each); every program was checked against "
            f"PyTorch first: max relative error {worst:.1e} over {len(programs)} programs."]


VS_COLUMNS = ("vs", "vs eff.")


def _compared(doc: dict) -> bool:
    return any(record.get("vs") for record in doc["results"])


def table_columns(doc: dict) -> list[tuple[str, Callable[[dict], str]]]:
    """The table's columns; the comparison ones only when the run compared against something."""
    compared = _compared(doc)
    return [column for column in COLUMNS if compared or column[0] not in VS_COLUMNS]


def table_rows(doc: dict) -> list[list[str]]:
    columns = table_columns(doc)
    return [[cell(record) for _, cell in columns] for record in doc["results"] if not record.get("error")]


def failure_lines(doc: dict) -> list[str]:
    return [f"FAILED {record['model']}: {record['error']}" for record in doc["results"] if record.get("error")]


def format_console(doc: dict) -> str:
    headers = [header for header, _ in table_columns(doc)]
    rows = table_rows(doc)
    widths = [max(len(cells[i]) for cells in (headers, *rows)) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    body = [line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)]
    return "\n".join([*header_lines(doc), "", *body, *failure_lines(doc)])


def format_markdown(doc: dict) -> str:
    headers = [header for header, _ in table_columns(doc)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(doc)]
    lines += [f"\n{line}" for line in failure_lines(doc)]
    notes = [f"<sub>{line}</sub><br>" for line in header_lines(doc)]
    if doc.get("command"):
        notes.append(f"<sub>Command: <code>{doc['command']}</code></sub>")
    return "\n".join([*lines, "", *notes]) + "\n"


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it once written; a failed write leaves ``path`` as it was."""
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def check_output_dir(output_dir: Path) -> None:
    """Raise BenchArgumentError unless the results can be written into ``output_dir`` (created if missing)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchArgumentError(f"cannot create the output folder {output_dir}: {error.strerror or error}; "
                                 "choose another --output-dir") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise BenchArgumentError(f"cannot write to {output_dir} (permission denied); choose another --output-dir")
    folders = [name for name in OUTPUT_NAMES.values() if (output_dir / name).is_dir()]
    if folders:
        raise BenchArgumentError(f"{output_dir / folders[0]} is a folder, where the results file goes; "
                                 "choose another --output-dir")


def write_json(doc: dict, path: Path) -> None:
    with _replacing(path) as temp:
        temp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def write_csv(doc: dict, path: Path) -> None:
    with _replacing(path) as temp, temp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        for record in doc["results"]:
            writer.writerow({name: _get(record, *keys) for name, keys in CSV_FIELDS.items()})


def write_plot(doc: dict, path: Path) -> str | None:
    """ImageNet top-1 (card) vs measured throughput, one point per model, one colour per family.

    Returns None when written, else why not (matplotlib is in the ``bench`` extra; models without a top-1 are
    left out of the plot, not of the tables)."""
    try:
        import matplotlib
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'visionzoo[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = [r for r in doc["results"] if not r.get("error") and r.get("top1") is not None]
    families = sorted({r.get("family") or "other" for r in points})
    colours = {family: plt.get_cmap("tab10")(index % 10) for index, family in enumerate(families)}
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for family in families:
        members = [r for r in points if (r.get("family") or "other") == family]
        axes.scatter([r["infer"]["img_per_s"] for r in members], [r["top1"] for r in members],
                     color=colours[family], label=family, s=36, zorder=3)
        for record in members:
            short = record["model"].removeprefix(f"vz_{family}_")
            axes.annotate(short, (record["infer"]["img_per_s"], record["top1"]), textcoords="offset points",
                          xytext=(4, 3), fontsize=7)
    settings, machine = doc["settings"], doc["machine"]
    axes.set_xscale("log")
    plain_numbers = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    speeds = [r["infer"]["img_per_s"] for r in points]
    within_a_decade = bool(speeds) and max(speeds) < 10 * min(speeds)
    axes.xaxis.set_major_formatter(plain_numbers)
    # Minor ticks get numbers only when there are few decades' worth of them, or they overlap.
    axes.xaxis.set_minor_formatter(plain_numbers if within_a_decade else matplotlib.ticker.NullFormatter())
    axes.margins(x=0.15)
    axes.set_xlabel(f"measured throughput, img/s (batch {settings['batch_size']}, {settings['dtype']}, "
                    f"{machine['device']})")
    axes.set_ylabel("ImageNet-1k top-1 (paper), %")
    axes.set_title(f"ImageNet top-1 vs throughput measured on {machine['device_name']}", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    if families:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None


def write_outputs(doc: dict, output_dir: Path) -> dict[str, Path]:
    """Write JSON, CSV, Markdown and the plot into ``output_dir``; returns what was written, by kind.

    Each file is written under a temporary name and renamed, so a failed write keeps the earlier file."""
    check_output_dir(output_dir)
    paths = {kind: output_dir / name for kind, name in OUTPUT_NAMES.items()}
    write_json(doc, paths["json"])
    write_csv(doc, paths["csv"])
    with _replacing(paths["markdown"]) as temp:
        temp.write_text("# visionzoo bench\n\n" + format_markdown(doc))
    if importlib.util.find_spec("matplotlib") is None:
        del paths["plot"]
    else:
        with _replacing(paths["plot"]) as temp:
            write_plot(doc, temp)
    return paths


def load_results(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise ResultsFormatError(f"results file {path} does not exist; run `visionzoo bench` first") from error
    except json.JSONDecodeError as error:
        raise ResultsFormatError(f"results file {path} is not valid JSON: {error}") from error
    return validate_results(doc)


def replace_between_markers(
    text: str, block: str, source: str, start_marker: str = README_START, end_marker: str = README_END
) -> str:
    try:
        return replace_marked_block(text, block, source, start_marker, end_marker)
    except MarkerError as error:
        raise ResultsFormatError(str(error)) from None


def render_readme(results_path: Path, readme_path: Path, plot_path: Path) -> str | None:
    """Rewrite the README's results block and the plot from a results file; returns why the plot was skipped."""
    doc = load_results(results_path)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot_skipped = write_plot(doc, plot_path)
    block = format_markdown(doc)
    if plot_skipped is None:
        relative = os.path.relpath(plot_path, readme_path.parent)
        block += f"\n![ImageNet top-1 vs measured throughput]({Path(relative).as_posix()})\n"
    block += f"\n<sub>Generated from <code>{Path(os.path.relpath(results_path, readme_path.parent)).as_posix()}"
    block += "</code> by <code>visionzoo bench --render-readme</code>; do not edit by hand.</sub>\n"
    readme_path.write_text(replace_between_markers(readme_path.read_text(), block, str(readme_path)))
    return plot_skipped
