"""OAuth tokens as values, and the rules the emulator checks them by. Pure: time is passed in.

Two kinds: ``workspace`` tokens (client credentials, ``scope=all-apis``) for the control
plane, and ``data_plane`` tokens scoped to one endpoint (client credentials with
``authorization_details``, or the jwt-bearer exchange of a workspace token).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import orjson

from engine.emulator.apierror import ApiError, OAuthError

__all__ = [
    "EXPIRY_MARGIN_S",
    "Grant",
    "IssuedToken",
    "TokenKind",
    "TokenStore",
    "TokenVerdict",
    "parse_authorization_details",
]

#: A token this close to expiry is refused, as Databricks does.
EXPIRY_MARGIN_S = 30.0

TokenKind = Literal["workspace", "data_plane"]
_QUERY_ACTION = "query_inference_endpoint"
_MANAGE_ACTION = "manage_inference_endpoint"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """One token the emulator issued.

    Attributes:
        access_token: the opaque bearer string.
        kind: ``workspace`` or ``data_plane``.
        client_id: the principal it was issued to.
        expires_at: emulator-clock seconds at which it expires.
        endpoint_id: for data-plane tokens, the endpoint it is scoped to.
        personal: a personal access token (a workspace token that never expires and cannot
            be exchanged for a data-plane token).
    """

    access_token: str
    kind: TokenKind
    client_id: str
    expires_at: float
    endpoint_id: str | None = None
    personal: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """What one ``authorization_details`` entry asks for.

    Attributes:
        endpoint_id: the id in ``object_path`` (``/serving-endpoints/<id>``).
        actions: the requested actions.
    """

    endpoint_id: str
    actions: tuple[str, ...]

    def needs_manage(self) -> bool:
        """True when the grant asks to manage, not just query."""
        return _MANAGE_ACTION in self.actions


class TokenVerdict(Enum):
    """How a presented token fares."""

    OK = "ok"
    UNKNOWN = "unknown"
    EXPIRING = "expiring"
    EXPIRED = "expired"


class TokenStore:
    """Issues tokens and looks them up. Holds no clock: callers pass ``now``."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._tokens: dict[str, IssuedToken] = {}

    def issue(
        self, kind: TokenKind, client_id: str, now: float, endpoint_id: str | None = None
    ) -> IssuedToken:
        """A fresh token living ``ttl_s`` seconds from ``now``."""
        token = IssuedToken(
            access_token=f"emu-{kind}-{secrets.token_urlsafe(24)}",
            kind=kind,
            client_id=client_id,
            expires_at=now + self.ttl_s,
            endpoint_id=endpoint_id,
        )
        self._tokens[token.access_token] = token
        return token

    def add_personal(self, access_token: str, client_id: str) -> None:
        """Register a personal access token acting as ``client_id``."""
        self._tokens[access_token] = IssuedToken(
            access_token, "workspace", client_id, expires_at=float("inf"), personal=True
        )

    def check(self, access_token: str, now: float) -> tuple[TokenVerdict, IssuedToken | None]:
        """The verdict on a presented token, and the token when it is known."""
        token = self._tokens.get(access_token)
        if token is None:
            return TokenVerdict.UNKNOWN, None
        if now >= token.expires_at:
            return TokenVerdict.EXPIRED, token
        if now >= token.expires_at - EXPIRY_MARGIN_S:
            return TokenVerdict.EXPIRING, token
        return TokenVerdict.OK, token

    def response(self, token: IssuedToken, now: float) -> dict[str, Any]:
        """The token endpoint's JSON body for ``token``."""
        return {
            "access_token": token.access_token,
            "token_type": "Bearer",
            "expires_in": max(0, round(token.expires_at - now)),
            "scope": "all-apis",
        }


def bearer(header: str | None) -> str | None:
    """The token in an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def verdict_error(verdict: TokenVerdict, token: IssuedToken | None, now: float) -> ApiError | None:
    """The REST error for a token verdict (401 unknown, 403 expired/expiring), or None."""
    if verdict is TokenVerdict.UNKNOWN:
        return ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
    if verdict is TokenVerdict.EXPIRED:
        assert token is not None
        ago = now - token.expires_at
        return ApiError(
            403, "PERMISSION_DENIED", f"Invalid Token: token expired {ago:.0f} seconds ago."
        )
    if verdict is TokenVerdict.EXPIRING:
        return ApiError(
            403,
            "PERMISSION_DENIED",
            "Invalid Token: Token is expiring within 30 seconds. Refresh the token and retry.",
        )
    return None


def parse_authorization_details(text: str) -> list[Grant]:
    """Parse the ``authorization_details`` form field (a JSON list, as a string).

    Raises:
        OAuthError: 400 ``invalid_request`` when it is not a list of workspace_permission
            entries on ``/serving-endpoints/<id>``.
    """
    try:
        entries = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise OAuthError(
            400, "invalid_request", "authorization_details is not valid JSON"
        ) from None
    if not isinstance(entries, list) or not entries:
        raise OAuthError(
            400, "invalid_request", "authorization_details must be a non-empty JSON list"
        )
    return [_grant(entry) for entry in entries]


def _grant(entry: Any) -> Grant:
    bad = OAuthError(400, "invalid_request", f"unsupported authorization_details entry: {entry!r}")
    if not isinstance(entry, dict) or entry.get("type") != "workspace_permission":
        raise bad
    path = entry.get("object_path")
    actions = entry.get("actions")
    if entry.get("object_type") != "serving-endpoints" or not isinstance(path, str):
        raise bad
    if not path.startswith("/serving-endpoints/") or not isinstance(actions, list) or not actions:
        raise bad
    if not set(actions) <= {_QUERY_ACTION, _MANAGE_ACTION}:
        raise bad
    return Grant(path.removeprefix("/serving-endpoints/"), tuple(actions))


def authorization_details(endpoint_id: str) -> str:
    """The ``authorization_details`` string advertised in ``data_plane_info.query_info``."""
    entry = {
        "type": "workspace_permission",
        "object_type": "serving-endpoints",
        "object_path": f"/serving-endpoints/{endpoint_id}",
        "actions": [_QUERY_ACTION],
    }
    return orjson.dumps([entry]).decode()
