"""Where tokens come from: the credential flows, and the bridge to databricks-sdk.

:func:`connect` picks the token source the credentials describe: :class:`OAuthClient` for a
service principal (oauth-m2m: both tokens minted at ``{host}/oidc/v1/token``) or a personal
access token (handed out as the workspace token; data-plane tokens refused), and
:class:`SdkAuth` for ``auth="databricks-sdk"``. What a token is and when it is replaced (the
single-flight refresher) is :mod:`engine.tokens`'.

The databricks-sdk bridge: ``Credentials(auth="databricks-sdk")`` (``--auth databricks-sdk``,
or DATABRICKS_AUTH_TYPE / a profile's ``auth_type`` naming one the engine does not handle
itself: ``databricks-cli``, ``azure-cli``, ``external-browser``, ``github-oidc``, ...)
resolves a ``databricks.sdk.core.Config`` from the profile and environment as the Databricks
CLI would. Its token authenticates control-plane calls; the endpoint-scoped data-plane token
is minted from it with the jwt-bearer exchange (the two-step flow databricks-sdk itself uses
for route-optimized endpoints). Needs ``pip install 'databricks-batch-engine[sdk]'``.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from engine.calls import Caller, HostCheck, error_outcome, malformed
from engine.clock import Clock, Sleep
from engine.config import PAT_ONLY_MESSAGE, SDK_AUTH, Credentials
from engine.errors import AuthError, EngineError, TransportError, UsageError
from engine.retry import Outcome, RetryPolicy, Tally
from engine.tokens import REFUSAL_MARGIN_S, Token, WorkspaceAuth
from engine.transport import Response, Transport

__all__ = ["OAuthClient", "SdkAuth", "Who", "connect"]

log = logging.getLogger("engine.auth")

#: The token endpoint is retried with backoff for about a minute (an identity provider's
#: routine blip lasts longer than a second or two).
TOKEN_RETRY_POLICY = RetryPolicy(
    max_attempts=12, base_delay_s=0.5, max_delay_s=10.0, max_elapsed_s=60.0
)
#: A personal access token does not say when it expires: hand it out again after this long.
PAT_REUSE_S = 3600.0
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
#: databricks-sdk refreshes its own token and does not say when it expires: ask it again
#: after this long (each ask is cheap while its cached token is fresh).
SDK_TOKEN_REUSE_S = 300.0


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
            fix="check `client_id`/`client_secret` (DATABRICKS_CLIENT_ID/DATABRICKS_CLIENT_SECRET)",
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


# --- databricks-sdk ------------------------------------------------------------------------


class SdkAuth:
    """Workspace tokens from databricks-sdk's ``Config``; data-plane tokens by exchange."""

    def __init__(self, config: Any, oauth: OAuthClient, *, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._oauth = oauth
        self._clock = clock
        auth_type = str(config.auth_type or "?")
        self._who = Who(
            client=f"the databricks-sdk login (auth type {auth_type})",
            principal=f"the databricks-sdk identity (auth type {auth_type})",
            fix="check the profile or run `databricks auth login` again",
        )

    @classmethod
    async def create(
        cls, credentials: Credentials, oauth: OAuthClient, *, clock: Clock = time.monotonic
    ) -> SdkAuth:
        """Resolve the SDK's configuration (it may read files or call the network).

        Raises:
            UsageError: databricks-sdk is not installed, or cannot configure itself.
        """
        try:
            from databricks.sdk.core import Config
        except ImportError:
            raise UsageError(
                "`auth='databricks-sdk'` needs databricks-sdk: "
                "pip install 'databricks-batch-engine[sdk]'"
            ) from None
        try:
            config = await asyncio.to_thread(
                Config, host=credentials.host or None, profile=credentials.profile
            )
        except ValueError as exc:  # the SDK's configuration errors are ValueErrors
            raise UsageError(f"databricks-sdk could not configure authentication: {exc}") from None
        host = str(config.host).rstrip("/")
        return cls(config, oauth.for_host(host), clock=clock)

    @property
    def host(self) -> str:
        return self._oauth.host

    async def workspace_token(self) -> Token:
        """The SDK's current token (it refreshes its own)."""
        try:
            headers = await asyncio.to_thread(self._config.authenticate)
        except ValueError as exc:
            raise AuthError(f"databricks-sdk could not authenticate: {exc}") from None
        value = str(headers.get("Authorization", ""))
        if not value.startswith("Bearer "):
            raise UsageError(
                f"databricks-sdk's auth type {self._config.auth_type!r} gives no bearer token; "
                "use an OAuth login (databricks auth login) or a service principal"
            )
        now = self._clock()
        token = value.removeprefix("Bearer ")
        return Token(token, issued_at=now, expires_at=now + SDK_TOKEN_REUSE_S)

    async def data_plane_token(self, authorization_details: str, endpoint: str) -> Token:
        """An endpoint-scoped token, exchanged for the SDK's workspace token (jwt-bearer).

        Raises:
            UsageError: the SDK's login is a personal access token, which cannot be exchanged.
        """
        if self._config.auth_type == "pat":
            raise UsageError(PAT_ONLY_MESSAGE)
        workspace = await self.workspace_token()
        return await self._oauth.exchange(
            workspace.access_token, authorization_details, endpoint, who=self._who
        )
