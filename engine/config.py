"""Small frozen settings objects with named defaults.

CLI flags and environment variables only *build* these objects; the Python API takes the same
objects, so every entry point shares one set of defaults and one set of checks.
"""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.errors import UsageError
from engine.hang import HANG_FLOOR_S
from engine.retry import RetryPolicy

__all__ = ["Credentials", "MetricsConfig", "ScoreConfig"]

#: Databricks rejects request bodies over 16 MB; stay well clear of it (JSON overhead varies).
DEFAULT_MAX_REQUEST_BYTES = 12 * 1024 * 1024
#: Rows per request: large enough to amortise per-request overhead, small enough to isolate faults.
DEFAULT_BATCH_ROWS = 1000
#: Most requests in flight when --concurrency is not given (the adaptive limit finds the
#: endpoint's capacity below it).
DEFAULT_MAX_CONCURRENCY = 64
#: Memory for batches between the reader and the writer (input rows and request bodies): read
#: ahead, queued, in flight, or answered and waiting for an earlier batch. The reorder window
#: alone counts batches, so on wide rows (embeddings: 4 MB bodies) it let 1 GB pile up.
DEFAULT_MAX_BUFFER_MIB = 256.0
#: The reorder window, in batches per worker (see :attr:`ScoreConfig.window`).
WINDOW_ROUND_TRIPS = 64
#: Per-request bound: the endpoint runs a request for at most 297 s before timing it out
#: itself, so an answer later than this will never come.
DEFAULT_REQUEST_TIMEOUT_S = 300.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_TOKEN_TIMEOUT_S = 30.0
#: On SIGTERM/SIGINT, how long requests already in flight may take to finish.
DEFAULT_GRACE_S = 20.0

ProgressMode = Literal["auto", "bar", "log", "off"]

#: The Pushgateway ``job`` label when ``--pushgateway-job`` is not given.
DEFAULT_PUSHGATEWAY_JOB = "databricks_batch_engine"
#: OTEL_* variables that name where OTLP data goes: any of them set turns OpenTelemetry on.
OTEL_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def _mask(secret: str) -> str:
    return "***" if secret else "''"


def normalize_host(host: str) -> str:
    """``my-ws.cloud.databricks.com/`` -> ``https://my-ws.cloud.databricks.com``."""
    host = host.strip().rstrip("/")
    if host and "://" not in host:
        host = "https://" + host
    return host


#: ``auth_type`` values (DATABRICKS_AUTH_TYPE, a profile's ``auth_type``) the engine handles
#: itself; any other is handed to databricks-sdk (``auth="databricks-sdk"``).
NATIVE_AUTH_TYPES = frozenset({"", "oauth-m2m", "pat"})
SDK_AUTH = "databricks-sdk"

