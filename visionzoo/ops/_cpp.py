"""Hand-written C++ CPU kernels (``visionzoo/ops/cpu/*.cpp``), built just in time on first use.

:func:`cpu_kernels` compiles them once per machine with ``torch.utils.cpp_extension.load`` (``-O3 -march=native``;
torch caches the build under ``TORCH_EXTENSIONS_DIR``, ``~/.cache/torch_extensions`` by default, under a name that
carries the CPU's instruction-set flags, and rebuilds only when a source or flag changes). Nothing is built at
``import visionzoo``. When the build cannot run (no C++ compiler, no ninja) one warning names the cause,
:func:`cpu_kernels_available` answers False from then on and the backends that need the kernels stand aside for the
plain-PyTorch ones.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from visionzoo.ops._dispatch import package_importable

SOURCES = [Path(__file__).parent / "cpu" / "sparsifiner_kernels.cpp"]


def _instruction_set_tag(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """A short digest of this CPU's instruction-set flags. The build is ``-march=native`` and torch keys its cache by
    name, sources and flags only: a cache shared between machines (a network home) must not hand one CPU another's
    binary, which would die on an illegal instruction instead of falling back."""
    try:
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        flags = f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


EXTENSION_NAME = f"visionzoo_cpu_kernels_{_instruction_set_tag()}"
# -march=native: the name above keeps one CPU's build from another's. No fused multiply-add contraction: the
# predictor's scores must round like the reference's separate ATen multiply and add, or near-tied keys could be
# chosen differently.
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off"]


class CppKernelsUnavailable(RuntimeError):
    """The C++ kernels could not be built on this machine (the message says why)."""


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch runs ``ninja`` from PATH; the pip package's copy is not there unless its environment is activated."""
    if shutil.which("ninja") is not None or not package_importable("ninja"):
        yield
        return
    import ninja

    path = os.environ.get("PATH", "")
    os.environ["PATH"] = ninja.BIN_DIR + (os.pathsep + path if path else "")
    try:
        yield
    finally:
        os.environ["PATH"] = path


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    with _ninja_on_path():
        return cpp_extension.load(name=EXTENSION_NAME, sources=[str(path) for path in SOURCES], extra_cflags=CFLAGS,
                                  verbose=False)


@functools.lru_cache(maxsize=None)
def _load() -> ModuleType | str:
    try:
        return _build()
    except Exception as error:  # a missing compiler or ninja, a failed compile: all mean "use the ATen paths"
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        warnings.warn(f"visionzoo's C++ CPU kernels could not be built ({reason}); the Sparsifiner ops run their "
                      "PyTorch backends instead. Install a C++ compiler and ninja (pip install ninja) to build them.",
                      RuntimeWarning, stacklevel=3)
        return reason


@torch.compiler.assume_constant_result
def cpu_kernels_available() -> bool:
    """Whether the C++ kernels are built (building them on the first call); a constant inside compiled graphs."""
    return not isinstance(_load(), str)


def cpu_kernels() -> ModuleType:
    """The built extension module; :class:`CppKernelsUnavailable` with the cause if it cannot be built."""
    module = _load()
    if isinstance(module, str):
        raise CppKernelsUnavailable(f"visionzoo's C++ CPU kernels are not built here ({module})")
    return module


def cpu_kernels_can_run(*tensors: torch.Tensor) -> bool:
    """Whether a C++ backend can run a call on these tensors: float32/64, no gradient asked (the kernels have no
    backward), not traced for an export (an exported file cannot call a kernel built in this process), and the
    kernels built here (building them on the first call). Backends use it as their ``supports``."""
    if torch.compiler.is_exporting():
        return False
    if any(t.dtype not in (torch.float32, torch.float64) for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return cpu_kernels_available()
