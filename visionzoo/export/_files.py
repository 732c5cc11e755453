"""Atomic output: an export is written under a temporary name beside its target and renamed when complete."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class ExportError(ValueError):
    """An export was asked for something impossible (unknown format, unwritable path, bad arguments)."""


def check_writable(path: Path) -> None:
    """Raise ExportError unless ``path`` can be created: its folder exists or can be made, and is writable."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create the output folder {folder}: {error.strerror}; choose another --out") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to {folder} (permission denied); choose another --out")
    if path.exists() and path.is_dir() != (path.suffix == ".mlpackage"):
        raise ExportError(f"{path} exists and is a {'folder' if path.is_dir() else 'file'}; choose another --out")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


class StagedOutput:
    """An export being written under a temporary name beside its target; :meth:`commit` moves it into place."""

    def __init__(self, path: Path, temp: Path):
        self.path = path
        self.temp = temp

    def commit(self) -> None:
        if not self.temp.exists():
            raise ExportError(f"the exporter wrote nothing to {self.temp}")
        if self.path.is_dir():
            shutil.rmtree(self.path)
        os.replace(self.temp, self.path)


@contextlib.contextmanager
def staged_output(path: str | Path) -> Iterator[StagedOutput]:
    """A temporary path in ``path``'s folder, removed on leaving unless committed.

    The caller writes and checks the temporary file, then commits; an export that fails its checks is never
    committed, so an older export at ``path`` stays as it was.
    """
    path = Path(path)
    check_writable(path)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    temp.unlink()  # the writer creates it (some writers refuse to overwrite, .mlpackage is a folder)
    try:
        yield StagedOutput(path, temp)
    finally:
        _remove(temp)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on failure it is removed.

    Works for files and for folders (``.mlpackage``); a reader never sees a half-written file, and a
    failed write leaves nothing behind (an older file at ``path`` stays as it was).
    """
    with staged_output(path) as staged:
        yield staged.temp
        staged.commit()