PAT_ONLY_MESSAGE = (
    "only a personal access token is configured, but route-optimized serving endpoints "
    "accept OAuth tokens only: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (or "
    "client_id/client_secret in ~/.databrickscfg) for a service principal with CAN_QUERY on "
    "the endpoint, or use `auth='databricks-sdk'` with an OAuth login (databricks auth login)"
)


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """Where the workspace is and how to authenticate to it.

    Three ways, picked by what is set:

    * an OAuth service principal (``client_id`` + ``client_secret``, "oauth-m2m"): the engine
      mints both the workspace token and the endpoint-scoped data-plane token;
    * a personal access token (``token``, "pat"): control-plane calls only (``engine
      describe`` / ``validate``); scoring refuses it up front, since route-optimized
      endpoints accept OAuth tokens only;
    * ``auth="databricks-sdk"``: databricks-sdk's ``Config`` (``profile``, environment,
      every auth type it supports) authenticates control-plane calls, and the data-plane
      token is minted from its token with the jwt-bearer exchange. Needs databricks-sdk.

    ``repr()`` never shows a secret, so a config object can be logged safely.
    """

    host: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    auth: str = ""
    profile: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", normalize_host(self.host))
        if self.auth == SDK_AUTH:
            return  # databricks-sdk resolves (and checks) everything else
        if self.auth not in NATIVE_AUTH_TYPES:
            raise UsageError(
                f"auth {self.auth!r} is not one the engine handles itself (oauth-m2m, pat); "
                f"use `auth='{SDK_AUTH}'` to let databricks-sdk handle it"
            )
        missing = [] if self.host else ["`host` / DATABRICKS_HOST"]
        if self.auth == "pat" and not self.token:
            missing.append("DATABRICKS_TOKEN (auth type pat)")
        elif not (self.client_id and self.client_secret) and (
            self.auth == "oauth-m2m" or not self.token
        ):
            missing += [
                flag
                for flag, value in (
                    ("`client_id` / DATABRICKS_CLIENT_ID", self.client_id),
                    ("`client_secret` / DATABRICKS_CLIENT_SECRET", self.client_secret),
                )
                if not value
            ]
        if missing:
            raise UsageError(
                "missing Databricks credentials: set "
                + ", ".join(missing)
                + " (an OAuth service principal with CAN_QUERY on the endpoint; "
                "route-optimized endpoints do not accept personal access tokens)"
            )

    @property
    def kind(self) -> str:
        """"databricks-sdk", "oauth-m2m" (preferred when both are set) or "pat"."""
        if self.auth:
            return self.auth
        return "oauth-m2m" if self.client_id and self.client_secret else "pat"

    def require_oauth(self) -> None:
        """Scoring needs a data-plane token, which a personal access token cannot get.

        Raises:
            UsageError: only a personal access token is configured.
        """
        if self.kind == "pat":
            raise UsageError(PAT_ONLY_MESSAGE)

    def __repr__(self) -> str:
        shown = [f"host={self.host!r}"]
        if self.client_id:
            shown.append(f"client_id={self.client_id!r}")
        if self.client_secret:
            shown.append(f"client_secret={_mask(self.client_secret)}")
        if self.token:
            shown.append(f"token={_mask(self.token)}")
        if self.auth:
            shown.append(f"auth={self.auth!r}")
        if self.profile:
            shown.append(f"profile={self.profile!r}")
        return f"Credentials({', '.join(shown)})"

    @classmethod
    def from_env(
        cls,
        *,
        host: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        profile: str | None = None,
        auth: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Credentials:
        """Resolve credentials the way every Databricks tool does.

        Explicit values first, then DATABRICKS_HOST / DATABRICKS_CLIENT_ID /
        DATABRICKS_CLIENT_SECRET / DATABRICKS_TOKEN, then the ``~/.databrickscfg`` profile
        (``profile``, else DATABRICKS_CONFIG_PROFILE, else ``DEFAULT``; the file is
        DATABRICKS_CONFIG_FILE if set). ``auth`` (else DATABRICKS_AUTH_TYPE, else the
        profile's ``auth_type``) other than oauth-m2m or pat hands authentication to
        databricks-sdk.
        """
        env = os.environ if env is None else env
        profile = profile or env.get("DATABRICKS_CONFIG_PROFILE") or None
        values = {
            "host": host or env.get("DATABRICKS_HOST", ""),
            "client_id": client_id or env.get("DATABRICKS_CLIENT_ID", ""),
            "client_secret": client_secret or env.get("DATABRICKS_CLIENT_SECRET", ""),
            "token": env.get("DATABRICKS_TOKEN", ""),
        }
        auth = auth or env.get("DATABRICKS_AUTH_TYPE", "")
        if auth and auth not in NATIVE_AUTH_TYPES:
            auth = SDK_AUTH
        if auth == SDK_AUTH:
            return cls(host=values["host"], auth=SDK_AUTH, profile=profile)
        section = _profile_section(profile, env)
        for key in values:
            values[key] = values[key] or section.get(key, "")
        if section.get("auth_type", "") not in NATIVE_AUTH_TYPES and not (
            values["client_id"] and values["client_secret"]
        ):
            return cls(host=values["host"], auth=SDK_AUTH, profile=profile)
        return cls(**values, auth=auth, profile=profile)


def _profile_section(profile: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """The named section of the Databricks config file ({} when there is none to read)."""
    path = Path(env.get("DATABRICKS_CONFIG_FILE") or Path.home() / ".databrickscfg").expanduser()
    if not path.is_file():
        if profile:
            raise UsageError(
                f"profile '{profile}' was asked for but {path} does not exist; "
                "create it (databricks auth login) or set DATABRICKS_CONFIG_FILE"
            )
        return {}
    parser = configparser.ConfigParser(default_section="__none__", interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise UsageError(f"cannot read {path}: {exc}; fix the file or pass `host` etc.") from exc
    name = profile or "DEFAULT"
    if not parser.has_section(name):
        if profile:
            found = ", ".join(parser.sections()) or "none"
            raise UsageError(f"no profile '{profile}' in {path} (profiles there: {found})")
        return {}
    return dict(parser.items(name))


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Where a run's metrics go; nothing is imported or sent unless one is configured.

    Attributes:
        otel: OpenTelemetry metrics and a span for the run, exported over OTLP/HTTP as the
            standard ``OTEL_*`` variables say. None (the default): on when an
            ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variable is set (and ``OTEL_SDK_DISABLED`` is
            not ``true``); True: on (``--otel``), to ``http://localhost:4318`` unless a
            variable says otherwise; False: off.
        pushgateway_url: a Prometheus Pushgateway to push the run's figures to, every
            progress interval and at the end (``--pushgateway URL``).
        pushgateway_job: the ``job`` label of the pushed group (``--pushgateway-job``).
        pushgateway_grouping: more grouping labels, e.g. ``{"instance": "nightly"}``
            (``--pushgateway-label KEY=VALUE``); a sharded run adds ``shard``.
    """

    otel: bool | None = None
    pushgateway_url: str | None = None
    pushgateway_job: str = DEFAULT_PUSHGATEWAY_JOB
    pushgateway_grouping: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        url = self.pushgateway_url
        if url is not None and not (url.startswith(("http://", "https://")) and len(url) > 8):
            raise UsageError(
                f"`pushgateway_url` {url!r} is not an http(s) URL; give the Pushgateway's address, "
                "e.g. `pushgateway_url='http://pushgateway:9091'`"
            )
        if not self.pushgateway_job:
            raise UsageError("`pushgateway_job` must not be empty, e.g. nightly_scoring")
        reserved = sorted({"job", "shard"} & set(self.pushgateway_grouping))
        if reserved:
            raise UsageError(
                f"`pushgateway_grouping` cannot set {', '.join(reserved)}: use `pushgateway_job` "
                "for the job (a sharded run adds its shard label itself)"
            )

    def otel_enabled(self, env: Mapping[str, str] | None = None) -> bool:
        """Whether OpenTelemetry is on, without importing it."""
        env = os.environ if env is None else env
        if self.otel is not None:
            return self.otel
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        return any(env.get(name, "").strip() for name in OTEL_ENDPOINT_VARS)

    def enabled(self, env: Mapping[str, str] | None = None) -> bool:
        return self.pushgateway_url is not None or self.otel_enabled(env)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """How to score: batching, concurrency, rate, retries, timeouts, output shape.

    Attributes:
        endpoint: the serving endpoint's name.
        batch_rows: rows per request (``--batch-rows``).
        max_request_bytes: no request body is larger (``--max-request-bytes``).
        concurrency: requests in flight at once (``--concurrency``); None finds the
            endpoint's capacity adaptively, up to ``max_concurrency``.
        qps: requests per second cap across the whole run, or None for no cap (``--qps``);
            the adaptive rate never exceeds it.
        keep: input columns copied to the output; None keeps them all (``--keep``).
        params: the model's ``params`` sent with every request.
        retry: per-request retry policy.
        reorder_window: batches that may be ahead of the writer; bounds memory.
        max_buffer_mib: MiB of input rows and request bodies that may be ahead of the writer
            (``--max-buffer-mib``): the reader waits beyond it. One batch larger than it
            still goes, alone.
        max_error_rows: stop with exit 1 once more rows than this were rejected; None = never.
        wait_ready_s: how long to wait for a not-ready endpoint (at start and mid-run); 0
            fails at once, or with ``start_if_stopped`` waits up to 30 minutes.
        progress: "auto" (bar on a terminal, log lines otherwise), "bar", "log" or "off".
        grace_s: on a stop signal, how long in-flight requests may take to finish.
        served_model: send every request to this served model of the endpoint
            (``/served-models/NAME/invocations``, ``--served-model``); None: the endpoint's
            traffic split decides.
        request_timeout_s: the longest one request may take (``--request-timeout``).
        hang_floor_s: a request is abandoned as hung after 10 × the endpoint's p99 latency,
            but never sooner than this.
        hedge: a request unanswered after 3 × the endpoint's p99 latency (at least 1 s) is
            sent a second time and the first answer kept (``--no-hedge``: never; for an
            endpoint where each request costs, or acts, beyond its answer).
        encoders: processes that encode and key request bodies off the event loop
            (``--encoders``); 0 or None (the default) encodes on the loop.
        metrics: OpenTelemetry and Pushgateway export (see :class:`MetricsConfig`).
    """

    endpoint: str
    batch_rows: int = DEFAULT_BATCH_ROWS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    concurrency: int | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    qps: float | None = None
    keep: tuple[str, ...] | None = None
    params: Mapping[str, Any] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    served_model: str | None = None
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    hang_floor_s: float = HANG_FLOOR_S
    hedge: bool = True
    token_timeout_s: float = DEFAULT_TOKEN_TIMEOUT_S
    reorder_window: int | None = None
    max_buffer_mib: float = DEFAULT_MAX_BUFFER_MIB
    encoders: int | None = None
    max_error_rows: int | None = None
    wait_ready_s: float = 0.0
    progress: ProgressMode = "auto"
    progress_interval_s: float = 10.0
    grace_s: float = DEFAULT_GRACE_S
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (bool(self.endpoint), "`endpoint` is required: the serving endpoint's name"),
            (self.batch_rows >= 1, f"`batch_rows` must be at least 1, got {self.batch_rows}"),
            (
                self.max_request_bytes >= 1024,
                f"`max_request_bytes` must be at least 1024, got {self.max_request_bytes}",
            ),
            (
                self.concurrency is None or self.concurrency >= 1,
                f"`concurrency` must be at least 1, got {self.concurrency}",
            ),
            (self.max_concurrency >= 1, "`max_concurrency` must be at least 1"),
            (
                1 <= self.max_buffer_mib < math.inf,
                f"`max_buffer_mib` must be a number of MiB from 1, got {self.max_buffer_mib:g}",
            ),
            (self.qps is None or self.qps > 0, f"`qps` must be positive, got {self.qps}"),
            (
                self.encoders is None or self.encoders >= 0,
                f"`encoders` must be 0 or more, got {self.encoders}",
            ),
            (
                self.max_error_rows is None or self.max_error_rows >= 0,
                f"`max_error_rows` must be 0 or more, got {self.max_error_rows}",
            ),
            (self.wait_ready_s >= 0, f"`wait_ready_s` must be 0 or more, got {self.wait_ready_s}"),
            (
                self.request_timeout_s > 0 and self.connect_timeout_s > 0,
                "timeouts must be positive",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise UsageError("; ".join(problems))

    @property
    def workers(self) -> int:
        """Tasks sending requests: the most that can ever be in flight."""
        return self.concurrency or self.max_concurrency

    @property
    def sending_batches(self) -> int:
        """Batches being sent at once (waiting for a slot, in flight, or answered and being
        handed to the writer): twice the most in flight, so the next request is ready when a
        slot frees. A batch waiting to be sent again (a ``Retry-After``, a backoff) does not
        count: the slots stay full while it waits."""
        return 2 * self.workers

    @property
    def buffer_bytes(self) -> int:
        """The byte budget of batches ahead of the writer (``max_buffer_mib``)."""
        return int(self.max_buffer_mib * 2**20)

    @property
    def window(self) -> int:
        """Batches allowed between the writer's position and the newest batch read.

        The writer keeps input order, so a batch waiting out a ``Retry-After`` holds back
        every batch answered after it: the window lets ``WINDOW_ROUND_TRIPS`` round trips'
        worth of batches at full concurrency pile up behind it (4 x workers, 256 batches,
        is under half a second of a run at 545 requests a second: with 5 % random 429s
        carrying ``Retry-After: 1`` such a run kept a third of its fault-free rate). The
        byte budget (``max_buffer_mib``) is what bounds their memory; the count bounds the
        small per-batch objects it does not weigh."""
        return self.reorder_window or max(8, WINDOW_ROUND_TRIPS * self.workers)
