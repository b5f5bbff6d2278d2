"""Control-plane calls: endpoint state, its OpenAPI schema, starting it, waiting for READY.

Every call carries a workspace token from one :class:`~engine.tokens.TokenRefresher`, is retried
on transient failures, and turns Databricks' ``{"error_code", "message"}`` bodies into errors
that say what is wrong and what to do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from engine.calls import Caller, HostCheck, error_outcome, malformed
from engine.clock import Clock, Sleep
from engine.errors import (
    EndpointError,
    EndpointNotReady,
    EngineError,
    HTTPStatusError,
    TransportError,
)
from engine.retry import FailureKind, Outcome, Reason, RetryPolicy, Tally
from engine.schema import ModelSchema, parse_openapi
from engine.tokens import Token, TokenRefresher, WorkspaceAuth
from engine.transport import Response, Transport

__all__ = ["EndpointInfo", "Workspace"]

log = logging.getLogger("engine.workspace")

#: Bound on one control-plane request.
CONTROL_PLANE_TIMEOUT_S = 60.0
#: Polling a not-ready endpoint: start fast, settle at this interval.
POLL_MIN_S = 1.0
POLL_MAX_S = 15.0


@dataclass(frozen=True, slots=True)
class ServedEntity:
    name: str
    entity_name: str | None
    entity_version: str | None
    deployment: str | None


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What the engine needs to know about a serving endpoint."""

    name: str
    id: str
    route_optimized: bool
    endpoint_url: str | None
    authorization_details: str | None
    ready: str
    config_update: str
    config_version: str | None
    served_entities: tuple[ServedEntity, ...]
    traffic: tuple[tuple[str, int], ...]
    permission_level: str | None
    raw: Mapping[str, Any]

    @property
    def is_ready(self) -> bool:
        return self.ready == "READY" and self.config_update not in ("IN_PROGRESS",)

    @property
    def state_text(self) -> str:
        return f"ready={self.ready}, config_update={self.config_update}"

    @property
    def model_version_key(self) -> str:
        """What serves predictions (served entities and versions), for checkpoint keys.

        Not the config version: scaling or restarting an endpoint bumps that without
        changing a single prediction, and a resume must not redo work for it.
        """
        served = sorted(
            f"{e.entity_name or e.name}@{e.entity_version or '?'}" for e in self.served_entities
        )
        return ",".join(served) or self.id

    def served_names(self) -> tuple[str, ...]:
        """The served entities' names (what ``--served-model`` takes)."""
        return tuple(entity.name for entity in self.served_entities)

    def model_version_for(self, served_model: str | None) -> str:
        """:attr:`model_version_key`, or only ``served_model``'s when one is targeted."""
        if served_model is None:
            return self.model_version_key
        for entity in self.served_entities:
            if entity.name == served_model:
                return f"{entity.entity_name or entity.name}@{entity.entity_version or '?'}"
        return served_model

    def invocation_url(self, host: str, served_model: str | None = None) -> str:
        """Where to send requests: the route-optimized URL when the endpoint has one, else
        the workspace URL (``{host}/serving-endpoints/{name}/invocations``); with
        ``served_model``, that served entity's own path on either."""
        name = quote(self.name, safe="")
        base = self.endpoint_url or f"{host}/serving-endpoints/{name}/invocations"
        if served_model is None:
            return base
        prefix = base.removesuffix("/invocations")
        return f"{prefix}/served-models/{quote(served_model, safe='')}/invocations"

    def data_plane_authorization_details(self) -> str:
        """``authorization_details`` verbatim from the endpoint, or built from its id (seed 000)."""
        if self.authorization_details:
            return self.authorization_details
        return json.dumps(
            [
                {
                    "type": "workspace_permission",
                    "object_type": "serving-endpoints",
                    "object_path": f"/serving-endpoints/{self.id}",
                    "actions": ["query_inference_endpoint"],
                }
            ],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EndpointInfo:
        state = doc.get("state") or {}
        config = doc.get("config") or {}
        query_info = (doc.get("data_plane_info") or {}).get("query_info") or {}
        entities = tuple(
            ServedEntity(
                name=str(e.get("name", "")),
                entity_name=e.get("entity_name") or e.get("model_name"),
                entity_version=_opt_str(e.get("entity_version") or e.get("model_version")),
                deployment=(e.get("state") or {}).get("deployment"),
            )
            for e in (config.get("served_entities") or config.get("served_models") or [])
        )
        routes = (config.get("traffic_config") or {}).get("routes") or []
        return cls(
            name=str(doc.get("name", "")),
            id=str(doc.get("id", "")),
            route_optimized=bool(doc.get("route_optimized", False)),
            endpoint_url=query_info.get("endpoint_url") or doc.get("endpoint_url"),
            authorization_details=query_info.get("authorization_details"),
            ready=str(state.get("ready", "UNKNOWN")),
            # The docs' example says update_state; the API says config_update: accept both.
            config_update=str(state.get("config_update") or state.get("update_state") or ""),
            config_version=_opt_str(config.get("config_version")),
            served_entities=entities,
            traffic=tuple(
                (
                    str(r.get("served_entity_name") or r.get("served_model_name") or ""),
                    int(r.get("traffic_percentage", 0)),
                )
                for r in routes
            ),
            permission_level=doc.get("permission_level"),
            raw=doc,
        )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


class Workspace:
    """The workspace's REST API, as far as scoring needs it."""

    def __init__(
        self,
        transport: Transport,
        auth: WorkspaceAuth,
        *,
        policy: RetryPolicy | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self.host = auth.host
        self.tokens = TokenRefresher(
            auth.workspace_token, clock=clock, sleep=sleep, name="workspace token"
        )
        self._policy = policy or RetryPolicy(max_attempts=6)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._check = HostCheck(self.host)  # a PAT's first call is a control-plane call

    async def _get(self, path: str, *, method: str = "GET") -> Any:
        url = f"{self.host}{path}"
        token: Token | None = None

        async def send() -> Response:
            nonlocal token
            token = await self.tokens.get()
            headers = {**token.header, "Accept": "application/json"}
            if method == "POST":
                headers["Content-Type"] = "application/json"
            try:
                response = await self._transport.request(
                    method,
                    url,
                    headers=headers,
                    data=b"{}" if method == "POST" else None,
                    timeout_s=CONTROL_PLANE_TIMEOUT_S,
                )
            except TransportError as exc:
                self._check.failed(exc)
                raise
            self._check.answered = True
            return response

        async def judge(response: Response) -> Any:
            if response.ok:
                try:
                    return orjson.loads(response.body or b"{}")
                except orjson.JSONDecodeError:
                    return malformed(response, f"{urlsplit(url).path} answered 200")
            outcome = error_outcome(response)
            if response.status in (401, 403) and "token" in outcome.message.lower():
                if token is not None:
                    self.tokens.invalidate(token)
                return replace(outcome, reason=Reason.STALE_TOKEN)
            if not self._policy.is_retryable(outcome):
                raise _api_error(outcome, url)
            return outcome

        def give_up(outcome: Outcome, tally: Tally) -> EngineError:
            if outcome.kind is FailureKind.STATUS and outcome.status in (401, 403):
                return _api_error(outcome, url)
            return EngineError(
                f"the workspace API kept failing ({tally.attempts} attempts; last: "
                f"{outcome.message or outcome.brief})"
            )

        caller = Caller(self._policy, self._rng, self._clock, self._sleep)
        return await caller.call(send, judge, give_up=give_up)

    async def get_endpoint(self, name: str) -> EndpointInfo:
        """GET the endpoint; a missing one is an :class:`EndpointError` naming the fix."""
        try:
            doc = await self._get(f"/api/2.0/serving-endpoints/{quote(name, safe='')}")
        except HTTPStatusError as exc:
            raise _endpoint_error(name, self.host, exc) from exc
        return EndpointInfo.from_json(doc)

    async def get_openapi(self, name: str) -> dict[str, Any] | None:
        """The endpoint's OpenAPI document, or None when it has none (no signature logged)."""
        try:
            doc = await self._get(f"/api/2.0/serving-endpoints/{quote(name, safe='')}/openapi")
        except HTTPStatusError as exc:
            if exc.status in (400, 404):
                log.warning("endpoint '%s' has no query schema (%s)", name, exc.server_message)
                return None
            raise
        return doc if isinstance(doc, dict) else None

    async def get_model(self, name: str) -> ModelSchema | None:
        """The endpoint's input and prediction schema, from its OpenAPI document (None when
        it publishes none: no model signature logged)."""
        doc = await self.get_openapi(name)
        return parse_openapi(doc) if doc else None

    async def start_endpoint(self, name: str) -> None:
        await self._get(
            f"/api/2.0/serving-endpoints/{quote(name, safe='')}/config:start", method="POST"
        )

    async def wait_ready(self, name: str, *, timeout_s: float) -> EndpointInfo:
        """Poll until the endpoint is READY, with backoff; EndpointNotReady after ``timeout_s``."""
        deadline = self._clock() + timeout_s
        delay = POLL_MIN_S
        while True:
            info = await self.get_endpoint(name)
            if info.is_ready:
                return info
            if self._clock() + delay > deadline:
                raise EndpointNotReady(
                    f"endpoint '{name}' is not ready ({info.state_text}) after waiting "
                    f"{timeout_s:.0f} s; start it in the Serving UI or pass "
                    "`start_if_stopped=True`, and raise `wait_ready_s=SECONDS`"
                )
            log.info(
                "endpoint '%s' not ready (%s); checking again in %.0f s",
                name,
                info.state_text,
                delay,
            )
            await self._sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)


def _api_error(outcome: Outcome, url: str) -> HTTPStatusError:
    return HTTPStatusError(
        outcome.status or 0,
        outcome.message,
        error_code=outcome.error_code,
        url=urlsplit(url).path,
    )


def _endpoint_error(name: str, host: str, exc: HTTPStatusError) -> EngineError:
    if exc.status == 404:
        return EndpointError(
            f"serving endpoint '{name}' does not exist in workspace {host}; "
            "check `endpoint` (the name shown in the Serving UI)"
        )
    if exc.status == 403:
        return EndpointError(
            f"not allowed to read serving endpoint '{name}' ({exc.server_message}); "
            "grant the service principal CAN_QUERY on it"
        )
    return exc
