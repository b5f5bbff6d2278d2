"""The workspace host's REST API (Bearer workspace token), the workspace invocation URL,
and the unauthenticated debug routes.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from engine.emulator.apierror import ApiError
from engine.emulator.config import Faults, ServicePrincipal
from engine.emulator.dataplane import check_served, invoke
from engine.emulator.openapi import openapi_document
from engine.emulator.runtime import EmulatorState, EndpointRuntime
from engine.emulator.tokens import authorization_details
from engine.emulator.web import STATE_KEY, json_response

__all__ = ["CREATION_TIMESTAMP_MS", "CREATOR", "add_routes", "endpoint_document"]

#: 2026-01-01T00:00:00Z: after 2025-09-22, so route-optimized endpoints refuse the workspace URL.
CREATION_TIMESTAMP_MS = 1_767_225_600_000
CREATOR = "emulator@databricks.local"
_LEVEL_RANK = {"CAN_VIEW": 1, "CAN_QUERY": 2, "CAN_MANAGE": 3}
_API = "/api/2.0/serving-endpoints"


def add_routes(app: web.Application) -> None:
    """Register the control-plane, workspace-invocation and debug routes."""
    app.router.add_get(_API, list_endpoints)
    app.router.add_get(_API + "/{name}", get_endpoint)
    app.router.add_get(_API + "/{name}/openapi", get_openapi)
    app.router.add_post(_API + "/{name}/config:stop", stop_endpoint)
    app.router.add_post(_API + "/{name}/config:start", start_endpoint)
    app.router.add_get(_API + "/{name}/served-models/{served}/logs", served_logs)
    app.router.add_get(_API + "/{name}/served-models/{served}/build-logs", build_logs)
    app.router.add_get("/api/2.0/permissions/serving-endpoints/{id}", get_permissions)
    app.router.add_post("/serving-endpoints/{name}/invocations", workspace_invocations)
    app.router.add_post(
        "/serving-endpoints/{name}/served-models/{served}/invocations", workspace_invocations
    )
    app.router.add_get("/debug/accounting", debug_accounting)
    app.router.add_post("/debug/reset", debug_reset)
    app.router.add_post("/debug/faults/{name}", debug_faults)


def _state(request: web.Request) -> EmulatorState:
    state: EmulatorState = request.app[STATE_KEY]
    return state


def _authorized(request: web.Request, minimum: str) -> tuple[EmulatorState, EndpointRuntime, str]:
    """The endpoint in the path and the caller's level on it, at least ``minimum``.

    Raises:
        ApiError: 401/403 for the token, 404 for the endpoint, 403 below ``minimum``.
    """
    state = _state(request)
    principal = state.authenticate_workspace(request.headers.get("Authorization"))
    runtime = state.endpoint(request.match_info["name"])
    level = _level(principal, runtime)
    if _LEVEL_RANK.get(level or "", 0) < _LEVEL_RANK[minimum]:
        raise ApiError(
            403,
            "PERMISSION_DENIED",
            f"Principal {principal.client_id} needs {minimum} on endpoint {runtime.name} "
            f"(has {level or 'none'}).",
        )
    assert level is not None
    return state, runtime, level


def _level(principal: ServicePrincipal, runtime: EndpointRuntime) -> str | None:
    return principal.level(runtime.name)


def endpoint_document(state: EmulatorState, runtime: EndpointRuntime, level: str) -> dict[str, Any]:
    """``ServingEndpointDetailed`` for one endpoint, as the caller with ``level`` sees it."""
    current = state.state_of(runtime)
    served = runtime.config.served_entity_name()
    model = runtime.model
    entity = {
        "name": served,
        "entity_name": model.name,
        "entity_version": model.version,
        "workload_size": "Small",
        "workload_type": "CPU",
        "scale_to_zero_enabled": False,
        "state": {
            "deployment": current.deployment,
            "deployment_state_message": current.describe(),
        },
        "creator": CREATOR,
        "creation_timestamp": CREATION_TIMESTAMP_MS,
    }
    served_model = {**entity, "model_name": model.name, "model_version": model.version}
    document: dict[str, Any] = {
        "id": runtime.endpoint_id,
        "name": runtime.name,
        "creator": CREATOR,
        "creation_timestamp": CREATION_TIMESTAMP_MS,
        "last_updated_timestamp": CREATION_TIMESTAMP_MS,
        "route_optimized": runtime.config.route_optimized,
        "state": {"ready": current.ready, "config_update": current.config_update},
        "config": {
            "served_entities": [entity],
            "served_models": [served_model],
            "traffic_config": {
                "routes": [
                    {
                        "served_model_name": served,
                        "served_entity_name": served,
                        "traffic_percentage": 100,
                    }
                ]
            },
            "config_version": current.config_version,
        },
        "permission_level": level,
        "tags": [],
    }
    if runtime.config.route_optimized:
        url = state.endpoint_url(runtime.name)
        document["endpoint_url"] = url
        document["data_plane_info"] = {
            "query_info": {
                "endpoint_url": url,
                "authorization_details": authorization_details(runtime.endpoint_id),
            }
        }
    return document


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /api/2.0/serving-endpoints``: the endpoints the caller can see."""
    state = _state(request)
    principal = state.authenticate_workspace(request.headers.get("Authorization"))
    visible = [(r, _level(principal, r)) for r in state.endpoints.values()]
    documents = [endpoint_document(state, r, level) for r, level in visible if level]
    return json_response({"endpoints": documents})


