"""One dispatcher for every op: a plain-PyTorch reference plus fast backends that declare where they run.

Each op is an :class:`Op`. A backend joins it with :meth:`Op.register`, declaring its ``priority``, the
``devices`` it runs on, the packages it ``requires`` (looked up once with ``importlib.util.find_spec``), whether
it is ``portable`` (standard ATen ops only, so ``torch.export`` carries it to every export target) and whether
autograd runs through it (``differentiable``). In auto mode a call runs the highest-priority backend that runs
on the input's device, whose packages import, and whose ``supports(*args, **kwargs)`` accepts the call;
otherwise the reference.

The choice can be forced per call (``backend=``), per block (``with use_backend('reference')``) or per process
(``VZ_OPS_BACKEND``). ``with portable_only():`` restricts auto mode to portable backends, which is how export
asks for them, ``with record_backends() as ran:`` notes which backend each op ran (bench reports it), and
``with record_calls() as calls:`` keeps every eager call's arguments (``bench --ops`` replays them per backend).

Ops are FX leaves: under ``torch.fx.symbolic_trace`` (and timm's or torchvision's feature extractors) an op call
becomes one ``call_function`` node, so the dispatcher's Python checks stay out of the traced graph and run when
the graph runs. :func:`trace_leaf` does the same for the shape helpers next to the ops.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from timm.layers import register_notrace_function

REFERENCE = "reference"
AUTO = "auto"
ENV_VARIABLE = "VZ_OPS_BACKEND"

_forced_backend: ContextVar[str | None] = ContextVar("vz_forced_backend", default=None)
_portable_only: ContextVar[bool] = ContextVar("vz_portable_only", default=False)
_recorder: ContextVar[dict[str, list[str]] | None] = ContextVar("vz_backend_recorder", default=None)
_call_recorder: ContextVar[list[tuple[str, tuple, dict]] | None] = ContextVar("vz_call_recorder", default=None)
_OPS: dict[str, "Op"] = {}


@functools.lru_cache(maxsize=None)
def package_importable(name: str) -> bool:
    """Whether ``import name`` would find the package (without importing it), looked up once per process."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        return False


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    supports: Callable[..., bool]
    priority: int
    devices: frozenset[str] | None  # device types (``'cpu'``, ``'cuda'``, ...); None: every device
    requires: tuple[str, ...]
    portable: bool
    differentiable: bool
    importable: bool = field(init=False)

    def __post_init__(self):
        # Resolved at registration, not per call: the lookup stays out of compiled graphs.
        object.__setattr__(self, "importable", all(package_importable(name) for name in self.requires))

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices


@dataclass(frozen=True)
class Sample:
    """One call of an op for the contract test: ``op(*args, **kwargs)``."""

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


def seeded_randn(seed: int = 0) -> Callable[..., torch.Tensor]:
    """``torch.randn`` on one seeded CPU generator: sample inputs come out the same in every run."""
    generator = torch.Generator().manual_seed(seed)
    return functools.partial(torch.randn, generator=generator)


def _always(*args, **kwargs) -> bool:
    return True


def _find_proxy(args: tuple, kwargs: dict) -> torch.fx.Proxy | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.fx.Proxy):
            return value
    return None


def trace_leaf(fn: Callable) -> Callable:
    """``fn`` as an FX leaf: called with an FX proxy it records one ``call_function`` node instead of being traced.

    Also registered with timm's ``register_notrace_function``, so timm's FX feature extraction agrees.
    """

    @functools.wraps(fn)
    def leaf(*args, **kwargs):
        proxy = _find_proxy(args, kwargs)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", leaf, args, kwargs)
        return fn(*args, **kwargs)

    return register_notrace_function(leaf)


def _device_type(args: tuple, kwargs: dict) -> str:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"


def known_backends() -> list[str]:
    """Every name a forced choice may take: ``auto``, ``reference`` and each backend some op has."""
    names = {name for op in _OPS.values() for name in op.backends}
    return [AUTO, REFERENCE, *sorted(names)]


