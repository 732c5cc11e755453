"""One dispatcher for every op: a plain-PyTorch reference plus optional fast backends.

Each op is an :class:`Op`. Calling it picks the first registered fast backend whose
``supports(*args, **kwargs)`` accepts the call, and otherwise the reference. The choice can
be forced per call (``backend=``), per block of code (``with use_backend('reference')``) or
per process (environment variable ``VZ_OPS_BACKEND``), which is how tests compare paths.
"""
from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

REFERENCE = "reference"
AUTO = "auto"

_forced_backend: ContextVar[str | None] = ContextVar("vz_forced_backend", default=None)
_OPS: dict[str, "Op"] = {}


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    supports: Callable[..., bool]


def _always(*args, **kwargs) -> bool:
    return True


class Op:
    """A named op with a reference implementation and fast backends tried in registration order."""

    def __init__(self, name: str, reference: Callable):
        if name in _OPS:
            raise ValueError(f"op {name!r} is already defined")
        self.name = name
        self.reference = reference
        self.backends: dict[str, Backend] = {}
        self.__doc__ = reference.__doc__
        _OPS[name] = self

    def register(self, name: str, supports: Callable[..., bool] = _always) -> Callable:
        """Decorator adding a fast backend; ``supports`` sees the call's arguments and says if it applies."""
        if name in (REFERENCE, AUTO) or name in self.backends:
            raise ValueError(f"backend name {name!r} is reserved or already registered for op {self.name!r}")

        def decorator(fn: Callable) -> Callable:
            self.backends[name] = Backend(name, fn, supports)
            return fn

        return decorator

    def available(self) -> list[str]:
        return [REFERENCE, *self.backends]

    def select(self, *args, backend: str | None = None, **kwargs) -> Callable:
        """The implementation that a call with these arguments would run."""
        choice = backend or _forced_backend.get() or os.environ.get("VZ_OPS_BACKEND") or AUTO
        if choice == REFERENCE:
            return self.reference
        if choice == AUTO:
            for candidate in self.backends.values():
                if candidate.supports(*args, **kwargs):
                    return candidate.fn
            return self.reference
        if choice not in self.backends:
            if backend is None:
                # A process- or block-wide choice names a backend that this op lacks: other ops may have it.
                return self.reference
            raise ValueError(
                f"op {self.name!r} has no backend {choice!r}; available: {', '.join(self.available())}"
            )
        chosen = self.backends[choice]
        if not chosen.supports(*args, **kwargs):
            if backend is None:
                return self.reference
            raise ValueError(f"backend {choice!r} of op {self.name!r} does not support these arguments")
        return chosen.fn

    def __call__(self, *args, backend: str | None = None, **kwargs):
        return self.select(*args, backend=backend, **kwargs)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={self.available()})"


def eager_cpu_inference(x: torch.Tensor, recorded: Iterable[torch.Tensor] = ()) -> bool:
    """True for a CPU call that no compiler or exporter traces and autograd does not record (``x`` and the
    ``recorded`` tensors, e.g. weights, need no gradient, or grad mode is off).

    Cache-sized chunking pays only there: compilers fuse the passes instead, GPUs want one launch, and under
    autograd the chunks' many small backward ops cost more than the cache saves.
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *recorded)))


def get_op(name: str) -> Op:
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(_OPS))}") from None


def list_ops() -> list[str]:
    return sorted(_OPS)


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force every op called inside the block to ``name`` where it has it (``'reference'`` always works)."""
    token = _forced_backend.set(name)
    try:
        yield
    finally:
        _forced_backend.reset(token)
