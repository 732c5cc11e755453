"""Peak memory of a piece of work: CUDA's max-allocated on the GPU, resident-set growth on the CPU.

On the GPU the figure is ``torch.cuda.max_memory_allocated`` (weights, activations and workspace; not the caching
allocator's reserve). On the CPU it is the growth of the process's peak resident set (VmHWM) over its size before
the work, after returning the C allocator's free memory to the system (glibc ``malloc_trim``; otherwise memory
freed by earlier work is reused without growing the resident set and the figure reads low) and resetting the peak
through /proc/self/clear_refs (Linux); elsewhere it is not available.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import Callable

import torch

MEMORY_NOTE = ("GPU: torch.cuda.max_memory_allocated during one call (weights included); CPU: growth of the peak "
               "resident set during one call over the size before it, after trimming the C heap (Linux only).")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} missing from {_STATUS}")


def _release_free_heap() -> None:
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak resident set size to the current one
        return True
    except OSError:
        return False


def peak_memory_mb(work: Callable[[], object], device: torch.device) -> dict:
    """Run ``work`` once and return its peak memory in MiB and how it was measured (``mb`` is None if unknown)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return {"mb": torch.cuda.max_memory_allocated(device) / 2**20, "method": "cuda_max_allocated"}
    _release_free_heap()
    if not (_STATUS.exists() and _reset_peak_rss()):
        work()
        return {"mb": None, "method": "unavailable (needs Linux /proc/self/clear_refs)"}
    before = _status_kib("VmRSS")
    work()
    return {"mb": max(_status_kib("VmHWM") - before, 0) / 1024, "method": "rss_peak_growth"}
