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
    │   └── SchemaError              2   input columns do not fit the endpoint's signature
    ├── AuthError                    2   token endpoint refused us (bad secret, no CAN_QUERY)
    ├── EndpointError                2   endpoint missing, not route-optimized, not ready
    ├── TransportError               -   a request did not complete (reset, timeout); retried
    ├── HTTPStatusError              -   the server answered with an error status; may be retried
    ├── BatchFailed                  1   a batch gave up after its attempts, with the last cause
    ├── RunAborted                   1   the run stopped (too many rejected rows, ...)
    └── Interrupted                  130/143 stopped by SIGINT / SIGTERM; resumable
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BatchFailed",
    "EndpointError",
    "EngineError",
    "HTTPStatusError",
    "InputError",
    "Interrupted",
    "OutputExistsError",
    "RunAborted",
    "SchemaError",
    "TransportError",
    "UsageError",
]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code: int = 1


class UsageError(EngineError):
    """A mistake in how the engine was called, found before any row was sent."""

    exit_code = 2


class InputError(UsageError):
    """The input cannot be found, read, or is of an unsupported format."""


class OutputExistsError(UsageError):
    """The output path exists and overwriting was not asked for."""


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


class TransportError(EngineError):
    """A request did not complete: connection refused or reset, or a timeout.

    Attributes:
        kind: "connect" (never reached the server), "reset" (connection dropped after the
            request went out, so the model may have run) or "timeout".
        url: where the request was going (never with credentials).
    """

    def __init__(self, message: str, *, kind: str = "reset", url: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url

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


class Interrupted(EngineError):
    """The run was stopped by a signal; finished batches are checkpointed."""

    def __init__(self, message: str, *, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
