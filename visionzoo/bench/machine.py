"""What the benchmark ran on: the machine's description, its thread settings, and its measured GEMM peak."""
from __future__ import annotations

import math
import os
import platform
from datetime import datetime, timezone
from typing import Callable

import timm
import torch
import torch.nn.functional as F

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


GEMM_KERNELS = {
    "matmul": "torch.mm",
    "conv1x1": "a 1x1 convolution over a channels-last map (oneDNN)",
}


def _gemm_calls(size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], torch.Tensor]]:
    """The same ``size``³ GEMM through each library the models' layers reach: torch.mm (BLAS), and on the CPU a
    1x1 convolution (oneDNN) over ``size`` positions. On some CPUs one library is much faster than the other
    (MKL's sgemm on AMD runs at about half of oneDNN's rate), and a model's convs and linears reach the faster one:
    a peak from the slower would put models above 100%."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    calls = {"matmul": lambda: torch.mm(a, b, out=out)}
    if device.type == "cpu":
        height = max(h for h in range(1, math.isqrt(size) + 1) if size % h == 0)
        positions = a.reshape(1, height, size // height, size).permute(0, 3, 1, 2)  # channels-last view
        weight = b.t().reshape(size, size, 1, 1).contiguous()
        calls["conv1x1"] = lambda: F.conv2d(positions, weight)
    return calls


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, timer: Timer, schedule: Schedule,
                        size: int | None = None) -> dict:
    """Achieved GFLOP/s of a square ``size`` x ``size`` GEMM in ``dtype``, the faster of the libraries the
    models reach (:func:`_gemm_calls`): the machine's practical peak.

    Model efficiencies divide by the median figure; the best figure is recorded too.
    """
    size = size or default_matmul_size(device)
    flops = 2.0 * size**3
    by_kernel = {name: summarize(measure(call, timer, schedule)) for name, call in _gemm_calls(size, device, dtype).items()}
    kernel, stats = min(by_kernel.items(), key=lambda item: item[1]["median_s"])
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_size": size,
        "kernel": kernel,
        "kernels_gflops": {name: flops / timing["median_s"] / 1e9 for name, timing in by_kernel.items()},
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
