"""OAuth tokens as frozen values, and one single-flight refresher per token kind.

Databricks rejects a token in the last 30 s of its life, so a token is *unusable* 40 s before
it expires (databricks-sdk's rule) and is refreshed in the background well before that, so
that in steady state no request ever waits for a token. Fifty requests that find no usable
token cause exactly one fetch; a request rejected with 401/403 drops the token only if it is
still the current one, so a burst of rejections still causes one fetch.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from engine.calls import Caller, HostCheck, error_outcome, malformed
from engine.clock import Clock, Sleep
from engine.config import SDK_AUTH, Credentials
from engine.errors import AuthError, EngineError, TransportError
from engine.retry import Outcome, RetryPolicy, Tally
from engine.transport import Response, Transport

__all__ = ["OAuthClient", "Token", "TokenRefresher", "Who", "WorkspaceAuth", "connect"]

log = logging.getLogger("engine.auth")

#: Databricks refuses a token in the last 30 s of its life...
REFUSAL_MARGIN_S = 30.0
#: ...so never send one in its last 40 s.
USABLE_MARGIN_S = 40.0
#: The token endpoint is retried with backoff for about a minute (an identity provider's
#: routine blip lasts longer than a second or two).
TOKEN_RETRY_POLICY = RetryPolicy(
    max_attempts=12, base_delay_s=0.5, max_delay_s=10.0, max_elapsed_s=60.0
)

#: Refresh in the background this long before expiry at most (databricks-sdk: min(TTL/2, 20 min)).
MAX_REFRESH_LEAD_S = 20 * 60.0
#: ...and this long before the token becomes unusable (or half its usable life, if shorter).
MIN_REFRESH_HEADROOM_S = 10.0

#: A personal access token does not say when it expires: hand it out again after this long.
PAT_REUSE_S = 3600.0
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}



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


async def connect(
    transport: Transport,
    credentials: Credentials,
    *,
    timeout_s: float = 30.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> WorkspaceAuth:
    """The token source ``credentials`` describe (see :class:`~engine.config.Credentials`).

    Raises:
        UsageError: databricks-sdk is asked for but missing, or cannot configure itself.
    """
    oauth = OAuthClient(transport, credentials, timeout_s=timeout_s, clock=clock, sleep=sleep)
    if credentials.kind != SDK_AUTH:
        return oauth
    from engine.sdk_auth import SdkAuth

    return await SdkAuth.create(credentials, oauth, clock=clock)


class OAuthClient:
    """Fetches tokens from ``{host}/oidc/v1/token``.

    With a service principal (oauth-m2m) it mints both tokens itself; with a personal access
    token it hands the PAT out as the workspace token and refuses data-plane tokens; and
    :meth:`exchange` turns any workspace OAuth token into a data-plane token (jwt-bearer).
    Transient failures (timeouts, connection errors, 429, 5xx) are retried with backoff;
    a refusal (bad secret, missing permission) raises :class:`AuthError` at once.
    """

    def __init__(
        self,
        transport: Transport,
        credentials: Credentials,
        *,
        policy: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        host: str | None = None,
    ) -> None:
        self._transport = transport
        self._credentials = credentials
        self._policy = policy or TOKEN_RETRY_POLICY
        self._timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._host = host or credentials.host
        self.token_url = f"{self._host}/oidc/v1/token"
        self._check = HostCheck(self._host)

    @property
    def host(self) -> str:
        return self._host

    def for_host(self, host: str) -> OAuthClient:
        """The same client, for the workspace at ``host`` (as databricks-sdk resolved it)."""
        return OAuthClient(
            self._transport,
            self._credentials,
            policy=self._policy,
            timeout_s=self._timeout_s,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
            host=host,
        )

    async def workspace_token(self) -> Token:
        """A control-plane token: ``scope=all-apis`` for a service principal, else the PAT."""
        if self._credentials.kind == "pat":
            now = self._clock()
            return Token(self._credentials.token, issued_at=now, expires_at=now + PAT_REUSE_S)
        form = {"grant_type": "client_credentials", "scope": "all-apis"}
        return await self._token(form, None, self._basic_auth())

    async def data_plane_token(self, authorization_details: str, endpoint: str) -> Token:
        """An endpoint-scoped token for the route-optimized data plane (one-step flow).

        Raises:
            UsageError: only a personal access token is configured.
        """
        self._credentials.require_oauth()
        form = {
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "authorization_details": authorization_details,
        }
        return await self._token(form, endpoint, self._basic_auth())

    async def exchange(
        self, assertion: str, authorization_details: str, endpoint: str, *, who: Who
    ) -> Token:
        """A data-plane token for ``endpoint`` in exchange for a workspace OAuth token
        (the jwt-bearer grant databricks-sdk uses); ``who`` names the token's owner in errors."""
        form = {
            "grant_type": JWT_BEARER,
            "assertion": assertion,
            "authorization_details": authorization_details,
        }
        return await self._token(form, endpoint, _FORM_HEADERS, who=who)

    def _basic_auth(self) -> dict[str, str]:
        pair = f"{self._credentials.client_id}:{self._credentials.client_secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode(), **_FORM_HEADERS}

    async def _token(
        self,
        form: dict[str, str],
        endpoint: str | None,
        headers: dict[str, str],
        *,
        who: Who | None = None,
    ) -> Token:
        client_id = self._credentials.client_id
        who = who or Who(
            client=f"the OAuth client '{client_id}'",
            principal=f"service principal '{client_id}'",
            fix="check --client-id/--client-secret (DATABRICKS_CLIENT_ID/DATABRICKS_CLIENT_SECRET)",
        )
        sent_at = self._clock()

        async def send() -> Response:
            nonlocal sent_at
            sent_at = self._clock()
            try:
                response = await self._transport.request(
                    "POST", self.token_url, headers=headers, form=form, timeout_s=self._timeout_s
                )
            except TransportError as exc:
                self._check.failed(exc)
                raise
            self._check.answered = True
            return response

        async def judge(response: Response) -> Token | Outcome:
            if not response.ok:
                return _refusal_or_outcome(response, self._host, who, endpoint)
            try:
                return _parse_token(response, sent_at)
            except ValueError as exc:
                return malformed(response, f"the OAuth token endpoint answered 200 ({exc})")

        async def on_retry(outcome: Outcome, delay_s: float, tally: Tally) -> None:
            log.info("token request failed (%s); retrying in %.1f s", outcome.message, delay_s)

        def give_up(outcome: Outcome, tally: Tally) -> EngineError:
            return EngineError(
                f"the OAuth token endpoint {self.token_url} kept failing ({tally.attempts} "
                f"attempts; last: {outcome.message or outcome.brief}); try again later"
            )

        caller = Caller(self._policy, self._rng, self._clock, self._sleep)
        return await caller.call(send, judge, give_up=give_up, on_retry=on_retry)


