"""OpenTelemetry export of a run: HTTP client metrics, the engine's own, and a span for the run.

Configured the standard way and imported only when configured (see
:meth:`engine.config.MetricsConfig.otel_enabled`): the OTLP/HTTP protobuf exporters read
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._METRICS_ENDPOINT`` / ``..._TRACES_ENDPOINT``),
``OTEL_EXPORTER_OTLP_HEADERS`` and ``..._TIMEOUT``; the resource reads ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES``; metrics are exported every ``OTEL_METRIC_EXPORT_INTERVAL``
ms (60 s by default) and once more at the end. The providers are the run's own, never the
process-wide ones, so a host (Airflow) keeps its own OpenTelemetry set-up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from engine.stats import RunStats, Summary
from engine.telemetry import (
    DEFAULT_SERVICE_NAME,
    DURATION_BUCKETS_S,
    FINISH_TIMEOUT_S,
    FINISHED_EXIT_CODES,
    PREFIX,
    RunLabels,
    RunView,
    retries_of,
    server_address,
)

__all__ = ["OtelExporter", "resource"]

log = logging.getLogger("engine.telemetry")

Callback = Callable[[CallbackOptions], Iterable[Observation]]


def resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, named ``databricks-batch-engine`` when
    neither names the service."""
    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return detected


def _wanted(signal: str, forced: bool) -> bool:
    """Export ``signal`` (METRICS or TRACES) when its endpoint or the common one is set, or
    with ``--otel`` when no endpoint is set at all; ``OTEL_<signal>_EXPORTER=none`` turns it
    off."""
    if os.environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none":
        return False
    common = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    own = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    others = [
        os.environ.get(f"OTEL_EXPORTER_OTLP_{other}_ENDPOINT", "").strip()
        for other in ("METRICS", "TRACES")
        if other != signal
    ]
    return bool(common or own) or (forced and not any(others))


