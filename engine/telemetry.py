"""A run's metrics, exported where the user says: OpenTelemetry (OTLP/HTTP) and a Pushgateway.

The run calls one small interface, :class:`Telemetry`: :meth:`~Telemetry.open` before
anything is sent (the run's span starts), :meth:`~Telemetry.start` once the endpoint is known
(counters read :class:`~engine.stats.RunStats` from then on, and each request ends in
:meth:`~Telemetry.on_request` through ``RunStats.observer``), and :meth:`~Telemetry.finish`
with the run's summary on every exit, a failed or interrupted run's too: the last figures are
exported and flushed before the process ends.

Nothing costs anything when no exporter is configured: ``opentelemetry`` and
``prometheus_client`` are imported only by the exporter that needs them, and a run without
one gets :class:`Telemetry` with no exporters (no per-request hook, no task).

Metric names (OpenTelemetry / Prometheus) are listed in the README's "Metrics" section;
every engine metric carries the run's ``endpoint``, ``model_version`` and ``shard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from engine.config import ScoreConfig
from engine.errors import UsageError
from engine.stats import RunStats, Summary

if TYPE_CHECKING:
    from engine.pipeline import Scorer

__all__ = ["RunLabels", "RunView", "Telemetry"]

log = logging.getLogger("engine.telemetry")

#: ``service.name`` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one.
DEFAULT_SERVICE_NAME = "databricks-batch-engine"
#: Prefix of the engine's own metric names (``batch_engine.`` in OpenTelemetry).
PREFIX = "batch_engine"
#: How long the final export (or push) may take before the process ends anyway.
FINISH_TIMEOUT_S = 10.0
#: Seconds one Pushgateway push may take.
PUSH_TIMEOUT_S = 5.0
#: The semantic conventions' advised buckets for ``http.client.request.duration`` (seconds).
DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
#: An exit code that means the run finished (some rows may have been rejected).
FINISHED_EXIT_CODES = (0, 3)


@dataclass(frozen=True)
class RunLabels:
    """What every engine metric is labelled with."""

    endpoint: str
    model_version: str = ""
    #: ``"I/N"``; ``"0/1"`` for a run that is not sharded
    shard: str = "0/1"

    def as_dict(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "model_version": self.model_version, "shard": self.shard}


@dataclass(frozen=True)
class RunView:
    """A running run, as exporters read it: live counters and where requests go."""

    stats: RunStats
    labels: RunLabels
    invocation_url: str
    token_refreshes: Callable[[], int]

    def summary(self) -> Summary:
        """The run's figures so far, in the summary's shape."""
        return self.stats.summary(
            endpoint=self.labels.endpoint,
            output=None,
            token_refreshes=self.token_refreshes(),
            exit_code=-1,
            model=self.labels.model_version,
        )


class Exporter(Protocol):
    def start(self, view: RunView) -> None: ...
    def on_request(self, status: int | None, latency_s: float, error_type: str | None) -> None: ...
    def push(self) -> None: ...
    def finish(self, summary: Summary) -> None: ...


class Telemetry:
    """The run's telemetry: start / per request / finish, over the configured exporters."""

    def __init__(self, exporters: list[Exporter], *, interval_s: float = 10.0) -> None:
        self.exporters = exporters
        self.interval_s = interval_s
        self._pusher: asyncio.Task[None] | None = None
        self._finished = False

    @classmethod
    def open(cls, config: ScoreConfig, *, shard: tuple[int, int] | None = None) -> Telemetry:
        """The exporters ``config.metrics`` asks for (none: nothing imported, nothing runs)."""
        metrics = config.metrics
        labels = RunLabels(config.endpoint, shard=_shard_text(shard))
        exporters: list[Exporter] = []
        if metrics.otel_enabled():
            forced = metrics.otel is True
            otel = _exporter_module("engine.otel", "otel", "opentelemetry", asked=forced)
            if otel is not None:
                _add(exporters, "OpenTelemetry", lambda: otel.OtelExporter(labels, forced=forced))
        if metrics.pushgateway_url:
            push = _exporter_module(
                "engine.pushgateway", "prometheus", "prometheus_client", asked=True
            )
            url, job = metrics.pushgateway_url, metrics.pushgateway_job
            grouping = {**metrics.pushgateway_grouping, "shard": labels.shard}
            _add(
                exporters,
                "the Pushgateway",
                lambda: push.PushgatewayExporter(url, job=job, grouping=grouping, labels=labels),
            )
        return cls(exporters, interval_s=config.progress_interval_s)

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    def start(self, scorer: Scorer, *, shard: tuple[int, int] | None = None) -> None:
        """The endpoint is known: read the scorer's counters and push every interval."""
        if not self.exporters:
            return
        labels = RunLabels(
            scorer.config.endpoint, model_version=scorer.model_version, shard=_shard_text(shard)
        )
        tokens = scorer.tokens
        view = RunView(scorer.stats, labels, scorer.invocation_url, lambda: tokens.fetches)
        for exporter in self.exporters:
            exporter.start(view)
        scorer.stats.observer = self.on_request
        self._pusher = asyncio.create_task(self._push_every(self.interval_s))

    def on_request(self, status: int | None, latency_s: float, error_type: str | None) -> None:
        for exporter in self.exporters:
            exporter.on_request(status, latency_s, error_type)

    async def _push_every(self, interval_s: float) -> None:
        """Each exporter's periodic push, on a thread (a push is blocking HTTP)."""
        while True:
            await asyncio.sleep(interval_s)
            for exporter in self.exporters:
                try:
                    await asyncio.to_thread(exporter.push)
                except Exception as exc:  # metrics never fail a run
                    log.debug("periodic metrics push failed: %s", exc)

    def finish(self, summary: Summary) -> None:
        """Export the run's last figures and flush, whatever the run's end (once).

        Synchronous on purpose: it also runs while the run is being cancelled, and the process
        may end right after it. An exporter that fails is logged, never raised.
        """
        if self._finished:
            return
        self._finished = True
        if self._pusher is not None:
            self._pusher.cancel()
        for exporter in self.exporters:
            try:
                exporter.finish(summary)
            except Exception as exc:  # metrics never fail a run
                log.warning("could not export the run's metrics (%s): %s", type(exc).__name__, exc)


