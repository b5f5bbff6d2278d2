"""Making local writes durable: fsync a file, and the directory a rename happened in."""

from __future__ import annotations

import contextlib
import os

__all__ = ["fsync_directory", "fsync_path"]


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
