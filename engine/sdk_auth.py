"""Control-plane auth by databricks-sdk, so every auth type it supports works here too.

``Credentials(auth="databricks-sdk")`` (``--auth databricks-sdk``, or DATABRICKS_AUTH_TYPE /
a profile's ``auth_type`` naming one the engine does not handle itself: ``databricks-cli``,
``azure-cli``, ``external-browser``, ``github-oidc``, ...) resolves a ``databricks.sdk.core.Config``
from the profile and environment as the Databricks CLI would. Its token authenticates
control-plane calls; the endpoint-scoped data-plane token is minted from it with the
jwt-bearer exchange (the two-step flow databricks-sdk itself uses for route-optimized
endpoints). Needs ``pip install 'databricks-batch-engine[sdk]'``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.auth import OAuthClient, Token, Who
from engine.clock import Clock
from engine.config import PAT_ONLY_MESSAGE, Credentials
from engine.errors import AuthError, UsageError

__all__ = ["SdkAuth"]

#: databricks-sdk refreshes its own token and does not say when it expires: ask it again
#: after this long (each ask is cheap while its cached token is fresh).
SDK_TOKEN_REUSE_S = 300.0


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
                "--auth databricks-sdk needs databricks-sdk: "
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