async def get_endpoint(request: web.Request) -> web.Response:
    """``GET /api/2.0/serving-endpoints/{name}``."""
    state, runtime, level = _authorized(request, "CAN_VIEW")
    return json_response(endpoint_document(state, runtime, level))


async def get_openapi(request: web.Request) -> web.Response:
    """``GET .../{name}/openapi``: only for a READY endpoint."""
    state, runtime, _ = _authorized(request, "CAN_VIEW")
    current = state.state_of(runtime)
    if not current.is_ready:
        raise ApiError(
            400,
            "INVALID_STATE",
            f"Endpoint {runtime.name} is not ready ({current.describe()}); its OpenAPI schema is "
            "available once it is READY.",
        )
    document = openapi_document(
        endpoint=runtime.name,
        workspace_host=state.host,
        served_name=runtime.config.served_entity_name(),
        config_version=current.config_version,
        model=runtime.model,
    )
    return json_response(document)


async def stop_endpoint(request: web.Request) -> web.Response:
    """``POST .../{name}/config:stop``."""
    state, runtime, level = _authorized(request, "CAN_MANAGE")
    runtime.lifecycle.stop(state.clock(), runtime.name)
    return json_response(endpoint_document(state, runtime, level))


async def start_endpoint(request: web.Request) -> web.Response:
    """``POST .../{name}/config:start``."""
    state, runtime, level = _authorized(request, "CAN_MANAGE")
    runtime.lifecycle.start(state.clock(), runtime.name)
    return json_response(endpoint_document(state, runtime, level))


def _served(request: web.Request) -> tuple[EmulatorState, EndpointRuntime, str]:
    state, runtime, _ = _authorized(request, "CAN_VIEW")
    served = request.match_info["served"]
    check_served(runtime, served)
    return state, runtime, served


async def served_logs(request: web.Request) -> web.Response:
    """``GET .../served-models/{served}/logs``."""
    state, runtime, served = _served(request)
    current = state.state_of(runtime)
    lines = [
        f"[emulator] served model {served} ({runtime.model.name} v{runtime.model.version})",
        f"[emulator] config version {current.config_version}: {current.describe()}",
        f"[emulator] {runtime.accounting.requests_total} invocation(s) so far",
    ]
    return json_response({"logs": "\n".join(lines) + "\n"})


async def build_logs(request: web.Request) -> web.Response:
    """``GET .../served-models/{served}/build-logs``."""
    _, runtime, served = _served(request)
    model = runtime.model
    text = (
        f"[emulator] building {served}: {model.name} v{model.version}\n[emulator] build succeeded\n"
    )
    return json_response({"logs": text})


async def get_permissions(request: web.Request) -> web.Response:
    """``GET /api/2.0/permissions/serving-endpoints/{id}``."""
    state = _state(request)
    principal = state.authenticate_workspace(request.headers.get("Authorization"))
    runtime = state.by_id.get(request.match_info["id"])
    if runtime is None or not _level(principal, runtime):
        raise ApiError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"Serving endpoint {request.match_info['id']} does not exist.",
        )
    acl = [
        {
            "service_principal_name": p.client_id,
            "all_permissions": [{"permission_level": p.level(runtime.name), "inherited": False}],
        }
        for p in state.config.principals
        if p.level(runtime.name)
    ]
    return json_response(
        {
            "object_id": f"/serving-endpoints/{runtime.endpoint_id}",
            "object_type": "serving-endpoint",
            "access_control_list": acl,
        }
    )


async def workspace_invocations(request: web.Request) -> web.StreamResponse:
    """``POST /serving-endpoints/{name}[/served-models/{served}]/invocations``: refused for
    route-optimized endpoints."""
    state = _state(request)
    runtime = state.endpoint(request.match_info["name"])
    check_served(runtime, request.match_info.get("served"))
    if runtime.config.route_optimized:
        raise ApiError(
            403,
            "PERMISSION_DENIED",
            f"Endpoint {runtime.name} is route-optimized and can only be queried through its "
            f"route-optimized URL: {state.endpoint_url(runtime.name)}",
        )
    return await invoke(request, state, runtime, state.authenticate_workspace_query)


async def debug_accounting(request: web.Request) -> web.Response:
    """``GET /debug/accounting[?endpoint=NAME]`` (no auth)."""
    state = _state(request)
    name = request.query.get("endpoint")
    snapshot = state.snapshot(name)
    return web.Response(
        body=orjson.dumps(snapshot, option=orjson.OPT_NON_STR_KEYS), content_type="application/json"
    )


async def debug_reset(request: web.Request) -> web.Response:
    """``POST /debug/reset`` (no auth): zero the counters."""
    _state(request).accounting.reset()
    return json_response({})


async def debug_faults(request: web.Request) -> web.Response:
    """``POST /debug/faults/{name}`` with a JSON object of :class:`Faults` fields (no auth)."""
    state = _state(request)
    runtime = state.endpoint(request.match_info["name"])
    try:
        faults = Faults(**orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Invalid faults: {exc}") from None
    runtime.set_faults(faults, state.clock())
    return json_response({"endpoint": runtime.name, "faults": faults.as_dict()})
