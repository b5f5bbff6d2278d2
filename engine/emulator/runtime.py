"""The emulator's live state: endpoints with their lifecycle, faults and counters; tokens;
and the authentication rules shared by both planes. No aiohttp here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from engine.emulator.accounting import Accounting, EndpointAccounting
from engine.emulator.apierror import ApiError
from engine.emulator.clock import Clock, Sleep
from engine.emulator.config import EmulatorConfig, EndpointConfig, Faults, ServicePrincipal
from engine.emulator.lifecycle import EndpointState, Lifecycle
from engine.emulator.models import Model
from engine.emulator.plan import TokenBucket
from engine.emulator.tokens import IssuedToken, TokenStore, TokenVerdict, bearer, verdict_error

__all__ = ["EmulatorState", "EndpointRuntime"]

_QUERY_LEVELS = ("CAN_QUERY", "CAN_MANAGE")


@dataclass
class EndpointRuntime:
    """One endpoint's live state."""

    config: EndpointConfig
    model: Model
    lifecycle: Lifecycle
    faults: Faults
    accounting: EndpointAccounting
    bucket: TokenBucket | None = None
    slots: asyncio.Semaphore | None = None
    requests_seen: int = 0
    _bucket_key: tuple[float, float] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self.config.name

    @property
    def endpoint_id(self) -> str:
        """The endpoint's 32-hex id."""
        return self.config.endpoint_id()

    def next_request_number(self) -> int:
        """Number the next data-plane request (0, 1, 2, ...) for the fault plan."""
        number = self.requests_seen
        self.requests_seen += 1
        return number

    def set_faults(self, faults: Faults, now: float) -> None:
        """Apply new faults; the QPS bucket and concurrency slots follow them."""
        self.faults = faults
        if faults.qps_limit is None:
            self.bucket, self._bucket_key = None, None
        else:
            burst = faults.qps_burst if faults.qps_burst is not None else max(1.0, faults.qps_limit)
            if self._bucket_key != (faults.qps_limit, burst):
                self.bucket = TokenBucket(faults.qps_limit, burst, now)
                self._bucket_key = (faults.qps_limit, burst)
        self.slots = asyncio.Semaphore(faults.max_concurrency) if faults.max_concurrency else None

    def throttle_wait(self, now: float) -> float:
        """0.0 when the QPS limit lets a request in, else seconds until it would."""
        return 0.0 if self.bucket is None else self.bucket.take(now)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one concurrency slot: wait for it, or 429 in ``"429"`` mode when none is free."""
        slots = self.slots
        if slots is None:
            yield
            return
        if self.faults.concurrency_mode == "429" and slots.locked():
            raise ApiError(
                429,
                "REQUEST_LIMIT_EXCEEDED",
                f"Exceeded the provisioned concurrency of {self.faults.max_concurrency} "
                f"for endpoint {self.name}. Please retry later.",
            )
        async with slots:
            self.accounting.admit()
            try:
                yield
            finally:
                self.accounting.release()


class EmulatorState:
    """Everything the request handlers share."""

    def __init__(self, config: EmulatorConfig, clock: Clock, sleep: Sleep) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.tokens = TokenStore(config.token_ttl_s)
        self.accounting = Accounting.for_endpoints([e.name for e in config.endpoints])
        self.principals = {p.client_id: p for p in config.principals}
        for principal in config.principals:
            if principal.personal_access_token:
                self.tokens.add_personal(principal.personal_access_token, principal.client_id)
        self.token_faults = config.token_faults
        self.token_requests_seen = 0
        self.host = ""
        self.data_plane_host = ""
        self.endpoints = {e.name: self._runtime(e) for e in config.endpoints}
        self.by_id = {r.endpoint_id: r for r in self.endpoints.values()}

    def _runtime(self, config: EndpointConfig) -> EndpointRuntime:
        lifecycle = Lifecycle(
            stopped=config.start_stopped, start_duration_s=config.start_duration_s
        )
        runtime = EndpointRuntime(
            config=config,
            model=config.resolved_model(),
            lifecycle=lifecycle,
            faults=config.faults,
            accounting=self.accounting.endpoints[config.name],
        )
        runtime.set_faults(config.faults, self.clock())
        return runtime

    def endpoint(self, name: str) -> EndpointRuntime:
        """The endpoint called ``name``.

        Raises:
            ApiError: 404 ``RESOURCE_DOES_NOT_EXIST``.
        """
        runtime = self.endpoints.get(name)
        if runtime is None:
            raise ApiError(
                404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist."
            )
        return runtime

    def state_of(self, runtime: EndpointRuntime) -> EndpointState:
        """The endpoint's state now."""
        return runtime.lifecycle.state(self.clock())

    def endpoint_url(self, name: str) -> str:
        """The data-plane invocation URL of ``name``."""
        workspace = self.config.workspace_id
        return f"{self.data_plane_host}/{workspace}/serving-endpoints/{name}/invocations"

    def _token(self, authorization: str | None, runtime: EndpointRuntime | None) -> IssuedToken:
        now = self.clock()
        verdict, token = self.tokens.check(bearer(authorization) or "", now)
        if verdict in (TokenVerdict.EXPIRED, TokenVerdict.EXPIRING):
            self.accounting.expiring_token_requests += 1
            if runtime is not None:
                runtime.accounting.expiring_token_requests += 1
        error = verdict_error(verdict, token, now)
        if error is not None:
            raise error
        assert token is not None
        return token

    def authenticate_workspace(self, authorization: str | None) -> ServicePrincipal:
        """The principal behind a workspace token.

        Raises:
            ApiError: 401 for an unknown token, 403 for an expiring/expired or data-plane token.
        """
        token = self._token(authorization, None)
        if token.kind != "workspace":
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                "A data-plane token cannot call workspace APIs; "
                "use a workspace OAuth token (scope all-apis).",
            )
        return self.principals[token.client_id]

    def authenticate_data_plane(self, authorization: str | None, runtime: EndpointRuntime) -> None:
        """Accept only a live data-plane token scoped to this endpoint.

        Raises:
            ApiError: 401 unknown token; 403 expiring/expired, workspace, or other-endpoint token.
        """
        token = self._token(authorization, runtime)
        if token.personal:
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                "Personal access tokens are not accepted on the route-optimized data plane; "
                "use an OAuth token scoped to this endpoint.",
            )
        if token.kind != "data_plane":
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                "Workspace tokens are not accepted on the route-optimized "
                "data plane; exchange it for an endpoint-scoped token (authorization_details).",
            )
        if token.endpoint_id != runtime.endpoint_id:
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                f"This token is scoped to another endpoint, not {runtime.name}.",
            )

    def authenticate_workspace_query(
        self, authorization: str | None, runtime: EndpointRuntime
    ) -> None:
        """A workspace token whose principal may query this (non-route-optimized) endpoint.

        Raises:
            ApiError: 401/403 as :meth:`authenticate_workspace`, 403 without CAN_QUERY.
        """
        principal = self.authenticate_workspace(authorization)
        if principal.level(runtime.name) not in _QUERY_LEVELS:
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                f"Principal {principal.client_id} lacks CAN_QUERY on {runtime.name}.",
            )

    def snapshot(self, name: str | None = None) -> dict[str, Any]:
        """The accounting snapshot (see :class:`Accounting`)."""
        if name is not None:
            self.endpoint(name)
        return self.accounting.snapshot(name)
