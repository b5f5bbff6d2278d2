"""The error a request handler raises to answer with Databricks' ``{"error_code", "message"}``.

Pure: the web layer turns an :class:`ApiError` into a JSON response with the right status.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "OAuthError"]


class ApiError(Exception):
    """A REST error: ``status`` with body ``{"error_code": ..., "message": ..., **extra}``.

    Attributes:
        status: the HTTP status.
        error_code: Databricks' error code (``BAD_REQUEST``, ``RESOURCE_DOES_NOT_EXIST``, ...).
        message: a sentence for a person.
        extra: more body fields (``stack_trace``), and ``headers`` for response headers.
    """

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error_code": self.error_code, "message": self.message, **self.extra}


class OAuthError(Exception):
    """An OAuth token-endpoint error: ``{"error": ..., "error_description": ...}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        """The JSON body."""
        return {"error": self.error, "error_description": self.description}