class OtelExporter:
    """One run's meter and tracer providers, exporting over OTLP/HTTP."""

    def __init__(self, labels: RunLabels, *, forced: bool = False) -> None:
        self.labels = labels
        self.view: RunView | None = None
        self._request_attrs: dict[tuple[int | None, str | None], dict[str, Any]] = {}
        self._base_request_attrs: dict[str, Any] = {}
        found = resource()
        self.meters: MeterProvider | None = None
        self.tracers: TracerProvider | None = None
        if _wanted("METRICS", forced):
            reader = PeriodicExportingMetricReader(OTLPMetricExporter())
            self.meters = MeterProvider(resource=found, metric_readers=[reader])
            self._instruments(self.meters)
        if _wanted("TRACES", forced):
            self.tracers = TracerProvider(resource=found)
            self.tracers.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        tracer = (self.tracers or TracerProvider()).get_tracer("engine")
        self.span = tracer.start_span("engine score", attributes=labels.as_dict())

    def _instruments(self, meters: MeterProvider) -> None:
        from engine import __version__

        meter = meters.get_meter("engine", __version__)
        self.duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        meter.create_observable_up_down_counter(
            "http.client.active_requests",
            [self._active],
            unit="{request}",
            description="Number of outbound HTTP requests that are currently active on the client.",
        )
        counters: list[tuple[str, str, str, Callable[[RunStats], int]]] = [
            ("rows.scored", "{row}", "Rows the endpoint scored.", lambda s: s.rows_scored),
            ("rows.rejected", "{row}", "Rows the endpoint rejected.", lambda s: s.rows_rejected),
            (
                "rows.from_checkpoint", "{row}", "Rows taken from the checkpoint, not sent.",
                lambda s: s.rows_skipped,
            ),
            (
                "requests.throttled", "{request}", "Requests answered 429.",
                lambda s: s.throttled_429,
            ),
            (
                "requests.abandoned", "{request}", "Requests abandoned as hung and sent again.",
                lambda s: s.requests_abandoned,
            ),
            (
                "requests.hedged", "{request}",
                "Second copies sent of requests far slower than the endpoint's usual latency.",
                lambda s: s.requests_hedged,
            ),
            (
                "requests.hedges_won", "{request}",
                "Slow requests whose second copy was answered first (its answer kept).",
                lambda s: s.hedges_won,
            ),
        ]
        for name, unit, description, read in counters:
            meter.create_observable_counter(
                f"{PREFIX}.{name}", [self._counter(read)], unit=unit, description=description
            )
        meter.create_observable_counter(
            f"{PREFIX}.retries", [self._retries], unit="{retry}",
            description="Retries, by cause (an HTTP status or how the request failed).",
        )
        meter.create_observable_counter(
            f"{PREFIX}.token.refreshes", [self._token_refreshes], unit="{token}",
            description="Data-plane tokens fetched.",
        )
        meter.create_observable_gauge(
            f"{PREFIX}.pacing.rate", [self._limit("pacing_rps")], unit="{request}/s",
            description="The rate the capacity finder paces requests at (absent: unpaced).",
        )
        meter.create_observable_gauge(
            f"{PREFIX}.in_flight.limit", [self._limit("in_flight_limit")], unit="{request}",
            description="The capacity finder's current limit on requests in flight.",
        )
        meter.create_observable_gauge(
            f"{PREFIX}.buffer.size", [self._counter(lambda s: s.buffer_bytes)], unit="By",
            description="Bytes of input rows and request bodies held between the reader and "
            "the writer (at most --max-buffer-mib).",
        )

    def start(self, view: RunView) -> None:
        self.view = view
        self.labels = view.labels
        host, port, scheme = server_address(view.invocation_url)
        self._base_request_attrs = {
            "http.request.method": "POST",
            "server.address": host,
            **({"server.port": port} if port else {}),
            "url.scheme": scheme,
            **view.labels.as_dict(),
        }
        self._request_attrs.clear()
        self.span.set_attributes(
            {"model_version": view.labels.model_version, "server.address": host}
        )

    def on_request(self, status: int | None, latency_s: float, error_type: str | None) -> None:
        if self.meters is None:
            return
        key = (status, error_type)
        attrs = self._request_attrs.get(key)
        if attrs is None:
            attrs = dict(self._base_request_attrs)
            if status is not None:
                attrs["http.response.status_code"] = status
            if error_type is not None or (status is not None and status >= 400):
                attrs["error.type"] = error_type or str(status)
            self._request_attrs[key] = attrs
        self.duration.record(latency_s, attrs)

    def push(self) -> None:
        """The SDK's reader exports on its own schedule."""

    def finish(self, summary: Summary) -> None:
        span = self.span
        span.set_attributes(
            {
                "rows_total": summary.rows_total,
                "rows_scored": summary.rows_scored,
                "rows_rejected": summary.rows_rejected,
                "rows_from_checkpoint": summary.rows_skipped,
                "requests": summary.requests,
                "exit_code": summary.exit_code,
            }
        )
        if summary.exit_code not in FINISHED_EXIT_CODES:
            span.set_status(Status(StatusCode.ERROR, summary.error or f"exit {summary.exit_code}"))
            span.set_attribute("error.type", f"exit_{summary.exit_code}")
        span.end()
        timeout_ms = int(FINISH_TIMEOUT_S * 1000)
        closing: list[Callable[[], object]] = []
        if self.meters is not None:
            meters = self.meters
            closing.append(lambda: meters.shutdown(timeout_millis=timeout_ms))  # a last export
        if self.tracers is not None:
            closing.append(self.tracers.shutdown)  # exports the span
        # Side by side: an unreachable collector costs one exporter timeout at exit, not two.
        threads = [threading.Thread(target=close, daemon=True) for close in closing]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- observable callbacks: read on the reader's thread --------------------------------

    def _observe(self, value: float | None, **more: Any) -> list[Observation]:
        if self.view is None or value is None:
            return []
        return [Observation(value, {**self.labels.as_dict(), **more})]

    def _counter(self, read: Callable[[RunStats], int]) -> Callback:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            return self._observe(read(self.view.stats) if self.view else None)

        return observe

    def _active(self, _: CallbackOptions) -> Iterable[Observation]:
        if self.view is None:
            return []
        return [Observation(self.view.stats.active_requests, self._base_request_attrs)]

    def _retries(self, _: CallbackOptions) -> Iterable[Observation]:
        if self.view is None:
            return []
        return [
            Observation(count, {**self.labels.as_dict(), "cause": cause})
            for cause, count in sorted(retries_of(self.view.stats).items())
        ]

    def _token_refreshes(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._observe(self.view.token_refreshes() if self.view else None)

    def _limit(self, name: str) -> Callback:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            return self._observe(self.view.stats.limits()[name] if self.view else None)

        return observe
