"""The emulator's settings: small frozen objects with named defaults.

``EmulatorConfig()`` serves the three built-in endpoints, route-optimized and READY, to one
service principal with ``CAN_MANAGE`` on all of them (so it can query, and stop/start).
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from engine.emulator.models import BUILTIN_MODELS, Model

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PERSONAL_ACCESS_TOKEN",
    "DEFAULT_START_DURATION_S",
    "DEFAULT_TOKEN_TTL_S",
    "DEFAULT_WORKSPACE_ID",
    "KEEP",
    "MAX_PAYLOAD_BYTES",
    "EmulatorConfig",
    "EndpointConfig",
    "Faults",
    "LimitStep",
    "PermissionLevel",
    "ServicePrincipal",
    "TokenFaults",
]

PermissionLevel = Literal["CAN_MANAGE", "CAN_QUERY", "CAN_VIEW"]
RetryAfterForm = Literal["seconds", "date"]
ConcurrencyMode = Literal["queue", "429"]

DEFAULT_TOKEN_TTL_S = 3600.0
DEFAULT_START_DURATION_S = 30.0
DEFAULT_WORKSPACE_ID = "1234567890123456"
DEFAULT_CLIENT_ID = "0e6f0c4a-5b1d-4c8e-9a7f-emulator0001"
DEFAULT_CLIENT_SECRET = "dose-emulator-secret-0001"
DEFAULT_PERSONAL_ACCESS_TOKEN = "dapi-emulator-0000000000000001"
#: Databricks' request payload limit (16 MB, taken as 16 MiB).
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


class Keep(enum.Enum):
    """The type of :data:`KEEP`: a :class:`LimitStep` field that leaves its limit as it was."""

    KEEP = "keep"


#: A :class:`LimitStep` field left at ``KEEP`` does not change that limit.
KEEP = Keep.KEEP
QpsSetting: TypeAlias = float | Keep | None
ConcurrencySetting: TypeAlias = int | Keep | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitStep:
    """A change of limits ``at_s`` seconds into a :class:`Faults` schedule.

    The schedule's clock starts at the first data-plane request on the endpoint after its
    faults were set (so every client gets the same time at the first limit, however long its
    own start-up takes), and runs on the emulator's injected clock.

    Attributes:
        at_s: seconds from the schedule's start (at least 0).
        qps_limit: the new requests/s limit; None lifts it; ``KEEP`` leaves it.
        max_concurrency: the new concurrency cap; None lifts it; ``KEEP`` leaves it.
    """

    at_s: float
    qps_limit: QpsSetting = KEEP
    max_concurrency: ConcurrencySetting = KEEP

    def __post_init__(self) -> None:
        if self.at_s < 0:
            raise ValueError(f"a limit step's at_s must not be negative, got {self.at_s}")
        if isinstance(self.qps_limit, (int, float)) and self.qps_limit <= 0:
            raise ValueError(f"a limit step's qps_limit must be positive, got {self.qps_limit}")
        if isinstance(self.max_concurrency, int) and self.max_concurrency < 1:
            raise ValueError(
                f"a limit step's max_concurrency must be at least 1, got {self.max_concurrency}"
            )

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> LimitStep:
        """From JSON: a missing limit is ``KEEP``, ``null`` lifts it."""
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        """For JSON: the limits it changes (``KEEP`` fields left out)."""
        out: dict[str, Any] = {"at_s": self.at_s}
        for name in ("qps_limit", "max_concurrency"):
            value = getattr(self, name)
            if value is not KEEP:
                out[name] = value
        return out


def _steps(schedule: Any) -> tuple[LimitStep, ...]:
    steps = tuple(s if isinstance(s, LimitStep) else LimitStep.from_dict(s) for s in schedule)
    times = [s.at_s for s in steps]
    if times != sorted(times) or len(set(times)) != len(times):
        raise ValueError(f"schedule steps must have distinct, increasing at_s, got {times}")
    return steps


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """What goes wrong on one endpoint's data plane. Decisions come from ``seed``.

    Attributes:
        seed: seeds every per-request decision (same seed, same requests -> same faults).
        qps_limit: requests per second before ``429 REQUEST_LIMIT_EXCEEDED`` (None: no cap).
        qps_burst: the token bucket's size in requests (None: a tenth of a second's worth of
            the limit in force, at least 1).
        retry_after: the ``Retry-After`` form on every 429 (rate, concurrency, random):
            "seconds", "date" or None (no header).
        max_concurrency: requests served at once (None: no cap).
        concurrency_mode: past the cap, "queue" (wait) or "429" (refuse).
        schedule: limit changes over time (:class:`LimitStep`, increasing ``at_s``); from
            JSON, a list of objects. Before the first step, ``qps_limit`` and
            ``max_concurrency`` hold.
        throttle_rate: probability of a ``429 REQUEST_LIMIT_EXCEEDED`` unrelated to load,
            decided before the rate limit (it takes no bucket token and no slot).
        hang_rate: probability an admitted request is never answered: its body is read, then
            it holds its concurrency slot until the client disconnects or the emulator stops.
        hang_every: also hang every ``hang_every``-th admitted request (requests numbered
            ``hang_every - 1``, ``2 * hang_every - 1``, ...): "2 in 1000" is ``hang_every=500``.
        latency_ms: added to every request before the model runs.
        jitter_ms: plus a uniform draw in [0, jitter_ms).
        tail_prob: probability of a long-tail request that also waits ``tail_ms``.
        tail_ms: the long tail's extra latency.
        error_500_rate: probability of ``500 INTERNAL_ERROR`` (model not run).
        error_503_rate: probability of ``503 TEMPORARILY_UNAVAILABLE`` (model not run).
        reset_before_rate: probability the connection is dropped before the model runs.
        reset_after_rate: probability the connection is dropped after the model ran.
        poison: refuse a batch holding ``POISON_VALUE``/``POISON_TEXT`` (400 with a stack trace).
    """

    seed: int = 0
    qps_limit: float | None = None
    qps_burst: float | None = None
    retry_after: RetryAfterForm | None = "seconds"
    max_concurrency: int | None = None
    concurrency_mode: ConcurrencyMode = "queue"
    schedule: tuple[LimitStep, ...] = ()
    throttle_rate: float = 0.0
    hang_rate: float = 0.0
    hang_every: int | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    tail_prob: float = 0.0
    tail_ms: float = 0.0
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    reset_before_rate: float = 0.0
    reset_after_rate: float = 0.0
    poison: bool = True

    def __post_init__(self) -> None:
        rates = (
            "tail_prob",
            "error_500_rate",
            "error_503_rate",
            "reset_before_rate",
            "reset_after_rate",
            "throttle_rate",
            "hang_rate",
        )
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        exclusive = (
            self.error_500_rate + self.error_503_rate + self.reset_before_rate + self.hang_rate
        )
        if exclusive > 1.0:
            raise ValueError(
                "error_500_rate + error_503_rate + reset_before_rate + hang_rate must not exceed 1"
            )
        object.__setattr__(self, "schedule", _steps(self.schedule))
        for name in ("latency_ms", "jitter_ms", "tail_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.qps_limit is not None and self.qps_limit <= 0:
            raise ValueError(f"qps_limit must be positive, got {self.qps_limit}")
        if self.qps_burst is not None and self.qps_burst < 1:
            raise ValueError(f"qps_burst must be at least 1, got {self.qps_burst}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.hang_every is not None and self.hang_every < 1:
            raise ValueError(f"hang_every must be at least 1, got {self.hang_every}")

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (schedule steps as objects)."""
        out = {name: getattr(self, name) for name in Faults.__dataclass_fields__}
        out["schedule"] = [step.as_dict() for step in self.schedule]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenFaults:
    """What goes wrong on ``POST /oidc/v1/token``.

    Attributes:
        seed: seeds the per-request decisions.
        latency_ms: added to every token request.
        error_rate: probability of ``503 temporarily_unavailable``.
        timeout_rate: probability the request hangs for ``timeout_s`` then is dropped.
        timeout_s: how long a "timed out" token request hangs.
    """

    seed: int = 0
    latency_ms: float = 0.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "timeout_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"token {name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0.0 <= self.latency_ms < math.inf:  # NaN fails too
            raise ValueError(f"token latency_ms must not be negative, got {self.latency_ms}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePrincipal:
    """An OAuth client and its permission on each endpoint.

    Attributes:
        client_id: the OAuth client id (the principal's application id).
        client_secret: its OAuth secret.
        default_permission: its level on endpoints not in ``permissions`` (None: no access).
        permissions: ``{endpoint name: level}`` overrides.
        personal_access_token: a PAT acting as this principal (None: none). Like on Databricks,
            it works on the control plane only: the data plane and the jwt-bearer exchange
            refuse it.
        volume_privileges: its Unity Catalog privileges on every Volume the Files API serves
            (``READ VOLUME``, ``WRITE VOLUME``); without one, the call gets 403.
    """

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    default_permission: PermissionLevel | None = "CAN_MANAGE"
    permissions: Mapping[str, PermissionLevel] = field(default_factory=dict)
    personal_access_token: str | None = DEFAULT_PERSONAL_ACCESS_TOKEN
    volume_privileges: frozenset[str] = frozenset({"READ VOLUME", "WRITE VOLUME"})

    def level(self, endpoint: str) -> PermissionLevel | None:
        """This principal's permission level on ``endpoint``."""
        return self.permissions.get(endpoint, self.default_permission)


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    """One serving endpoint.

    Attributes:
        name: the endpoint's name.
        model: the served model, or the name of a built-in one (``demo-regressor``, ...).
        route_optimized: served on the data-plane host only; else through the workspace URL.
        start_stopped: begins stopped (NOT_READY / NOT_UPDATING).
        start_duration_s: how long ``config:start`` keeps it IN_PROGRESS.
        served_name: the served entity's name (default ``<model name>-<version>``).
        row_key: a request column whose value keys the per-row accounting.
        faults: what goes wrong on its data plane.
    """

    name: str
    model: Model | str | None = None
    route_optimized: bool = True
    start_stopped: bool = False
    start_duration_s: float = DEFAULT_START_DURATION_S
    served_name: str | None = None
    row_key: str | None = None
    faults: Faults = field(default_factory=Faults)

    def resolved_model(self) -> Model:
        """The model object (built-in names resolved; ``None`` means the built-in ``name``)."""
        from engine.emulator.models import builtin_model

        if isinstance(self.model, Model):
            return self.model
        return builtin_model(self.model or self.name)

    def endpoint_id(self) -> str:
        """A stable 32-hex id derived from the name."""
        return hashlib.sha256(self.name.encode()).hexdigest()[:32]

    def served_entity_name(self) -> str:
        """The served entity's name."""
        if self.served_name:
            return self.served_name
        model = self.resolved_model()
        return f"{model.name}-{model.version}"


def _default_endpoints() -> tuple[EndpointConfig, ...]:
    return tuple(EndpointConfig(name=name) for name in BUILTIN_MODELS)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulatorConfig:
    """Everything the emulator serves.

    Attributes:
        endpoints: the serving endpoints (default: the three built-in ones).
        principals: the OAuth clients; the first is the default (``Emulator.client_id``).
        token_ttl_s: lifetime of every issued token (``expires_in``).
        token_faults: what goes wrong on the token endpoint.
        workspace_id: the workspace id in data-plane URLs and discovery.
        bind_host: the interface both planes listen on (loopback).
        port: the control plane's port (0: a free one).
        data_plane_port: the data plane's port (0: a free one).
        max_payload_bytes: the data plane's request size limit (413 above it).
        track_rows: keep per-row ``rows_scored``/``rows_delivered`` counters (memory grows
            with distinct rows; turn off for very long runs).
        volumes_root: a local directory served as ``/Volumes`` by the Files API
            (``DIR/<catalog>/<schema>/<volume>/...``); None: the Files API answers 404.
        control_latency_ms: added to every workspace REST call (``/api/...``: endpoint
            lookups, the OpenAPI schema, the Files API). A real workspace's control plane
            answers in tens to hundreds of milliseconds; at 0 a client that makes its calls
            one after another looks as fast as one that overlaps them.
    """

    endpoints: tuple[EndpointConfig, ...] = field(default_factory=_default_endpoints)
    principals: tuple[ServicePrincipal, ...] = (ServicePrincipal(),)
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    token_faults: TokenFaults = field(default_factory=TokenFaults)
    workspace_id: str = DEFAULT_WORKSPACE_ID
    bind_host: str = "127.0.0.1"
    port: int = 0
    data_plane_port: int = 0
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    track_rows: bool = True
    volumes_root: str | None = None
    control_latency_ms: float = 0.0

    def __post_init__(self) -> None:
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"endpoint names must be unique, got {names}")
        if not self.principals:
            raise ValueError("at least one service principal is needed")
        if self.token_ttl_s <= 0:
            raise ValueError(f"token_ttl_s must be positive, got {self.token_ttl_s}")
        if not 0.0 <= self.control_latency_ms < math.inf:  # NaN fails too
            raise ValueError(
                f"control_latency_ms must not be negative, got {self.control_latency_ms}"
            )
        if not self.workspace_id.isdigit():
            raise ValueError(f"workspace_id must be digits, got {self.workspace_id!r}")