def _add(exporters: list[Exporter], name: str, make: Callable[[], Exporter]) -> None:
    """Set up one exporter; one that cannot be (say, a malformed OTEL_* variable) is a
    warning: metrics never stop a run."""
    try:
        exporters.append(make())
    except Exception as exc:
        log.warning("metrics are not exported to %s: %s: %s", name, type(exc).__name__, exc)


def _exporter_module(name: str, extra: str, package: str, *, asked: bool) -> Any:
    """The exporter's module, importing its optional package. Missing: a usage error when
    the user asked for the exporter, a warning (and None) when only an OTEL_* variable did."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if not (exc.name or "").startswith(package):
            raise
        fix = f"pip install 'databricks-batch-engine[{extra}]'"
        if asked:
            message = f"metrics export needs {package}, which is not installed: {fix}"
            raise UsageError(message) from None
        log.warning(
            "an OTEL_EXPORTER_OTLP_*ENDPOINT variable is set but %s is not installed, so no "
            "metrics are exported: %s (or pass --no-otel)",
            package,
            fix,
        )
        return None


def _shard_text(shard: tuple[int, int] | None) -> str:
    return "0/1" if shard is None else f"{shard[0]}/{shard[1]}"


def server_address(url: str) -> tuple[str, int | None, str]:
    """``(host, port, scheme)`` of a URL, for the HTTP semantic conventions."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port, parts.scheme


def retries_of(stats: RunStats) -> dict[str, int]:
    """A copy of the retry counts, safe to take from an exporter's thread."""
    for _ in range(3):
        with contextlib.suppress(RuntimeError):  # the loop added a cause meanwhile
            return dict(stats.retries)
    return {}


class WarnOnce:
    """Logs an exporter's first failure as a warning, later ones at debug level."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self.failures = 0

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            with self._lock:
                self.failures += 1
                first = self.failures == 1
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "%s failed (%s); the run goes on%s",
                self.what,
                _reason(exc),
                " (later failures are logged at debug level)" if first else "",
            )


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"


def now_s() -> float:
    """Wall-clock seconds since the epoch (Prometheus timestamps)."""
    return time.time()
