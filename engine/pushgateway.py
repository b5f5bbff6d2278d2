"""Prometheus Pushgateway export, the way Prometheus advises for batch jobs.

A batch job is gone before Prometheus would scrape it, so it pushes: every progress interval
(POST: the group's other metrics, such as the last run's ``last_success_timestamp``, stay)
and at the end. A run that finished replaces the whole group (PUT) with its final figures and
``batch_engine_last_success_timestamp_seconds``; a failed or interrupted run POSTs its figures
and ``batch_engine_exit_code``, leaving the last success where it was, so an alert on "no
success for 26 h" keeps working.

``prometheus_client`` writes the text format and builds the grouping key's URL (base64 for a
value with ``/``, such as the shard ``0/4``); a push failure is a warning, once, and never
fails the run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.stats import Summary
from engine.telemetry import (
    FINISHED_EXIT_CODES,
    PREFIX,
    PUSH_TIMEOUT_S,
    RunLabels,
    RunView,
    WarnOnce,
    now_s,
)

__all__ = ["PushgatewayExporter", "metric_families"]

#: Quantiles of the request latency pushed as a summary.
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))


class PushgatewayExporter:
    """Pushes the run's figures to one Pushgateway group."""

    def __init__(
        self, url: str, *, job: str, grouping: Mapping[str, str], labels: RunLabels
    ) -> None:
        self.url = url
        self.job = job
        self.grouping = dict(grouping)
        self.labels = labels
        self.view: RunView | None = None
        self._lock = threading.Lock()  # a late periodic push never lands after the final one
        self._final: tuple[Summary, dict[str, float | None]] | None = None
        self._finished = False
        self._warn = WarnOnce(f"pushing metrics to the Pushgateway {url}")

    def start(self, view: RunView) -> None:
        self.view = view
        self.labels = view.labels

    def on_request(self, status: int | None, latency_s: float, error_type: str | None) -> None:
        """Pushes carry totals; no per-request work."""

    def push(self) -> None:
        """The figures so far (POST), unless the run has finished meanwhile."""
        view = self.view
        if view is None:
            return
        with self._lock:
            if self._finished:
                return
            self._push("POST", self._registry(view.summary(), view.stats.limits(), final=False))

    def finish(self, summary: Summary) -> None:
        view = self.view
        limits = view.stats.limits() if view is not None else {}
        if view is None:
            self.labels = RunLabels(
                self.labels.endpoint, model_version=summary.model or "", shard=self.labels.shard
            )
        with self._lock:
            self._finished = True
            finished = summary.exit_code in FINISHED_EXIT_CODES
            self._push("PUT" if finished else "POST", self._registry(summary, limits, final=True))

    def _push(self, method: str, registry: CollectorRegistry) -> None:
        """PUT replaces the group's metrics; POST replaces only those of the same names."""
        send = push_to_gateway if method == "PUT" else pushadd_to_gateway
        with self._warn.guard():
            send(self.url, self.job, registry, self.grouping, timeout=PUSH_TIMEOUT_S)

    def _registry(
        self, summary: Summary, limits: Mapping[str, float | None], *, final: bool
    ) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        families = metric_families(summary, limits, self.labels, final=final)
        registry.register(_Fixed(families))
        return registry


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def metric_families(
    summary: Summary,
    limits: Mapping[str, float | None],
    labels: RunLabels,
    *,
    final: bool,
) -> list[Metric]:
    """The run's figures as Prometheus metric families (``shard`` is in the grouping key)."""
    names = ["endpoint", "model_version"]
    values = [labels.endpoint, labels.model_version]

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=names)
        family.add_metric(values, value)
        return family

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=names)
        family.add_metric(values, value)
        return family

    families: list[Metric] = [
        gauge("rows_input", "Rows in the run's input (0: not known in advance).",
              summary.rows_total),
        counter("rows_scored", "Rows the endpoint scored.", summary.rows_scored),
        counter("rows_rejected", "Rows the endpoint rejected.", summary.rows_rejected),
        counter("rows_from_checkpoint", "Rows taken from the checkpoint, not sent.",
                summary.rows_skipped),
        counter("requests", "Data-plane requests sent.", summary.requests),
        counter("requests_throttled", "Requests answered 429.", summary.throttled_429),
        counter("requests_abandoned", "Requests abandoned as hung and sent again.",
                summary.requests_abandoned),
        counter("requests_hedged",
                "Second copies sent of requests far slower than the endpoint's usual latency.",
                summary.requests_hedged),
        counter("requests_hedges_won",
                "Slow requests whose second copy was answered first (its answer kept).",
                summary.hedges_won),
        counter("token_refreshes", "Data-plane tokens fetched.", summary.token_refreshes),
        gauge("duration_seconds", "Seconds the run has taken.", summary.elapsed_s),
        gauge("rows_per_second", "Rows scored or rejected per second over the run.",
              summary.rows_per_s),
        gauge("buffer_peak_bytes",
              "The most bytes of input rows and request bodies held at once between the "
              "reader and the writer.", summary.buffer_peak_bytes),
    ]
    retries = CounterMetricFamily(
        f"{PREFIX}_retries", "Retries, by cause.", labels=[*names, "cause"]
    )
    for cause, count in sorted(summary.retries.items()):
        retries.add_metric([*values, cause], count)
    if retries.samples:
        families.append(retries)
    for key, name, doc in (
        ("pacing_rps", "pacing_rate_requests_per_second",
         "The rate the capacity finder paces requests at (absent: unpaced)."),
        ("in_flight_limit", "in_flight_limit",
         "The capacity finder's limit on requests in flight."),
    ):
        value = limits.get(key)
        if value is not None:
            families.append(gauge(name, doc, value))
    latency = GaugeMetricFamily(
        f"{PREFIX}_request_latency_seconds",
        "Data-plane request latency quantiles over the run.",
        labels=[*names, "quantile"],
    )
    for quantile, key in QUANTILES:
        latency.add_metric([*values, quantile], summary.latency_ms.get(key, 0.0) / 1000.0)
    families.append(latency)
    if final:
        families.append(gauge("exit_code", "The run's exit code.", summary.exit_code))
        if summary.exit_code in FINISHED_EXIT_CODES:
            families.append(
                gauge("last_success_timestamp_seconds",
                      "When the last run that finished ended (Unix time).", now_s())
            )
    return families

