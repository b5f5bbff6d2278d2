"""Local writes: refuse a file that could not be written, before a run starts; make writes
durable (fsync a file, and the directory a rename happened in); tell a FUSE mount (an object
store behind a local path) from a disk."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from engine.errors import UsageError

__all__ = ["check_writable_file", "filesystem_type", "fsync_directory", "fsync_path"]

MOUNTINFO = Path("/proc/self/mountinfo")


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


def filesystem_type(path: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """The type of the filesystem ``path`` is on (``ext4``, ``fuse``, ``fuse.s3fs``...), from
    ``mountinfo`` (``/proc/self/mountinfo`` when not given); None where that cannot be read
    (not Linux)."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mountinfo.splitlines():
        fields, _, after = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not after:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, after.split()[0]
    return kind
