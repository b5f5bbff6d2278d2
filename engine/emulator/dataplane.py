"""Serving one invocation, and the data-plane application's route.

The not-ready answer (Databricks documents none): ``400 {"error_code": "INVALID_STATE",
"message": "Endpoint <name> is not ready (state: NOT_READY, config_update: IN_PROGRESS). ..."}``.
A payload over the limit (16 MiB by default): ``413 {"error_code": "BAD_REQUEST", ...}``.

Every 429 is ``{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": ...}`` with the
``Retry-After`` form the faults ask for (whole seconds until the bucket has a token, at
least 1; 1 for the concurrency cap and random 429s).

Order of checks: token -> readiness -> (the limit schedule starts, or steps) -> random 429
-> QPS bucket (429) -> concurrency slot (wait or 429) -> planned 500/503/reset-before/hang ->
parse and enforce the signature (400) -> latency -> poison (400 with ``stack_trace``) ->
model -> planned reset-after -> 200 with ``served-model-name``.

A hanging request has its body read, keeps its concurrency slot, and is never answered:
it ends when the client disconnects or when the emulator stops (then its connection is
dropped), so it never holds up shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import time
import traceback
from collections.abc import Callable

import orjson
from aiohttp import web

from engine.emulator.apierror import ApiError
from engine.emulator.config import Faults
from engine.emulator.models import find_poison
from engine.emulator.payload import ScoringInput, parse_request
from engine.emulator.plan import plan_request, plan_throttle
from engine.emulator.runtime import ConcurrencyRefused, EmulatorState, EndpointRuntime
from engine.emulator.web import STATE_KEY, drop_connection

__all__ = ["add_routes", "invoke", "retry_after_header"]

Authenticate = Callable[[str | None, EndpointRuntime], None]

#: How often a hanging request looks whether its client has gone (real seconds; it only
#: bounds how long a dead connection's slot stays held, never what the client sees).
_HANG_POLL_S = 0.05

_MODEL_ERROR = (
    "Encountered an unexpected error while evaluating the model. Verify that the input is "
    "compatible with the model for inference. Error '{detail}'"
)


def add_routes(app: web.Application) -> None:
    """Register ``POST /<workspace-id>/serving-endpoints/<name>/invocations``."""
    app.router.add_post(
        "/{workspace_id}/serving-endpoints/{name}/invocations", data_plane_invocations
    )
    app.router.add_post(
        "/{workspace_id}/serving-endpoints/{name}/served-models/{served}/invocations",
        data_plane_invocations,
    )


def check_served(runtime: EndpointRuntime, served: str | None) -> None:
    """A ``/served-models/{served}/`` path must name the endpoint's served entity."""
    if served is not None and served != runtime.config.served_entity_name():
        raise ApiError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"Served model {served} does not exist in endpoint {runtime.name}.",
        )


async def data_plane_invocations(request: web.Request) -> web.StreamResponse:
    """The route-optimized invocation URL (data-plane tokens only)."""
    state: EmulatorState = request.app[STATE_KEY]
    if request.match_info["workspace_id"] != state.config.workspace_id:
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", "No such workspace on this data plane.")
    runtime = state.endpoint(request.match_info["name"])
    check_served(runtime, request.match_info.get("served"))
    if not runtime.config.route_optimized:
        raise ApiError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"Endpoint {runtime.name} is not route-optimized; query it through the workspace URL.",
        )
    return await invoke(request, state, runtime, state.authenticate_data_plane)


async def invoke(
    request: web.Request, state: EmulatorState, runtime: EndpointRuntime, authenticate: Authenticate
) -> web.StreamResponse:
    """Serve one invocation on ``runtime``, counting its outcome."""
    accounting = runtime.accounting
    accounting.requests_total += 1
    try:
        response = await _serve(request, state, runtime, authenticate)
    except ApiError as error:
        accounting.requests_by_status[error.status] += 1
        raise
    except _ClientGone as gone:
        # The client left before its answer (its timeout, a Ctrl-C): what a server sees
        # every day, counted, not logged as a server error with a traceback.
        accounting.answers_lost += 1
        return gone.response
    if response.prepared:
        accounting.requests_by_status[response.status] += 1
    return response


async def _serve(
    request: web.Request, state: EmulatorState, runtime: EndpointRuntime, authenticate: Authenticate
) -> web.StreamResponse:
    authenticate(request.headers.get("Authorization"), runtime)
    _check_ready(state, runtime)
    runtime.accounting.enter()
    try:
        now = state.clock()
        runtime.refresh_limits(now)
        _check_random_throttle(runtime)
        _check_rate(state, runtime)
        try:
            async with runtime.slot():
                return await _run(request, state, runtime)
        except ConcurrencyRefused as refused:
            runtime.accounting.throttled_concurrency += 1
            raise _limit_exceeded(
                runtime,
                f"Exceeded the provisioned concurrency of {refused.limit} "
                f"for endpoint {runtime.name}. Please retry later.",
                1.0,
            ) from None
    finally:
        runtime.accounting.leave()


