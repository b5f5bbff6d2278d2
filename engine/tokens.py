"""OAuth tokens as frozen values, and one single-flight refresher per token kind.

Where tokens come from (OAuth, a PAT, databricks-sdk) is :mod:`engine.auth`'s job; this
module knows only what a token is and when to replace it.

Databricks rejects a token in the last 30 s of its life, so a token is *unusable* 40 s before
it expires (databricks-sdk's rule) and is refreshed in the background well before that, so
that in steady state no request ever waits for a token. Fifty requests that find no usable
token cause exactly one fetch; a request rejected with 401/403 drops the token only if it is
still the current one, so a burst of rejections still causes one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.aio import cancel_and_drop
from engine.clock import Clock, Sleep
from engine.errors import EngineError

__all__ = ["REFUSAL_MARGIN_S", "Token", "TokenRefresher", "WorkspaceAuth"]

log = logging.getLogger("engine.auth")  # the name operators already filter on

#: Databricks refuses a token in the last 30 s of its life...
REFUSAL_MARGIN_S = 30.0
#: ...so never send one in its last 40 s.
USABLE_MARGIN_S = 40.0
#: Refresh in the background this long before expiry at most (databricks-sdk: min(TTL/2, 20 min)).
MAX_REFRESH_LEAD_S = 20 * 60.0
#: ...and this long before the token becomes unusable (or half its usable life, if shorter).
MIN_REFRESH_HEADROOM_S = 10.0


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and when it expires, on the refresher's monotonic clock.

    The token text is kept out of ``repr()`` so a token never reaches a log line by accident.
    """

    access_token: str = field(repr=False)
    issued_at: float
    expires_at: float

    @property
    def lifetime_s(self) -> float:
        return self.expires_at - self.issued_at

    @property
    def usable_until(self) -> float:
        """After this instant the token must not be sent."""
        # Very short lifetimes (tests, odd IdPs) keep a quarter of their life usable.
        return self.expires_at - min(USABLE_MARGIN_S, self.lifetime_s * 0.75)

    @property
    def refresh_at(self) -> float:
        """When the background refresher should replace this token."""
        lead = min(self.lifetime_s / 2, MAX_REFRESH_LEAD_S)
        usable_s = self.usable_until - self.issued_at
        headroom = min(MIN_REFRESH_HEADROOM_S, usable_s / 2)  # short tokens: not at birth
        return min(self.expires_at - lead, self.usable_until - headroom)

    def usable(self, now: float) -> bool:
        return now < self.usable_until

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class TokenRefresher:
    """Hands out a usable token; one fetch at a time, refreshed ahead of expiry.

    Args:
        fetch: coroutine function returning a fresh :class:`Token`.
        clock: monotonic seconds (injected in tests).
        sleep: awaitable sleep (injected in tests).
        name: what the token is for, in log lines.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Token]],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        name: str = "token",
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._sleep = sleep
        self._name = name
        self._token: Token | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self.fetches = 0

    @property
    def current(self) -> Token | None:
        return self._token

    async def get(self) -> Token:
        """A token usable now; fetches (once, for all waiters) when there is none."""
        token = self._token
        if token is not None and token.usable(self._clock()):
            return token
        return await self.refresh()

    async def refresh(self) -> Token:
        """Fetch a new token, joining a fetch already under way."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch_once())
        return await asyncio.shield(self._inflight)

    async def cancel_fetch(self) -> None:
        """Stop a fetch under way and wait until it has ended (its outcome dropped).

        Cancelling a caller of :meth:`get` leaves the shared fetch running (it is shielded
        for the other waiters): when no one will wait for it any more, this ends the request
        itself, so it cannot outlive the transport nor fail unobserved.
        """
        if self._inflight is not None:
            await cancel_and_drop(self._inflight)

    async def _fetch_once(self) -> Token:
        try:
            token = await self._fetch()
            self._token = token
            self.fetches += 1
            log.log(
                logging.INFO if self.fetches > 1 else logging.DEBUG,  # the first is no news
                "%s refreshed; valid for %.0f s",
                self._name,
                token.lifetime_s,
                extra={
                    "event": "token_refresh",
                    "fields": {"token": self._name, "lifetime_s": round(token.lifetime_s)},
                },
            )
            return token
        finally:
            self._inflight = None

    def invalidate(self, token: Token) -> None:
        """Drop ``token`` after the server rejected it, unless a newer one replaced it."""
        if self._token is token:
            self._token = None

    async def run_background(self, *, retry_after_s: float = 5.0) -> None:
        """Keep the token fresh until cancelled. Failures are logged and retried;
        requests that find no usable token fetch one themselves (and see the error)."""
        while True:
            token = self._token
            if token is None:
                await self._sleep(retry_after_s)
                continue
            await self._sleep(max(0.0, token.refresh_at - self._clock()))
            if self._token is not token:
                continue
            try:
                await self.refresh()
            except EngineError as exc:
                log.warning("background %s refresh failed, will retry: %s", self._name, exc)
                await self._sleep(retry_after_s)


class WorkspaceAuth(Protocol):
    """Where tokens come from: one for control-plane calls, one per endpoint's data plane."""

    @property
    def host(self) -> str: ...

    async def workspace_token(self) -> Token: ...

    async def data_plane_token(self, authorization_details: str, endpoint: str) -> Token: ...