def _parse_token(response: Response, sent_at: float) -> Token:
    """A token from a 200; ValueError for a body without one, AuthError for a lifetime too
    short to ever be used."""
    try:
        doc = orjson.loads(response.body)
        access_token = str(doc["access_token"])
        expires_in = float(doc.get("expires_in", 3600))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError("without a usable token") from exc
    if expires_in <= REFUSAL_MARGIN_S:
        raise AuthError(
            f"the OAuth token endpoint issues tokens valid for {expires_in:.0f} s, but "
            f"Databricks refuses a token in the last {REFUSAL_MARGIN_S:.0f} s of its life, so "
            "none could ever be used; configure the identity provider (or the emulator's "
            "--token-ttl) for tokens that live longer than a minute"
        )
    # Count the lifetime from when the request was sent: never later than the server did.
    return Token(access_token=access_token, issued_at=sent_at, expires_at=sent_at + expires_in)


@dataclass(frozen=True, slots=True)
class Who:
    """Whose token request it was, for error messages."""

    client: str  # "the OAuth client 'abc'"
    principal: str  # "service principal 'abc'"
    fix: str  # what to check when the workspace refuses the client


def _refusal_or_outcome(
    response: Response, host: str, who: Who, endpoint: str | None
) -> Outcome:
    """Raise AuthError for a refusal; return a retryable outcome otherwise."""
    outcome = error_outcome(response)
    error = outcome.error_code or ""
    description = outcome.message
    status = response.status
    if status == 429 or status >= 500:
        return outcome
    target = f"endpoint '{endpoint}'" if endpoint else "the workspace"
    if error == "invalid_client" or (status == 401 and error != "invalid_authorization_details"):
        raise AuthError(
            f"the workspace {host} refused {who.client} "
            f"({error or status}: {description or 'client authentication failed'}); {who.fix}",
            status=status,
            error=error or None,
        )
    if error in ("invalid_authorization_details", "access_denied") or status == 403:
        raise AuthError(
            f"{who.principal} may not query {target} "
            f"({error or status}: {description}); grant it CAN_QUERY on the endpoint "
            "(Serving > endpoint > Permissions)",
            status=status,
            error=error or None,
        )
    raise AuthError(
        f"the OAuth token endpoint refused the request of {who.principal} for {target}: "
        f"HTTP {status} "
        f"{error}: {description}",
        status=status,
        error=error or None,
    )
