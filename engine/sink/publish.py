"""Atomic publish: rows go to a hidden temporary file or object beside the output, which
is moved into place only when complete (the rules are in :mod:`engine.sink`'s docstring).
"""

from __future__ import annotations

import os
import secrets
import tempfile

import pyarrow as pa
import pyarrow.fs as pafs

from engine.errors import EngineError, OutputExistsError
from engine.location import Location
from engine.sink.formats import Output

__all__ = [
    "S3_MAX_COPY_BYTES",
    "close_remote",
    "publish_local",
    "publish_remote",
    "remote_filesystem",
    "remote_stream",
    "remote_temp",
    "temp_beside",
]

S3_MAX_COPY_BYTES = 5 * 1024**3
"""The largest object S3 copies in one request (CopyObject), and so the largest output."""


def temp_beside(path: str | None, suffix: str = ".tmp") -> str:
    """A new hidden local file beside ``path`` (``None``: in the system's temp directory).

    Created with mode 0666 less the umask, like any file a program writes: the output is this
    file renamed, and mkstemp's 0600 would make it unreadable to the group that reads outputs.
    """
    if path is None:
        directory, name = tempfile.gettempdir(), "engine"
    else:
        directory, name = os.path.split(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def remote_filesystem(location: Location) -> pafs.FileSystem:
    assert location.filesystem is not None
    return location.filesystem


def remote_temp(location: Location) -> str:
    """A hidden key beside the output (same bucket, so the final copy stays server-side)."""
    parent, _, name = location.path.rpartition("/")
    return f"{parent}/.{name}.{secrets.token_hex(8)}.tmp"


def remote_stream(location: Location, tmp: str) -> pa.NativeFile:
    try:
        return remote_filesystem(location).open_output_stream(tmp, compression=None)
    except (pa.ArrowException, OSError) as exc:
        raise EngineError(f"cannot write beside {location.name}: {exc}") from exc


def close_remote(out: Output, location: Location) -> None:
    """Finish the upload of the temporary object (it is not the output yet)."""
    try:
        out.close(flush=True)
    except (pa.ArrowException, OSError) as exc:
        raise EngineError(f"cannot finish writing {location.name}: {exc}") from exc


def publish_remote(tmp: str, location: Location, *, overwrite: bool) -> None:
    """Move the finished temporary object to the output key (see the module docstring)."""
    filesystem = remote_filesystem(location)
    if not overwrite and location.info().type != pafs.FileType.NotFound:
        raise OutputExistsError(
            f"{location.name} appeared while the run was writing and was left untouched; "
            "pass `overwrite=True` to replace it"
        )
    try:
        try:
            filesystem.move(tmp, location.path)
        except pa.ArrowNotImplementedError:  # stores without a move (Azure flat namespace)
            filesystem.copy_file(tmp, location.path)
            filesystem.delete_file(tmp)
    except (pa.ArrowException, OSError) as exc:
        hint = _copy_limit_hint(filesystem, tmp)
        message = f"cannot move the finished output into {location.name}: {exc}{hint}"
        raise EngineError(message) from exc


def _copy_limit_hint(filesystem: pafs.FileSystem, tmp: str) -> str:
    if filesystem.type_name != "s3":
        return ""
    try:
        size = filesystem.get_file_info(tmp).size or 0
    except (pa.ArrowException, OSError):
        return ""
    if size <= S3_MAX_COPY_BYTES:
        return ""
    return (
        f"; the output is {size / 1024**3:.1f} GiB and S3 copies at most 5 GiB in one "
        "request: split the run with `shard='I/N'` so each output is smaller"
    )


def publish_local(tmp: str, path: str, *, overwrite: bool) -> None:
    """Move ``tmp`` to ``path``; without ``overwrite``, never replace an existing file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails atomically if ``path`` exists, unlike a rename
    except FileExistsError:
        raise OutputExistsError(
            f"{path} appeared while the run was writing and was left untouched; "
            "pass `overwrite=True` to replace it"
        ) from None
    except OSError:  # no hard links on this filesystem: check, then rename
        if os.path.lexists(path):
            raise OutputExistsError(f"{path} appeared while the run was writing") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)
