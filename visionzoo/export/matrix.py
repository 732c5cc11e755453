"""The export matrix: every selected zoo model in every format, as JSON, a Markdown table and a README section."""
from __future__ import annotations

import datetime
import json
import platform
import tempfile
from importlib import metadata
from pathlib import Path

from visionzoo._markers import MarkerError, replace_marked_block
from visionzoo.export._files import ExportError, atomic_output
from visionzoo.export.core import export_model
from visionzoo.export.formats import FORMATS
from visionzoo.models._cards import load_cards
from visionzoo.models._factory import list_models

README_START = "<!-- export:start -->"
README_END = "<!-- export:end -->"
DEFAULT_RESULTS = Path("results/export_matrix.json")
TABLE_HEADER = (
    "| model | input | format | status | max rel. error (random) | max rel. error (photos) | size (MB) "
    "| latency b1 (ms) | exporter / failure |",
    "|---|---|---|---|---|---|---|---|---|",
)
VERSIONS = ("torch", "onnx", "onnxscript", "onnxruntime", "executorch", "coremltools", "timm")


def select_models(pattern: str, smallest: bool) -> list[str]:
    """Zoo names matching ``pattern``; with ``smallest``, only each family's smallest variant by card params."""
    names = list_models(pattern)
    if not names:
        raise ExportError(f"no zoo model matches {pattern!r}; `visionzoo list` shows them all")
    if not smallest:
        return names
    chosen, carded = [], set()
    for card in load_cards().values():
        variants = [(v["params"], name) for name, v in card["variants"].items() if name in names]
        carded |= {name for _, name in variants}
        if variants:
            chosen.append(min(variants)[1])
    return sorted(chosen + [name for name in names if name not in carded])


def run_matrix(
    names: list[str],
    formats: list[str],
    img_size: int | None = None,
    deploy: bool = False,
    latency_repeats: int = 10,
    progress=print,
) -> dict:
    """Export every model in every format (files go to a temporary folder) and collect the result records."""
    results = []
    with tempfile.TemporaryDirectory(prefix="vz_export_matrix_") as folder:
        for name in names:
            for fmt in formats:
                out = Path(folder) / f"{name}{FORMATS[fmt].suffix}"
                record = export_model(name, fmt, out, img_size=img_size, deploy=deploy, latency_repeats=latency_repeats)
                record.pop("file")
                record.pop("kept", None)  # the files lived in a temporary folder
                results.append(record)
                progress(markdown_row(record))
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
        "versions": {package: _version(package) for package in VERSIONS},
        "error_metric": "max|out - ref| / max|ref| (runtime vs eager PyTorch, float32)",
        "latency": f"median of {latency_repeats} batch-1 runs after one warm-up, on this host's CPU",
        "results": results,
    }


def merge_results(old: dict, new: dict) -> dict:
    """``new`` plus the rows of ``old`` for (model, format) pairs that ``new`` did not run, sorted by model."""
    ran = {(r["model"], r["format"]) for r in new["results"]}
    kept = [r for r in old["results"] if (r["model"], r["format"]) not in ran]
    order = list(FORMATS)
    rows = sorted(kept + new["results"], key=lambda r: (r["model"], order.index(r["format"])))
    return {**new, "results": rows}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_json(matrix: dict, path: str | Path) -> None:
    with atomic_output(Path(path)) as temp:
        temp.write_text(json.dumps(matrix, indent=1) + "\n")


def _sci(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def markdown_row(record: dict) -> str:
    status = record["status"]
    if status == "failed":
        op = f" `{record['failing_op']}`" if record.get("failing_op") else ""
        note = f"{record.get('stage', 'export')} failed{op}: {record.get('error', '')}".replace("|", "\\|")
    else:
        note = record.get("note", record.get("exporter", ""))
    size = record.get("file_bytes")
    latency = record.get("latency_ms_b1_median")
    return (
        f"| {record['model']} | {'x'.join(map(str, record.get('input_size', []))) or '-'} | {record['format']} "
        f"| {status} | {_sci(record.get('max_rel_error_random'))} "
        f"| {_sci(record.get('max_rel_error_photos'))} | {'-' if size is None else f'{size / 1e6:.1f}'} "
        f"| {'-' if latency is None else f'{latency:.1f}'} | {note} |"
    )


def markdown_table(matrix: dict) -> str:
    first = matrix["results"][0] if matrix["results"] else {}
    lines = [
        f"Exported at the input size shown, batch 1, float32{', deploy form' if first.get('deploy') else ''}; "
        f"error = {matrix['error_metric']}, on seeded random input and on three photographs "
        f"(skimage astronaut, chelsea, coffee); pass below {first.get('tolerance', 1e-4):g}. "
        f"Latency: {matrix['latency']} ({matrix['host']['machine']}, {matrix['created'][:10]}). "
        "Core ML prediction needs macOS: on Linux only conversion and the saved spec are checked.",
        "",
        *TABLE_HEADER,
    ]
    lines += [markdown_row(record) for record in matrix["results"]]
    return "\n".join(lines)


def update_readme(results: str | Path, readme: str | Path) -> None:
    """Replace the text between the export markers in ``readme`` with the table from the committed ``results``."""
    results, readme = Path(results), Path(readme)
    if not results.is_file():
        raise ExportError(f"no results file {results}; run `visionzoo export --matrix 'vz_*'` first")
    table = markdown_table(json.loads(results.read_text()))
    try:
        text = replace_marked_block(readme.read_text(), table, str(readme), README_START, README_END)
    except MarkerError as error:
        raise ExportError(str(error)) from None
    with atomic_output(readme) as temp:
        temp.write_text(text)
