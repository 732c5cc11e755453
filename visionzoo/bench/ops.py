"""``visionzoo bench --ops``: every (op, backend) pair timed on the calls that real models make.

One eager forward of each named model (deploy form, the run's batch size) records every op call with its actual
arguments (:func:`visionzoo.ops.record_calls`); calls that share an op, tensor shapes and plain arguments are
timed once. Each pair runs eager and, with ``compile``, under ``torch.compile`` (dynamo reset per pair, so no
pair inherits another's graph). FLOPs are the reference's, counted on the meta device with the bench's
FlopCounter, so GFLOP/s measure useful work and the speedup is over the reference in the same mode.
A backend that refuses a call (wrong device, a package missing, ``supports`` says no, e.g. a FlexAttention
backend in eager CPU mode, where it would materialise every score) gets its reason instead of a time.
An op that names the dense computation it replaces (:meth:`visionzoo.ops.Op.replaces`, e.g. full attention for
sparse attention) gets that timed too, as the row ``dense (replaced)``, and every row its speedup over it (``vs_dense``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from visionzoo.bench.flops import FFT_FORMULAS, FORMULA_FIXES
from visionzoo.bench.runner import BenchSettings, input_size_of, make_inputs
from visionzoo.bench.timing import measure, summarize, timer_for
from visionzoo.layers.fuse import fuse_model
from visionzoo.models._factory import create_model
from visionzoo.ops import REFERENCE, get_op, record_calls

MODES = ("eager", "compiled")
DENSE = "dense (replaced)"


@dataclass
class OpCall:
    """One distinct call of an op: its arguments as a model passed them, and the models that made it."""

    op: str
    args: tuple
    kwargs: dict
    models: list[str]
    count: int = 1

    @property
    def label(self) -> str:
        return ", ".join(_describe(value) for value in (*self.args, *self.kwargs.values()) if value is not None)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return "x".join(map(str, value.shape)) or "scalar"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _signature(op: str, args: tuple, kwargs: dict) -> tuple:
    def key(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type)
        return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)

    return op, tuple(key(v) for v in args), tuple((name, key(v)) for name, v in sorted(kwargs.items()))


def capture_calls(names: list[str], settings: BenchSettings,
                  build: Callable[[str], torch.nn.Module] = create_model) -> list[OpCall]:
    """The distinct op calls of one inference forward of each model, in first-call order."""
    calls: dict[tuple, OpCall] = {}
    for name in names:
        model = build(name).eval()
        model = fuse_model(model) if settings.deploy else model
        inputs = make_inputs(settings.batch_size, input_size_of(model, settings.img_size), settings)
        model = model.to(settings.device)
        with torch.inference_mode(), record_calls() as recorded:
            model(inputs)
        for op, args, kwargs in recorded:
            signature = _signature(op, args, kwargs)
            if signature in calls:
                calls[signature].count += 1
                if name not in calls[signature].models:
                    calls[signature].models.append(name)
            else:
                calls[signature] = OpCall(op, _detached(args), _detached(kwargs), [name])
    return list(calls.values())


def _detached(values):
    # Inference tensors cannot be saved by a later compile or autograd: plain clones replay the same call.
    def copy(value):
        return value.clone() if isinstance(value, torch.Tensor) else value

    if isinstance(values, dict):
        return {key: copy(value) for key, value in values.items()}
    return tuple(copy(value) for value in values)


def reference_flops(call: OpCall) -> int:
    """FLOPs of the op's reference on this call, counted on the meta device (nothing is computed).

    Unlike a model's GMACs, an op's count includes its FFTs (the bench's 2.5·N·log2(N) real FLOPs per N-point
    real transform): for spectral gating they are most of the work, and a GFLOP/s of zero would hide it."""

    def to_meta(value):
        return value.to("meta") if isinstance(value, torch.Tensor) else value

    args = tuple(to_meta(v) for v in call.args)
    kwargs = {key: to_meta(v) for key, v in call.kwargs.items()}
    formulas = {**FORMULA_FIXES, **FFT_FORMULAS}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        get_op(call.op).reference(*args, **kwargs)
    return counter.get_total_flops()


def _runner(call: OpCall, backend: str, compiled: bool) -> Callable[[], torch.Tensor]:
    op = get_op(call.op)

    def run(*args, **kwargs):
        if backend == DENSE:
            return op.dense_baseline(*args, **kwargs)
        return op(*args, backend=backend, **kwargs)

    if compiled:
        torch._dynamo.reset()
        run = torch.compile(run, fullgraph=True)
    return lambda: run(*call.args, **call.kwargs)


def time_call(call: OpCall, backend: str, compiled: bool, settings: BenchSettings) -> dict:
    """Median ms of one (op, backend) pair on ``call``, or the reason it did not run."""
    runner = _runner(call, backend, compiled)
    try:
        with torch.no_grad():
            runner()  # the first call compiles, or raises the backend's refusal
            times = measure(runner, timer_for(torch.device(settings.device)), settings.schedule)
    except Exception as error:  # a refusal, or a compile failure the table must show rather than abort on
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    return {"ms": summarize(times)["median_s"] * 1e3, "timing": summarize(times)}


def bench_ops(names: list[str], settings: BenchSettings, build: Callable[[str], torch.nn.Module] = create_model,
              on_pair: Callable[[str], None] = lambda label: None) -> list[dict]:
    """One row per (distinct call, backend): ms, GFLOP/s and speedup over the reference, eager and compiled."""
    modes = MODES if settings.compile else MODES[:1]
    rows = []
    for call in capture_calls(names, settings, build):
        flops = reference_flops(call)
        measured = {}
        op = get_op(call.op)
        for backend in [*op.available(), *([DENSE] if op.dense_baseline else [])]:
            on_pair(f"{call.op}/{backend}")
            measured[backend] = {mode: time_call(call, backend, mode == "compiled", settings) for mode in modes}
        for backend, by_mode in measured.items():
            row = {"op": call.op, "call": call.label, "models": call.models, "calls_per_forward": call.count,
                   "backend": backend, "gflop": flops / 1e9}
            for mode, result in by_mode.items():
                reference_ms = measured[REFERENCE][mode].get("ms")
                ms = result.get("ms")
                row[mode] = {
                    **result,
                    "gflops": flops / (ms * 1e6) if ms else None,
                    "speedup": reference_ms / ms if ms and reference_ms else None,
                }
                if DENSE in measured:
                    dense_ms = measured[DENSE][mode].get("ms")
                    row[mode]["vs_dense"] = dense_ms / ms if ms and dense_ms else None
            rows.append(row)
    return rows


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_ops_table(rows: list[dict], markdown: bool = False) -> str:
    """The rows as a Markdown table (or aligned text), one line per (call, backend)."""
    modes = [mode for mode in MODES if any(mode in row for row in rows)]
    with_dense = any("vs_dense" in row[mode] for row in rows for mode in modes)
    header = ["op", "call", "models", "backend", "GFLOP"]
    for mode in modes:
        header += [f"{mode} ms", f"{mode} GFLOP/s", f"{mode} speedup"] + ([f"{mode} vs dense"] if with_dense else [])
    lines = []
    for row in rows:
        cells = [row["op"], row["call"], " ".join(row["models"]) + f" (x{row['calls_per_forward']})",
                 row["backend"], f"{row['gflop']:.3f}"]
        for mode in modes:
            result = row[mode]
            if "error" in result:
                cells += ["n/a", "-", result["error"][:60]] + (["-"] if with_dense else [])
            else:
                cells += [_cell(result["ms"], ".3f"), _cell(result["gflops"], ".1f"),
                          _cell(result["speedup"], ".2f") + "x"]
                cells += [_cell(result.get("vs_dense"), ".2f") + "x"] if with_dense else []
        lines.append(cells)
    if markdown:
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(table + ["| " + " | ".join(cells) + " |" for cells in lines])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) for cells in [header, *lines])


def ops_markdown(doc: dict) -> str:
    """The page ``bench --ops`` writes: its command, the machine and schedule, then the table."""
    machine, settings = doc["machine"], doc["settings"]
    timed = f"{settings['iters']} timed calls" if settings["iters"] else f"{settings['time_budget_s']} s of calls"
    return (
        f"# visionzoo bench --ops\n\n`{doc['command']}`\n\n"
        f"{machine['device_name']} ({machine.get('cpu_capability') or machine['device']}), "
        f"{machine['torch_threads']} torch thread(s), torch {machine['torch']}, {machine['date_utc'][:16]} UTC; "
        f"medians of {timed} after {settings['warmup']} warm-up, {settings['dtype']}, batch {settings['batch_size']}. "
        "GFLOP: the reference's (what the op computes, FFTs included); n/a: the backend refused the call or failed, "
        "the reason in the speedup column (ops.json has it whole). vs dense (ops that replace a dense computation): the "
        f"dense computation's ms over the row's, the row `{DENSE}` timing it.\n\n"
        + format_ops_table(doc["rows"], markdown=True) + "\n"
    )
