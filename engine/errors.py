"""One exception tree for the whole engine.

Every failure a user can meet is an ``EngineError``; aiohttp's and pyarrow's exceptions are
translated once, at the module that talks to them, with ``raise ... from exc``. Each error reads
well when printed to a person: what went wrong, with what, and what to do about it. None of them
ever carries a secret or a token.

::

    EngineError                      exit_code
    ├── UsageError                   2   bad flags, paths, config (found before any row is sent)
    │   ├── InputError               2   input missing, unreadable, unsupported format
    │   ├── OutputExistsError        2   output exists and --overwrite was not given
    │   ├── RunLocked                2   another live run is writing the same output
    │   └── SchemaError              2   input columns do not fit the endpoint's signature
    ├── AuthError                    2   token endpoint refused us (bad secret, no CAN_QUERY)
    ├── EndpointError                2   endpoint missing, not route-optimized, not ready
    │   └── EndpointNotReady         2   not READY within the time waited
    ├── TransportError               -   a request did not complete (reset, timeout); retried
    ├── HTTPStatusError              -   the server answered with an error status; may be retried
    ├── BatchFailed                  1   a batch gave up after its attempts, with the last cause
    ├── RunAborted                   1   the run stopped (too many rejected rows, ...)
    ├── StorageError                 1   the output or checkpoint could not be written (disk
    │                                    full, permission, read-only, vanished); resumable
    └── Interrupted                  130/143 stopped by SIGINT / SIGTERM; resumable

A failure met during a run carries the run's :class:`~engine.stats.Summary` so far in
``exc.summary`` (the CLI's ``--summary`` file and the Airflow XCom are written from it).
"""

from __future__ import annotations

import errno as errno_codes
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.stats import Summary

__all__ = [
    "AuthError",
    "BatchFailed",
    "EndpointError",
    "EndpointNotReady",
    "EngineError",
    "HTTPStatusError",
    "InputError",
    "Interrupted",
    "OutputExistsError",
    "RunAborted",
    "RunLocked",
    "SchemaError",
    "StorageError",
    "TransportError",
    "UsageError",
    "first_line",
    "storage_error",
]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code: int = 1
    #: the run's summary up to the failure, when the failure happened during a run
    summary: Summary | None = None


class UsageError(EngineError):
    """A mistake in how the engine was called, found before any row was sent."""

    exit_code = 2


class InputError(UsageError):
    """The input cannot be found, read, or is of an unsupported format."""


class OutputExistsError(UsageError):
    """The output path exists and overwriting was not asked for."""


class RunLocked(UsageError):
    """Another live run holds the lock for this output; nothing was sent."""


class SchemaError(UsageError):
    """The input does not fit the endpoint's model signature.

    Attributes:
        problems: one line per missing or incompatible column, expected vs found.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class AuthError(EngineError):
    """The OAuth token endpoint refused the credentials or the requested authorization."""

    exit_code = 2

    def __init__(
        self, message: str, *, status: int | None = None, error: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class EndpointError(EngineError):
    """The serving endpoint is missing, not route-optimized, or not ready."""

    exit_code = 2


class EndpointNotReady(EndpointError):
    """The endpoint did not become READY within the time the engine waited for it."""


class TransportError(EngineError):
    """A request did not complete: connection refused or reset, or a timeout.

    Attributes:
        kind: "connect" (never reached the server), "reset" (connection dropped after the
            request went out, so the model may have run) or "timeout".
        url: where the request was going (never with credentials).
        cause: for "connect", why: "dns", "refused", "tls" or None (other).
    """

    def __init__(
        self, message: str, *, kind: str = "reset", url: str = "", cause: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url
        self.cause = cause

    @property
    def maybe_processed(self) -> bool:
        """True when the server may have run the model before the failure."""
        return self.kind != "connect"


class HTTPStatusError(EngineError):
    """The server answered with a non-2xx status.

    Attributes:
        status: the HTTP status code.
        error_code: Databricks' ``error_code`` (or OAuth ``error``) when the body had one.
        server_message: the server's ``message`` / ``error_description``, or the body's start.
        retry_after_s: the parsed ``Retry-After`` header in seconds, if any.
    """

    def __init__(
        self,
        status: int,
        server_message: str,
        *,
        error_code: str | None = None,
        retry_after_s: float | None = None,
        url: str = "",
    ) -> None:
        where = f" from {url}" if url else ""
        code = f" {error_code}" if error_code else ""
        super().__init__(f"HTTP {status}{code}{where}: {server_message}")
        self.status = status
        self.error_code = error_code
        self.server_message = server_message
        self.retry_after_s = retry_after_s


class BatchFailed(EngineError):
    """A batch gave up after its bounded attempts."""

    def __init__(
        self,
        message: str,
        *,
        batch_id: int,
        rows: int,
        attempts: int,
        status: int | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.rows = rows
        self.attempts = attempts
        self.status = status
        self.server_message = server_message


class RunAborted(EngineError):
    """The run was stopped on purpose (for example ``--max-error-rows`` was exceeded)."""


class StorageError(EngineError):
    """The output, the checkpoint or the run lock could not be written (or read back).

    Attributes:
        path: the file or directory the engine was working on.
        errno: the operating system's error number, when there was one.
    """

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


_STORAGE_FIXES = {
    errno_codes.ENOSPC: "free space on that filesystem",
    errno_codes.EDQUOT: "free space or raise the disk quota",
    errno_codes.EACCES: "give this user write permission there, or choose another path",
    errno_codes.EPERM: "give this user write permission there, or choose another path",
    errno_codes.EROFS: "the filesystem is read-only: remount it read-write or choose another path",
    errno_codes.ENOENT: "the directory was removed during the run: recreate it",
    errno_codes.ESTALE: "the network filesystem dropped the file: check the mount",
    errno_codes.EFBIG: "a file-size limit was reached (ulimit -f): raise it",
    errno_codes.EIO: "the disk reported an I/O error: check it",
}


def storage_error(action: str, path: str, exc: BaseException) -> StorageError:
    """``cannot {action} {path}: {cause} ({ERRNO}); {fix}`` for an OSError met on ``path``."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code:
        cause = f"{os.strerror(code)} ({errno_codes.errorcode.get(code, code)})"
    else:
        cause = str(exc) or type(exc).__name__
        code = None
    fix = _STORAGE_FIXES.get(code or 0, "fix that")
    return StorageError(f"cannot {action} {path}: {cause}; {fix}", path=path, errno=code)


class Interrupted(EngineError):
    """The run was stopped by a signal; finished batches are checkpointed."""

    def __init__(self, message: str, *, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """An error's first line, cut to ``limit`` characters (pyarrow, delta-rs and polars
    messages run on for many lines)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if limit is None or len(line) <= limit:
        return line
    return line[: limit - 3] + "..."
