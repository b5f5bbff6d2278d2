"""aiohttp glue shared by both planes: JSON responses and the one error-translation middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from engine.emulator.apierror import ApiError, OAuthError

__all__ = [
    "STATE_KEY",
    "control_latency_middleware",
    "drop_connection",
    "error_middleware",
    "json_response",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Where each application keeps the shared :class:`~engine.emulator.runtime.EmulatorState`.
STATE_KEY: web.AppKey[Any] = web.AppKey("emulator_state", object)

_JSON = "application/json"


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response (orjson, numpy arrays allowed) that always carries Content-Type."""
    payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=payload, status=status, content_type=_JSON, headers=headers)


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection abruptly; the returned response is never written."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


@web.middleware
async def control_latency_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Answer every workspace REST call (``/api/...``) ``control_latency_ms`` late (on the
    control plane's application only: the data plane's requests never pass through it)."""
    state = request.app[STATE_KEY]
    delay_ms = state.config.control_latency_ms
    if delay_ms > 0 and request.path.startswith("/api/"):
        await state.sleep(delay_ms / 1000.0)
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn ApiError/OAuthError and aiohttp's own 404/405/413 into Databricks-shaped JSON."""
    try:
        return await handler(request)
    except ApiError as error:
        return json_response(error.body(), error.status, error.headers)
    except OAuthError as error:
        return json_response(error.body(), error.status)
    except web.HTTPRequestEntityTooLarge as error:
        return json_response(
            {"error_code": "BAD_REQUEST", "message": f"Request payload too large: {error.text}"},
            413,
        )
    except web.HTTPNotFound:
        message = f"No API found for '{request.method} {request.path}'"
        return json_response({"error_code": "ENDPOINT_NOT_FOUND", "message": message}, 404)
    except web.HTTPMethodNotAllowed:
        message = f"Method {request.method} is not allowed on '{request.path}'"
        return json_response({"error_code": "BAD_REQUEST", "message": message}, 405)
