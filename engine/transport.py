"""The only module that imports aiohttp's client; it maps aiohttp's errors once.

One pooled session (keep-alive, a capped connection pool) carries every request of a run:
token fetches, control-plane calls and data-plane invocations. Callers get a plain
:class:`Response` or an :class:`~engine.errors.TransportError`; nothing aiohttp leaks out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine.errors import TransportError

__all__ = ["Response", "Transport"]


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Transport:
    """A pooled HTTP client with timeouts; safe to share between tasks.

    Args:
        max_connections: connections kept open at once (the pool's cap).
        connect_timeout_s: time to establish a connection.
        request_timeout_s: default total time for one request, response included.
    """

    def __init__(
        self,
        *,
        max_connections: int = 64,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 330.0,
    ) -> None:
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_connections,
                ttl_dns_cache=300,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=self._request_timeout_s,
                    sock_connect=self._connect_timeout_s,
                ),
                # Responses are parsed by the codec, never by aiohttp.
                auto_decompress=True,
                raise_for_status=False,
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        form: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """Send one request and read the whole response.

        Raises:
            TransportError: the connection failed, dropped, or timed out; ``kind`` says which.
        """
        body: object = dict(form) if form is not None else data
        # aiohttp reads an explicit ``timeout=None`` as "no timeout at all": leave it out to
        # keep the session's bound, so no request can wait forever.
        options: dict[str, Any] = {}
        if timeout_s:
            options["timeout"] = aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=self._connect_timeout_s
            )
        try:
            async with self._client().request(
                method, url, headers=headers, data=body, **options
            ) as resp:
                payload = await resp.read()
                # The headers as aiohttp has them: case-insensitive (proxies send retry-after).
                return Response(resp.status, payload, resp.headers)
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(
                f"cannot connect to {_origin(url)}: {exc.os_error}",
                kind="connect",
                url=url,
                cause=_connect_cause(exc),
            ) from exc
        except TimeoutError as exc:
            raise TransportError(
                f"request to {_origin(url)} timed out", kind="timeout", url=url
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"connection to {_origin(url)} failed: {type(exc).__name__}: {exc}",
                kind="reset",
                url=url,
            ) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _connect_cause(exc: aiohttp.ClientConnectorError) -> str | None:
    """Why a connection failed, where it says the host is misconfigured."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "refused"
    return None


def _origin(url: str) -> str:
    """``scheme://host:port`` only: never echo paths or query strings into messages."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
