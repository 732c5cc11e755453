"""Training checkpoints that never lose work and load with ``torch.load(weights_only=True)``.

Files are written to a temporary name in the same folder, flushed to disk and renamed over the old file,
so a run killed at any instant leaves either the previous checkpoint or the new one, never a torn file.
RNG states are stored as tensors and plain numbers so that the safe loader accepts them.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from visionzoo.models._checkpoint import CheckpointError, read_checkpoint

TEMP_SUFFIX = ".tmp"
TRAINING_KEYS = ("model", "optimizer", "epoch", "step_in_epoch", "global_step", "per_rank", "config")


class CheckpointWriteError(CheckpointError):
    """A checkpoint or record could not be written; the previous file at that path was left as it was."""


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch's zip writer reports a short write as "unexpected pos" or "file write failed", without an errno.
    text = str(error)
    return isinstance(error, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


def _write_atomically(path: Path, write) -> None:
    """``write(handle)`` into a unique temporary beside ``path``, then rename it over ``path``.

    A unique temporary name keeps two writers from tearing each other's file; on any failure the temporary is
    removed, so a full disk is not kept full by the half-written file.
    """
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX, delete=False)
    tmp = Path(handle.name)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):
            if _disk_full(error):
                raise CheckpointWriteError(
                    f"could not write {path}: the disk holding {path.parent} is full. {path.name} was left as it "
                    f"was; free some space and continue with --resume auto"
                ) from error
            raise CheckpointWriteError(f"could not write {path} ({error}); {path.name} was left as it was") from error
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def atomic_save(obj, path: str | Path) -> None:
    _write_atomically(Path(path), lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> None:
    _write_atomically(Path(path), lambda handle: handle.write(text.encode()))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that a killed writer left in ``folder`` (call only while holding its lock)."""
    stale = [path for path in Path(folder).glob(f".*{TEMP_SUFFIX}") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class OutputLock:
    """An exclusive lock on a run folder, held until :meth:`release` or the process ends.

    ``flock`` is released by the kernel when its holder dies, so a killed run never blocks the next one.
    """

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise CheckpointWriteError(
                f"{folder} is in use by another run (process {holder}); wait for it to finish or choose "
                f"another --output"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain types."""
    version, python_words, gauss_next = random.getstate()
    bit_generator, numpy_words, numpy_pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": {
            "version": version, "state": torch.tensor(python_words, dtype=torch.int64), "gauss_next": gauss_next
        },
        "numpy": {
            "bit_generator": bit_generator,
            "state": torch.from_numpy(numpy_words.astype(np.int64)),
            "pos": int(numpy_pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["bit_generator"],
            numpy["state"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``visionzoo train``, read by the safe loader; anything else is refused clearly."""
    path = Path(path)
    state = read_checkpoint(path)
    missing = [key for key in TRAINING_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it is not a visionzoo training checkpoint (it lacks {', '.join(missing)}; "
            f"a plain state dict holds weights only). To start a new run from its weights, pass "
            f"model.checkpoint={path} instead of --resume"
        )
    return state