def check_backend_name(name: str, setting: str = "backend ") -> str:
    """``name`` if some op has it (or it is ``auto`` / ``reference``); otherwise a ValueError listing the valid ones.

    ``setting`` says where the name came from in the message, e.g. ``'--ops-backend '`` or ``'VZ_OPS_BACKEND='``.
    """
    valid = known_backends()
    if name not in valid:
        raise ValueError(f"{setting}{name!r} names no ops backend; valid backends: {', '.join(valid)}")
    return name


def environment_backend() -> str | None:
    """The process-wide choice from ``VZ_OPS_BACKEND`` (None when unset); a name no op has is a ValueError."""
    name = os.environ.get(ENV_VARIABLE)
    return check_backend_name(name, f"{ENV_VARIABLE}=") if name else None


class Op:
    """A named op with a reference implementation and fast backends tried by priority."""

    def __init__(self, name: str, reference: Callable):
        if name in _OPS:
            raise ValueError(f"op {name!r} is already defined")
        self.name = name
        self.reference = reference
        self.backends: dict[str, Backend] = {}
        self._by_priority: list[Backend] = []
        self._samples: Callable[[], list[Sample]] | None = None
        self.dense_baseline: Callable | None = None
        # What an FX graph that calls this op prints and imports it by.
        self.__name__ = self.__qualname__ = name
        self.__module__ = reference.__module__
        self.__doc__ = reference.__doc__
        _OPS[name] = self
        register_notrace_function(self)

    def register(
        self,
        name: str,
        *,
        priority: int,
        devices: Iterable[str] | None = None,
        requires: Iterable[str] = (),
        portable: bool,
        differentiable: bool = True,
        supports: Callable[..., bool] = _always,
    ) -> Callable:
        """Decorator adding a backend (see the module docstring for what each declaration means).

        ``supports`` sees the call's arguments and says if the backend computes it (or, for a backend that runs
        everywhere but pays off only on some devices, if it is worth running).
        """
        if name in (REFERENCE, AUTO) or name in self.backends:
            raise ValueError(f"backend name {name!r} is reserved or already registered for op {self.name!r}")

        def decorator(fn: Callable) -> Callable:
            backend = Backend(name, fn, supports, priority, None if devices is None else frozenset(devices),
                              tuple(requires), portable, differentiable)
            self.backends[name] = backend
            self._by_priority = sorted(self.backends.values(), key=lambda b: -b.priority)  # ties: registration order
            return fn

        return decorator

    def sample_inputs(self, fn: Callable[[], list[Sample]]) -> Callable[[], list[Sample]]:
        """Decorator naming the function that builds this op's small contract-test calls (CPU tensors)."""
        self._samples = fn
        return fn

    def replaces(self, fn: Callable) -> Callable:
        """Decorator naming the dense computation this op stands in for in the dense model (same arguments), e.g.
        full attention for an attention over a subset of keys: ``bench --ops`` times it beside the backends."""
        self.dense_baseline = fn
        return fn

    def samples(self) -> list[Sample]:
        if self._samples is None:
            raise NotImplementedError(f"op {self.name!r} declares no sample inputs; add them with @op.sample_inputs")
        return self._samples()

    def available(self) -> list[str]:
        return [REFERENCE, *self.backends]

    def implementation(self, name: str) -> Callable:
        """The function behind ``name`` (the reference or a backend), with no checks: for tests and tools."""
        return self.reference if name == REFERENCE else self.backends[name].fn

    def _refusal(self, backend: Backend, device_type: str, args: tuple, kwargs: dict) -> str | None:
        """Why ``backend`` cannot run this call, or None if it can."""
        what = f"backend {backend.name!r} of op {self.name!r}"
        if not backend.runs_on(device_type):
            return f"{what} runs on {', '.join(sorted(backend.devices))}, not {device_type}"
        if not backend.importable:
            missing = [name for name in backend.requires if not package_importable(name)]
            return f"{what} needs the package(s) {', '.join(missing)}: pip install {' '.join(missing)}"
        if _portable_only.get() and not backend.portable:
            return f"{what} is not portable, and this code runs for an export that takes portable backends only"
        if not backend.supports(*args, **kwargs):
            return f"{what} does not support these arguments"
        return None

    def _choose(self, args: tuple, kwargs: dict, backend: str | None) -> tuple[str, Callable]:
        choice = backend or _forced_backend.get() or environment_backend() or AUTO
        if choice == REFERENCE:
            return REFERENCE, self.reference
        device_type = _device_type(args, kwargs)
        if choice != AUTO:
            chosen = self.backends.get(choice)
            if chosen is None:
                if backend is not None:
                    raise ValueError(
                        f"op {self.name!r} has no backend {choice!r}; available: {', '.join(self.available())}"
                    )
                # A process- or block-wide choice names a backend that this op lacks: other ops may have it.
                return REFERENCE, self.reference
            refusal = self._refusal(chosen, device_type, args, kwargs)
            if refusal is None:
                return choice, chosen.fn
            if backend is not None:
                raise ValueError(refusal)
            return REFERENCE, self.reference
        for candidate in self._by_priority:
            if self._refusal(candidate, device_type, args, kwargs) is None:
                return candidate.name, candidate.fn
        return REFERENCE, self.reference

    def select(self, *args, backend: str | None = None, **kwargs) -> Callable:
        """The implementation that a call with these arguments would run."""
        return self._choose(args, kwargs, backend)[1]

    def __call__(self, *args, backend: str | None = None, **kwargs):
        proxy = _find_proxy(args, kwargs)
        if proxy is not None:
            if backend is not None:
                kwargs = {**kwargs, "backend": backend}
            return proxy.tracer.create_proxy("call_function", self, args, kwargs)
        name, fn = self._choose(args, kwargs, backend)
        calls = _call_recorder.get()
        if calls is not None and not torch.compiler.is_compiling():
            calls.append((self.name, args, kwargs))
        ran = _recorder.get()
        if ran is not None and not torch.compiler.is_compiling():
            names = ran.setdefault(self.name, [])
            if name not in names:
                names.append(name)
        return fn(*args, **kwargs)

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
    """Force every op called inside the block to ``name`` where it has it and can run the call, else the reference.

    ``'reference'`` always works, ``'auto'`` restores priority order (over ``VZ_OPS_BACKEND`` too), and None
    leaves the choice to the enclosing block. A name that no op has is refused with the valid ones.
    """
    if name is not None:
        check_backend_name(name)
    token = _forced_backend.set(name)
    try:
        yield
    finally:
        _forced_backend.reset(token)


@contextlib.contextmanager
def portable_only(enabled: bool = True) -> Iterator[None]:
    """Restrict the ops called inside the block to portable backends (and the reference): export uses this."""
    token = _portable_only.set(enabled)
    try:
        yield
    finally:
        _portable_only.reset(token)


@contextlib.contextmanager
def record_backends() -> Iterator[dict[str, list[str]]]:
    """Collect, per op name, the backends that eager calls inside the block ran (in first-run order).

    Calls traced by ``torch.compile`` are not recorded: the choice there is the one eager mode makes.
    """
    ran: dict[str, list[str]] = {}
    token = _recorder.set(ran)
    try:
        yield ran
    finally:
        _recorder.reset(token)


@contextlib.contextmanager
def record_calls() -> Iterator[list[tuple[str, tuple, dict]]]:
    """Collect ``(op name, args, kwargs)`` of every eager op call inside the block, in call order (the tensors
    themselves, not copies: run the block under ``torch.no_grad()`` or ``inference_mode`` to keep it cheap)."""
    calls: list[tuple[str, tuple, dict]] = []
    token = _call_recorder.set(calls)
    try:
        yield calls
    finally:
        _call_recorder.reset(token)
