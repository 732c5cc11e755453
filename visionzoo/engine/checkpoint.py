"""Training checkpoints that never lose work and load with ``torch.load(weights_only=True)``.

Files are written to a temporary name in the same folder, flushed to disk and renamed over the old file,
so a run killed at any instant leaves either the previous checkpoint or the new one, never a torn file.
RNG states are stored as tensors and plain numbers so that the safe loader accepts them.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot resume: checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)
