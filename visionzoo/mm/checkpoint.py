"""Read mmengine's training checkpoints (``epoch_N.pth``/``iter_N.pth``) without running anything from them.

torch loads checkpoints with ``weights_only=True``, which refuses mmengine's files: their message hub
pickles ``HistoryBuffer`` objects, and each buffer carries its statistics methods as
``getattr(HistoryBuffer, 'mean')`` and the like. Allow-listing ``getattr`` itself is no answer: it reaches
any attribute of any reachable object (``getattr(getattr, '__self__')`` is the builtins module, and from
there ``eval``), and torch's own allow-listed ``_rebuild_from_type_v2`` calls what it is given.

So for one ``torch.load`` call two names these files use are bound to stand-ins that can only produce
data: ``HistoryBuffer`` to :class:`_PickledHistoryBuffer`, which keeps its state as plain values, and
``getattr`` to :func:`_statistic_name`, which answers only ``getattr(HistoryBuffer, <statistic>)`` and
answers with the statistic's name, not a function. Numpy's array, numeric dtype and scalar reconstructors
are the only other additions; they make arrays and numbers. After loading, every stand-in is rebuilt into
a real ``HistoryBuffer`` from its validated arrays. Nothing is allow-listed for any other load (the
backbone's ImageNet weights load as plain ``weights_only``).
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from mmengine.logging import MMLogger
from mmengine.logging.history_buffer import HistoryBuffer
from numpy._core.multiarray import _reconstruct, scalar

from visionzoo.models._checkpoint import CheckpointError

HISTORY_BUFFER_PATH = "mmengine.logging.history_buffer.HistoryBuffer"
STATISTICS = ("min", "max", "current", "mean")
NUMERIC_KINDS = "biuf"
TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")
# A pickled dtype is rebuilt as an instance of its own class (np.dtypes.Float64DType, ...); object dtypes stay out.
NUMERIC_DTYPE_TYPES = sorted(
    {type(np.dtype(code)) for code in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]},
    key=lambda dtype_type: dtype_type.__name__,
)


class _PickledHistoryBuffer:
    """Receives a pickled ``HistoryBuffer``'s state as data; :func:`_history_buffer` validates and rebuilds it."""

    def __setstate__(self, state) -> None:
        self.__dict__["pickled_state"] = state


def _statistic_name(owner, name):
    """Stands in for ``getattr`` while loading: only ``HistoryBuffer.<statistic>``, and only its name comes back."""
    if owner is _PickledHistoryBuffer and name in STATISTICS:
        return name
    stand_ins = ((_PickledHistoryBuffer, "HistoryBuffer"), (_statistic_name, "getattr"))
    shown = next((label for stand_in, label in stand_ins if owner is stand_in), type(owner).__name__)
    raise pickle.UnpicklingError(
        f"it calls getattr({shown}, {name!r}), and mmengine checkpoints call getattr only for HistoryBuffer's "
        f"statistics {', '.join(STATISTICS)}"
    )


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names what was refused, without its advice to turn the check off."""
    for line in str(error).splitlines():
        line = line.strip()
        if line and not line.startswith(TORCH_BOILERPLATE):
            return line.split(" Please use ")[0]
    return "objects torch's weights_only loading does not accept"


SAFE_GLOBALS = [
    (_PickledHistoryBuffer, HISTORY_BUFFER_PATH),
    (_statistic_name, "builtins.getattr"),
    _reconstruct,
    scalar,
    np.ndarray,
    np.dtype,
    *NUMERIC_DTYPE_TYPES,
]


def _numeric_vector(value, what: str, path) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in NUMERIC_KINDS:
        raise CheckpointError(f"{path} has a message-hub buffer whose {what} is not a numeric vector: {value!r:.80}")
    return value


def _history_buffer(pickled: _PickledHistoryBuffer, path) -> HistoryBuffer:
    state = pickled.__dict__.get("pickled_state")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} has a message-hub buffer without its state")
    log = _numeric_vector(state.get("_log_history"), "log history", path)
    count = _numeric_vector(state.get("_count_history"), "count history", path)
    max_length = state.get("max_length")
    if type(max_length) is not int or max_length < 1 or len(log) != len(count):
        raise CheckpointError(
            f"{path} has a malformed message-hub buffer (max_length {max_length!r}, {len(log)} values, "
            f"{len(count)} counts)"
        )
    return HistoryBuffer(log, count, max_length)


def _rebuild(obj, path):
    """Replace each stand-in by a real ``HistoryBuffer``, wherever the containers put it."""
    if isinstance(obj, _PickledHistoryBuffer):
        return _history_buffer(obj, path)
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _rebuild(value, path)
    elif isinstance(obj, list):
        obj[:] = [_rebuild(value, path) for value in obj]
    elif isinstance(obj, tuple):
        return tuple(_rebuild(value, path) for value in obj)
    return obj


def load_mmengine_checkpoint(filename: str | Path, map_location=None) -> dict:
    """Load an mmengine checkpoint (or a plain state dict) as data only; raise :class:`CheckpointError` otherwise.

    ``meta['config']``, which mmengine's resume would parse as a Python config (running it), is dropped.
    """
    path = Path(filename)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {filename} does not exist (only local files are read)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects that mmengine checkpoints do not "
            f"({_unpickler_reason(error)}). Nothing from the file was executed."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not an mmengine checkpoint or state dict")
    try:
        checkpoint = _rebuild(checkpoint, path)
    except RecursionError:
        raise CheckpointError(f"{path} nests its containers too deeply for an mmengine checkpoint") from None
    meta = checkpoint.get("meta")
    if isinstance(meta, dict) and "config" in meta:
        del meta["config"]
        MMLogger.get_current_instance().warning(
            f"ignored meta['config'] of {path}: mmengine would run it as a Python config file"
        )
    return checkpoint
