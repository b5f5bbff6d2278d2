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
from engine.emulator.gate import ConcurrencyGate
from engine.emulator.lifecycle import EndpointState, Lifecycle
from engine.emulator.mlflow import MlflowStore
from engine.emulator.models import Model
from engine.emulator.plan import Limits, TokenBucket, limits_at
from engine.emulator.tokens import IssuedToken, TokenStore, TokenVerdict, bearer, verdict_error

__all__ = ["ConcurrencyRefused", "EmulatorState", "EndpointRuntime"]

_QUERY_LEVELS = ("CAN_QUERY", "CAN_MANAGE")


@dataclass
class EndpointRuntime:
    """One endpoint's live state: its faults, the limits in force, and their bucket and gate."""

    config: EndpointConfig
    model: Model
    lifecycle: Lifecycle
    faults: Faults
    accounting: EndpointAccounting
    bucket: TokenBucket | None = None
    gate: ConcurrencyGate = field(default_factory=ConcurrencyGate)
    limits: Limits = field(default_factory=lambda: Limits(None, None, None))
    #: the emulator clock at the schedule's start (the first request after set_faults)
    schedule_started: float | None = None
    requests_seen: int = 0
    arrivals_seen: int = 0

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self.config.name

    @property
    def endpoint_id(self) -> str:
        """The endpoint's 32-hex id."""
        return self.config.endpoint_id()

    def next_request_number(self) -> int:
        """Number the next admitted data-plane request (0, 1, 2, ...) for the fault plan."""
        number = self.requests_seen
        self.requests_seen += 1
        return number

    def next_arrival_number(self) -> int:
        """Number the next request to reach the limits (0, 1, 2, ...) for random 429s."""
        number = self.arrivals_seen
        self.arrivals_seen += 1
        return number

    def set_faults(self, faults: Faults, now: float) -> None:
        """Apply new faults; their schedule starts again at the next request.

        A changed rate limit gets a fresh, full bucket (a new configuration); a schedule
        step retunes the bucket in place (see :meth:`refresh_limits`). The concurrency count
        carries over: requests already inside still hold their slots.
        """
        self.faults = faults
        self.schedule_started = None
        limits = limits_at(faults, 0.0)
        if limits.qps_limit is None or limits.qps_burst is None:
            self.bucket = None
        elif (limits.qps_limit, limits.qps_burst) != (self.limits.qps_limit, self.limits.qps_burst):
            self.bucket = TokenBucket(limits.qps_limit, limits.qps_burst, now)
        self.gate.set_limit(limits.max_concurrency)
        self.limits = limits

    def refresh_limits(self, now: float) -> Limits:
        """Start the schedule on the first call after :meth:`set_faults`; apply its step now."""
        if self.schedule_started is None:
            self.schedule_started = now
        if not self.faults.schedule:
            return self.limits
        limits = limits_at(self.faults, now - self.schedule_started)
        if limits != self.limits:
            self._retune(limits, now)
        return limits

    def _retune(self, limits: Limits, now: float) -> None:
        if limits.qps_limit is None or limits.qps_burst is None:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(limits.qps_limit, limits.qps_burst, now)
        else:
            self.bucket.retune(limits.qps_limit, limits.qps_burst, now)
        if limits.max_concurrency != self.limits.max_concurrency:
            self.gate.set_limit(limits.max_concurrency)
        self.limits = limits

    def refresh_limits_if_started(self, now: float) -> None:
        """Apply the schedule's step now, without starting the schedule."""
        if self.schedule_started is not None:
            self.refresh_limits(now)

    def throttle_wait(self, now: float) -> float:
        """0.0 when the QPS limit lets a request in, else seconds until it would."""
        return 0.0 if self.bucket is None else self.bucket.take(now)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one concurrency slot: wait in line, or ``ConcurrencyRefused`` in ``"429"`` mode."""
        if self.faults.concurrency_mode == "429":
            if not self.gate.try_enter():
                raise ConcurrencyRefused(self.limits.max_concurrency)
        else:
            await self.gate.enter()
        self.accounting.admit()
        try:
            yield
        finally:
            self.accounting.release()
            self.gate.leave()

    def limits_snapshot(self, now: float) -> dict[str, Any]:
        """The limits in force and the schedule's progress, for the accounting snapshot."""
        started = self.schedule_started
        return {
            "qps_limit": self.limits.qps_limit,
            "qps_burst": self.limits.qps_burst,
            "max_concurrency": self.limits.max_concurrency,
            "schedule_started_s": started,
            "schedule_elapsed_s": None if started is None else now - started,
        }


class ConcurrencyRefused(Exception):
    """No concurrency slot is free and the endpoint refuses rather than queues."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(f"concurrency cap {limit} reached")
        self.limit = limit


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
        #: set when the emulator stops: hanging requests are dropped then
        self.stopping = asyncio.Event()
        self.host = ""
        self.data_plane_host = ""
        self.endpoints = {e.name: self._runtime(e) for e in config.endpoints}
        self.by_id = {r.endpoint_id: r for r in self.endpoints.values()}
        self.mlflow = MlflowStore()

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
        """The accounting snapshot (see :class:`Accounting`), each endpoint with ``limits``
        (in force now, and the schedule's progress) and ``clock_s`` (the emulator's clock).
        """
        now = self.clock()
        if name is not None:
            runtime = self.endpoint(name)
            runtime.refresh_limits_if_started(now)
            return {**self.accounting.snapshot(name), **self._limits(runtime, now)}
        snapshot = self.accounting.snapshot()
        for runtime in self.endpoints.values():
            runtime.refresh_limits_if_started(now)
            snapshot["endpoints"][runtime.name].update(self._limits(runtime, now))
        snapshot["clock_s"] = now
        return snapshot

    @staticmethod
    def _limits(runtime: EndpointRuntime, now: float) -> dict[str, Any]:
        return {"limits": runtime.limits_snapshot(now), "clock_s": now}
