"""OAuth on the workspace host: discovery documents and ``POST /oidc/v1/token``.

Grants: ``client_credentials`` (Basic auth or ``client_id``/``client_secret`` form fields;
with ``authorization_details`` it returns an endpoint-scoped data-plane token, without it a
workspace token) and the jwt-bearer exchange of a workspace token (``assertion``) for a
data-plane token. Every answer is JSON with a Content-Type.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from aiohttp import web

from engine.emulator.apierror import OAuthError
from engine.emulator.config import ServicePrincipal
from engine.emulator.plan import plan_token_request
from engine.emulator.runtime import EmulatorState
from engine.emulator.tokens import IssuedToken, TokenKind, TokenVerdict, parse_authorization_details
from engine.emulator.web import STATE_KEY, drop_connection, json_response

__all__ = ["add_routes"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _not_authorized() -> OAuthError:
    return OAuthError(
        400,
        "invalid_authorization_details",
        "User is not authorized to the requested authorizations",
    )


def add_routes(app: web.Application) -> None:
    """Register discovery and the token endpoint."""
    app.router.add_get("/.well-known/databricks-config", databricks_config)
    app.router.add_get("/oidc/.well-known/oauth-authorization-server", authorization_server)
    app.router.add_post("/oidc/v1/token", token)


async def databricks_config(request: web.Request) -> web.Response:
    """The workspace's discovery document."""
    state: EmulatorState = request.app[STATE_KEY]
    return json_response(
        {"oidc_endpoint": f"{state.host}/oidc", "workspace_id": state.config.workspace_id}
    )


async def authorization_server(request: web.Request) -> web.Response:
    """The OIDC authorization-server metadata."""
    host = request.app[STATE_KEY].host
    return json_response(
        {
            "issuer": f"{host}/oidc",
            "authorization_endpoint": f"{host}/oidc/v1/authorize",
            "token_endpoint": f"{host}/oidc/v1/token",
            "grant_types_supported": ["client_credentials", JWT_BEARER],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }
    )


async def token(request: web.Request) -> web.Response:
    """``POST /oidc/v1/token``, with the configured token faults applied first."""
    state: EmulatorState = request.app[STATE_KEY]
    plan = plan_token_request(state.token_faults, state.token_requests_seen)
    state.token_requests_seen += 1
    if plan.latency_s > 0:
        await state.sleep(plan.latency_s)
    if plan.outcome == "timeout":
        state.accounting.token_timeouts += 1
        return drop_connection(request)
    try:
        if plan.outcome == "error":
            raise OAuthError(
                503, "temporarily_unavailable", "The token service is temporarily unavailable."
            )
        form = await request.post()
        issued = _grant(state, form, request.headers.get("Authorization"))
    except OAuthError as error:
        state.accounting.token_requests_by_status[error.status] += 1
        return json_response(error.body(), error.status)
    state.accounting.token_requests_by_status[200] += 1
    state.accounting.tokens_issued[issued.kind] += 1
    if issued.kind == "data_plane":
        grant = "jwt-bearer" if form.get("grant_type") == JWT_BEARER else "client_credentials"
        state.accounting.data_plane_grants[grant] += 1
    return json_response(state.tokens.response(issued, state.clock()))


def _grant(
    state: EmulatorState, form: Mapping[str, object], authorization: str | None
) -> IssuedToken:
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    grant_type = fields.get("grant_type")
    if grant_type == "client_credentials":
        return _client_credentials(state, fields, authorization)
    if grant_type == JWT_BEARER:
        return _exchange(state, fields)
    raise OAuthError(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")


def _client_credentials(
    state: EmulatorState, fields: dict[str, str], authorization: str | None
) -> IssuedToken:
    principal = _authenticate_client(state, fields, authorization)
    scope = fields.get("scope", "all-apis")
    if "all-apis" not in scope.split():
        raise OAuthError(400, "invalid_scope", f"scope {scope!r} is not supported; use all-apis")
    details = fields.get("authorization_details")
    if details:
        return _data_plane_token(state, principal, details)
    return _issue(state, "workspace", principal, None)


def _authenticate_client(
    state: EmulatorState, fields: dict[str, str], authorization: str | None
) -> ServicePrincipal:
    client_id, secret = _basic(authorization) or (
        fields.get("client_id"),
        fields.get("client_secret"),
    )
    principal = state.principals.get(client_id or "")
    if principal is None or secret != principal.client_secret:
        raise OAuthError(401, "invalid_client", "Client authentication failed")
    return principal


def _basic(authorization: str | None) -> tuple[str, str] | None:
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = (
            base64.b64decode(value.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(401, "invalid_client", "Client authentication failed") from None
    return client_id, secret


def _exchange(state: EmulatorState, fields: dict[str, str]) -> IssuedToken:
    verdict, assertion = state.tokens.check(fields.get("assertion", ""), state.clock())
    if assertion is None or verdict is TokenVerdict.EXPIRED or assertion.kind != "workspace":
        raise OAuthError(400, "invalid_grant", "The assertion is not a valid workspace token")
    if assertion.personal:
        raise OAuthError(
            400, "invalid_grant", "A personal access token cannot be exchanged; use OAuth"
        )
    details = fields.get("authorization_details")
    if not details:
        raise OAuthError(400, "invalid_request", "authorization_details is required for this grant")
    return _data_plane_token(state, state.principals[assertion.client_id], details)


def _data_plane_token(
    state: EmulatorState, principal: ServicePrincipal, details: str
) -> IssuedToken:
    grants = parse_authorization_details(details)
    if len(grants) != 1:
        raise OAuthError(
            400, "invalid_request", "authorization_details must name exactly one endpoint"
        )
    grant = grants[0]
    runtime = state.by_id.get(grant.endpoint_id)
    if runtime is None:
        raise _not_authorized()
    allowed = ("CAN_MANAGE",) if grant.needs_manage() else ("CAN_QUERY", "CAN_MANAGE")
    if principal.level(runtime.name) not in allowed:
        raise _not_authorized()
    return _issue(state, "data_plane", principal, runtime.endpoint_id)


def _issue(
    state: EmulatorState, kind: TokenKind, principal: ServicePrincipal, endpoint_id: str | None
) -> IssuedToken:
    return state.tokens.issue(kind, principal.client_id, state.clock(), endpoint_id)
