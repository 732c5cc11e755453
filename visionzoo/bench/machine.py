"""What the benchmark ran on: the machine's description, its thread settings, and its measured matmul peak."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

import timm
import torch

from visionzoo.bench.timing import Schedule, Timer, measure, summarize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count for the run (``None``: torch's default, one per physical core) and
    return it, so that every model and the peak matmul run with the same count."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads if threads is not None else torch.get_num_threads())
    return torch.get_num_threads()


def machine_info(device: torch.device) -> dict:
    from visionzoo import __version__

    info = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "visionzoo": __version__,
        "device": str(device),
        "device_name": cpu_model(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            device_memory_gb=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        )
    return info


def default_matmul_size(device: torch.device) -> int:
    """Large enough to reach the arithmetic units' limit, small enough to time in about a second on a laptop CPU."""
    return 8192 if device.type == "cuda" else 2048


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, timer: Timer, schedule: Schedule,
                        size: int | None = None) -> dict:
    """Achieved GFLOP/s of a square ``size`` x ``size`` matmul in ``dtype``: the machine's practical peak.

    Model efficiencies divide by the median figure; the best figure is recorded too.
    """
    size = size or default_matmul_size(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    times = measure(lambda: torch.mm(a, b, out=out), timer, schedule)
    stats = summarize(times)
    flops = 2.0 * size**3
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_size": size,
        "gflops": flops / stats["median_s"] / 1e9,
        "gflops_best": flops / stats["min_s"] / 1e9,
        "timing": stats,
    }


def machine_peak(at_start: dict, at_end: dict) -> dict:
    """The run's peak from its matmul measured before and after the models: the higher median of the two.

    A machine shared with other work can be slowed while one of them runs; dividing by the quieter figure keeps
    a passing load from inflating every efficiency of the run.
    """
    higher = max(at_start, at_end, key=lambda peak: peak["gflops"])
    return {**higher, "gflops_best": max(at_start["gflops_best"], at_end["gflops_best"]),
            "at_start_gflops": at_start["gflops"], "at_end_gflops": at_end["gflops"]}
