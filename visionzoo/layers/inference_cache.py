"""Tensors derived from a module's parameters (a table resampled to the input's grid, a thresholded basis), kept
between inference calls instead of being made again at every forward."""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch

Derived = TypeVar("Derived")


def _plain(key: object) -> bool:
    """Ints, floats, strings and tuples of them: a key that a symbolic trace has not turned into a proxy."""
    if isinstance(key, tuple):
        return all(_plain(item) for item in key)
    return isinstance(key, (int, float, str, bool))


def recording_a_graph() -> bool:
    """Whether this call may be recorded rather than only run: autograd on, or a trace, compile or export."""
    return (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting())


class InferenceCache:
    """At most ``max_entries`` derived values, one per key, each stamped with the version, storage, device and dtype
    of the tensors it was made from. :meth:`get` makes the value afresh, and keeps nothing, while a graph may be
    recorded (the value must carry its autograd history or appear in the traced graph) or when the key is not plain
    data; otherwise it returns the kept value unless a source changed since (an in-place update such as
    ``load_state_dict`` or an optimiser step bumps the version, ``.to()`` moves the storage). The least recently used
    key goes first, so that a detector's many input sizes keep only the latest few."""

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError(f"an InferenceCache holds at least one entry, got max_entries={max_entries}")
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[tuple, object]] = {}

    def get(self, key: Hashable, sources: Sequence[torch.Tensor], make: Callable[[], Derived]) -> Derived:
        if recording_a_graph() or not _plain(key):
            return make()
        stamp = tuple((source._version, source.data_ptr(), source.device, source.dtype) for source in sources)
        entry = self._entries.pop(key, None)
        if entry is None or entry[0] != stamp:
            entry = (stamp, make())
        self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        return entry[1]

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        return list(self._entries)
