"""A benchmark run over several models: the machine header (description, threads, matmul peak), then one record
per model, with a progress bar; a failing model is recorded with its error and the run goes on."""
from __future__ import annotations

import sys
from typing import Callable

import timm
import torch
from torch import nn
from tqdm import tqdm

from visionzoo.bench.flops import FLOP_COUNTER_NOTE, count_macs
from visionzoo.bench.machine import DTYPES, machine_info, machine_peak, measure_matmul_peak, pin_threads
from visionzoo.bench.memory import MEMORY_NOTE
from visionzoo.bench.runner import BenchSettings, benchmark_model, card_of, efficiency_of, input_size_of
from visionzoo.bench.timing import Schedule, Timer, timer_for
from visionzoo.bench.vs import TIMM, pair_with_timm, time_side_by_side
from visionzoo.models._factory import create_model
from visionzoo.ops import REFERENCE, use_backend

SCHEMA = "visionzoo.bench/1"
PHASES = ("build", "count", "runtime", "memory", "throughput", "latency", "train", "vs")


def _build_baseline(build_other: Callable[..., nn.Module], name: str, img_size: int | None) -> nn.Module:
    """The --vs baseline; at a forced --img-size, built for that size where its constructor takes one (timm's
    fixed-size ViTs refuse other inputs otherwise)."""
    if img_size is not None:
        try:
            return build_other(name, img_size=img_size)
        except TypeError:
            pass
    return build_other(name)


def _time_against(zoo_model: nn.Module, zoo_macs: float, settings: BenchSettings, timer: Timer, vs: str,
                  pair: dict | None, build_other: Callable[[str], nn.Module]) -> dict:
    zoo_size = input_size_of(zoo_model, settings.img_size)
    if pair is not None:
        other = pair.pop("model")
        other_size = zoo_size
    else:
        other = _build_baseline(build_other, vs, settings.img_size)
        other_size = input_size_of(other, settings.img_size)
        pair = {"against": vs, "kind": "baseline"}
    with use_backend(REFERENCE):  # counted as our own models are, should the other be a zoo model
        other_macs = count_macs(other, other_size)
    timed = time_side_by_side(zoo_model, other, settings, timer, zoo_size, other_size)
    # Both sides' efficiency by the same measure from the alternating run, so that the two compare like the ratio.
    return {**pair, **timed, "other_gmacs": other_macs / 1e9,
            "zoo_efficiency": efficiency_of(zoo_macs, timed["zoo_img_per_s"]),
            "other_efficiency": efficiency_of(other_macs, timed["other_img_per_s"])}


def benchmark_one(name: str, settings: BenchSettings, timer: Timer, vs: str | None,
                  build: Callable[[str], nn.Module], build_other: Callable[..., nn.Module],
                  on_phase: Callable[[str], None]) -> dict:
    """One model's record; with ``vs``, its side-by-side timing (or why the pair was skipped) under ``vs``."""
    built: dict[str, nn.Module] = {}

    def build_and_keep(model_name: str) -> nn.Module:
        built["model"] = build(model_name)
        return built["model"]

    pair = prepare = None
    if vs == TIMM:
        timm_name = (card_of(name) or {}).get("timm_name")
        if timm_name:
            prepare, pair = pair_with_timm(name, timm_name, build_other)
        else:
            pair = {"against": None, "kind": "timm_pair", "status": "no_counterpart",
                    "message": f"timm has no implementation of {name}'s architecture (card timm_name is null)"}
    record = benchmark_model(name, settings, timer, build=build_and_keep, on_phase=on_phase,
                             prepare=prepare)
    if vs is not None:
        on_phase("vs")
        record["vs"] = pair if pair is not None and "status" in pair else _side_by_side_or_why_not(
            built["model"], record["gmacs"] * 1e9, settings, timer, vs, pair, build_other)
    return record


def _side_by_side_or_why_not(zoo_model: nn.Module, zoo_macs: float, settings: BenchSettings, timer: Timer,
                             vs: str, pair: dict | None, build_other: Callable[[str], nn.Module]) -> dict:
    """The comparison's record; if the other model cannot run (e.g. a fixed input size), why, without losing ours."""
    against = pair["against"] if pair else vs
    try:
        return _time_against(zoo_model, zoo_macs, settings, timer, vs, pair, build_other)
    except Exception as error:  # noqa: BLE001  (the zoo model's own figures are already measured)
        return {"against": against, "kind": "timm_pair" if pair else "baseline", "status": "error",
                "message": f"timing {against} failed: {type(error).__name__}: {error}"}


def _divide_by_peak(results: list[dict], peak_gflops: float) -> None:
    for record in results:
        vs = record.get("vs") or {}
        achieved = [*(record.get("efficiency") or {}).values(), vs.get("zoo_efficiency"), vs.get("other_efficiency")]
        for entry in achieved:
            if entry:
                entry["fraction_of_peak"] = entry["gflops"] / peak_gflops


def _failed(name: str, error: str) -> dict:
    card = card_of(name) or {}
    return {"model": name, "family": card.get("family"), "top1": card.get("top1"), "vs": None, "error": error}


def run_suite(names: list[str], settings: BenchSettings, vs: str | None = None, threads: int | None = None,
              timer: Timer | None = None, build: Callable[[str], nn.Module] = create_model,
              build_other: Callable[..., nn.Module] = timm.create_model, matmul_size: int | None = None,
              progress: bool = True, command: str | None = None) -> dict:
    """Benchmark ``names`` and return the results document (see :mod:`visionzoo.bench.report` for its schema)."""
    settings.validate()
    device = torch.device(settings.device)
    pinned = pin_threads(threads)
    timer = timer or timer_for(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithms during warm-up, as deployments do
    peak_schedule = Schedule(warmup=2, iters=10)

    def measure_peak() -> dict:
        return measure_matmul_peak(device, DTYPES[settings.dtype], timer, peak_schedule, size=matmul_size)

    peak_at_start = measure_peak()
    results = []
    # The bar draws on a terminal only; in logs (CI, tools/setup.sh) one line per model says where the run is.
    bar = tqdm(total=len(names) * len(PHASES), desc="bench", unit="step", file=sys.stderr,
               disable=None if progress else True, leave=False)
    for index, name in enumerate(names, start=1):
        if progress and bar.disable:
            print(f"bench: [{index}/{len(names)}] {name}", file=sys.stderr, flush=True)
        done = {"count": 0}

        def on_phase(phase: str, model_name: str = name) -> None:
            bar.set_postfix_str(f"{model_name}: {phase}")
            bar.update(1)
            done["count"] += 1

        try:
            with use_backend(settings.ops_backend):
                record = benchmark_one(name, settings, timer, vs, build, build_other, on_phase)
        except Exception as error:  # noqa: BLE001  (one broken model must not lose the others' results)
            record = _failed(name, f"{type(error).__name__}: {error}")
        bar.update(len(PHASES) - done["count"])
        if record["error"]:
            bar.write(f"{name}: FAILED: {record['error']}", file=sys.stderr)
        elif record["vs"] and record["vs"].get("message"):
            bar.write(f"{name}: --vs {vs}: {record['vs']['message']}", file=sys.stderr)
        results.append(record)
    bar.close()
    peak = machine_peak(peak_at_start, measure_peak())
    _divide_by_peak(results, peak["gflops"])
    return {
        "schema": SCHEMA,
        "command": command,
        "machine": {**machine_info(device), "torch_threads": pinned},
        "settings": settings.as_dict(),
        "peak": peak,
        "notes": {"macs": FLOP_COUNTER_NOTE, "memory": MEMORY_NOTE},
        "results": results,
    }
