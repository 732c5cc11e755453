"""Timing one call at a time: wall clock on the CPU, CUDA events on the GPU; medians and spreads of repetitions.

A timer's ``time_call(fn)`` returns the seconds one call took, with the device synchronised so that the time
covers the work and not just its launch. Tests pass a timer that returns scripted times.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch


class Timer(Protocol):
    def time_call(self, fn: Callable[[], object]) -> float: ...

    def synchronize(self) -> None: ...


class WallTimer:
    """``time.perf_counter`` around a call; for the CPU, where a call returns when its work is done."""

    def time_call(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def synchronize(self) -> None:
        return None


class CudaEventTimer:
    """CUDA events recorded on the current stream around a call, then synchronised: GPU time, not launch time."""

    def __init__(self, device: torch.device):
        self.device = device

    def time_call(self, fn: Callable[[], object]) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


def timer_for(device: torch.device) -> Timer:
    return CudaEventTimer(device) if device.type == "cuda" else WallTimer()


@dataclass(frozen=True)
class Schedule:
    """How long to measure: ``warmup`` untimed calls, then ``iters`` timed calls or, with ``time_budget`` (seconds),
    timed calls until their total reaches the budget (at least ``min_iters``)."""

    warmup: int = 3
    iters: int = 10
    time_budget: float | None = None
    min_iters: int = 2

    def done(self, times: list[float]) -> bool:
        if self.time_budget is None:
            return len(times) >= self.iters
        return len(times) >= self.min_iters and sum(times) >= self.time_budget


def measure(fn: Callable[[], object], timer: Timer, schedule: Schedule) -> list[float]:
    """Seconds per call for each timed repetition of ``fn``."""
    for _ in range(schedule.warmup):
        fn()
    timer.synchronize()
    times: list[float] = []
    while not schedule.done(times):
        times.append(timer.time_call(fn))
    return times


def measure_alternating(fn_a: Callable[[], object], fn_b: Callable[[], object], timer: Timer,
                        schedule: Schedule) -> tuple[list[float], list[float]]:
    """Time two callables in turn (A B A B ...), so that drifts in clock speed or load hit both alike."""
    for _ in range(schedule.warmup):
        fn_a()
        fn_b()
    timer.synchronize()
    times_a: list[float] = []
    times_b: list[float] = []
    while not (schedule.done(times_a) and schedule.done(times_b)):
        times_a.append(timer.time_call(fn_a))
        times_b.append(timer.time_call(fn_b))
    return times_a, times_b


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), defined for a single value too."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(times: list[float]) -> dict[str, float | int]:
    """Median and spread of repeated timings, in seconds; ``spread`` is (p90 - p10) / median."""
    if not times:
        raise ValueError("no timings to summarise: measure at least one repetition")
    ordered = sorted(times)
    median = statistics.median(ordered)
    p10, p90 = quantile(ordered, 0.1), quantile(ordered, 0.9)
    return {
        "n": len(ordered),
        "median_s": median,
        "p10_s": p10,
        "p90_s": p90,
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "spread": (p90 - p10) / median if median > 0 else 0.0,
    }
