"""Local writes: refuse a file that could not be written, before a run starts; make writes
durable (fsync a file, and the directory a rename happened in)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from engine.errors import UsageError

__all__ = ["check_writable_file", "fsync_directory", "fsync_path"]


def check_writable_file(path: str | os.PathLike[str], what: str, example: str) -> Path:
    """Refuse a file path ``what`` (e.g. ``--report``) that could not be written: a directory,
    a missing directory, or one without write permission. ``example`` is a file name to
    suggest inside a directory."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{what} {path} is a directory; give a file, e.g. {path}/{example}")
    directory = target.parent
    if not directory.is_dir():
        raise UsageError(
            f"{what} {path}: directory {directory} does not exist; create it or choose "
            "another path"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: cannot write in {directory} (permission denied)")
    return target


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a directory's) data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable; skipped where directories cannot be opened
    (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