def _check_ready(state: EmulatorState, runtime: EndpointRuntime) -> None:
    current = state.state_of(runtime)
    if current.is_ready:
        return
    hint = (
        "It is stopped: start it with POST /api/2.0/serving-endpoints/{n}/config:start."
        if current.config_update == "NOT_UPDATING"
        else "Its configuration is being updated: retry once it is READY."
    ).format(n=runtime.name)
    raise ApiError(
        400, "INVALID_STATE", f"Endpoint {runtime.name} is not ready ({current.describe()}). {hint}"
    )


def _limit_exceeded(runtime: EndpointRuntime, message: str, wait_s: float) -> ApiError:
    headers = retry_after_header(runtime.faults, wait_s, time.time())
    return ApiError(429, "REQUEST_LIMIT_EXCEEDED", message, headers=headers)


def _check_random_throttle(runtime: EndpointRuntime) -> None:
    if not plan_throttle(runtime.faults, runtime.next_arrival_number()):
        return
    runtime.accounting.throttled_random += 1
    raise _limit_exceeded(
        runtime,
        f"The endpoint {runtime.name} is receiving too many requests. Please retry later.",
        1.0,
    )


def _check_rate(state: EmulatorState, runtime: EndpointRuntime) -> None:
    wait_s = runtime.throttle_wait(state.clock())
    if wait_s <= 0:
        return
    runtime.accounting.throttled_rate += 1
    raise _limit_exceeded(
        runtime,
        f"Exceeded the rate limit of {runtime.limits.qps_limit:g} requests per second for "
        f"endpoint {runtime.name}. Please retry later.",
        wait_s,
    )


def retry_after_header(faults: Faults, wait_s: float, wall_now: float) -> dict[str, str]:
    """The ``Retry-After`` header for a 429: whole seconds (at least 1), an HTTP-date, or none."""
    if faults.retry_after is None:
        return {}
    seconds = max(1, math.ceil(wait_s))
    if faults.retry_after == "date":
        return {"Retry-After": email.utils.formatdate(wall_now + seconds, usegmt=True)}
    return {"Retry-After": str(seconds)}


async def _run(
    request: web.Request, state: EmulatorState, runtime: EndpointRuntime
) -> web.StreamResponse:
    plan = plan_request(runtime.faults, runtime.next_request_number())
    if plan.outcome == "reset_before":
        runtime.accounting.resets_before += 1
        return drop_connection(request)
    if plan.outcome == "error_500":
        raise ApiError(
            500, "INTERNAL_ERROR", "The server encountered an internal error. Please retry."
        )
    if plan.outcome == "error_503":
        raise ApiError(
            503, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable. Please retry."
        )
    if plan.outcome == "hang":
        await request.read()
        return await _hang(request, state, runtime)
    scoring = parse_request(
        await request.read(),
        runtime.model.signature,
        runtime.config.row_key,
        keys=state.config.track_rows,
    )
    if plan.latency_s > 0:
        await state.sleep(plan.latency_s)
    body = _predict(runtime, scoring)
    runtime.accounting.rows_scored.update(scoring.row_keys)
    if plan.outcome == "reset_after":
        runtime.accounting.resets_after += 1
        return drop_connection(request)
    return await _deliver(request, runtime, body, scoring)


async def _hang(
    request: web.Request, state: EmulatorState, runtime: EndpointRuntime
) -> web.StreamResponse:
    runtime.accounting.hung += 1
    runtime.accounting.hanging += 1
    try:
        while request.transport is not None and not state.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stopping.wait(), _HANG_POLL_S)
    finally:
        runtime.accounting.hanging -= 1
    return drop_connection(request)


def _predict(runtime: EndpointRuntime, scoring: ScoringInput) -> bytes:
    poison = find_poison(scoring.table) if runtime.faults.poison else None
    try:
        if poison is not None:
            raise ValueError(poison)
        predictions = runtime.model.predict(scoring.table, scoring.params)
        return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    except Exception as exc:  # a crashing model is a 400 with its stack trace, as on Databricks
        raise ApiError(
            400,
            "BAD_REQUEST",
            _MODEL_ERROR.format(detail=exc),
            stack_trace="".join(traceback.format_exception(exc)),
        ) from None


async def _deliver(
    request: web.Request, runtime: EndpointRuntime, body: bytes, scoring: ScoringInput
) -> web.StreamResponse:
    response = web.Response(
        body=body,
        content_type="application/json",
        headers={"served-model-name": runtime.config.served_entity_name()},
    )
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError as exc:
        raise _ClientGone(response) from exc
    runtime.accounting.rows_delivered.update(scoring.row_keys)
    return response


class _ClientGone(Exception):
    """The answer could not be written: the client had closed the connection."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the client closed the connection before its answer")
        self.response = response
