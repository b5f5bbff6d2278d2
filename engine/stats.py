"""Run accounting: counters updated by the pipeline, frozen into a :class:`Summary` at the end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.adaptive import RateController
from engine.rejects import RejectGroups

__all__ = ["RunStats", "Summary", "latency_percentiles_ms"]


@dataclass(frozen=True, kw_only=True)
class Summary:
    """What a run did, stable enough to parse (``--summary PATH`` writes it as JSON)."""

    endpoint: str
    output: str | None
    rows_total: int
    rows_scored: int
    rows_rejected: int
    rows_skipped: int
    requests: int
    requests_ok: int
    retries: dict[str, int]
    throttled_429: int
    bisections: int
    token_refreshes: int
    elapsed_s: float
    rows_per_s: float
    latency_ms: dict[str, float]
    exit_code: int
    error: str | None = None
    model: str | None = None
    #: requests per second over the run, the share of them answered 429, and the pacing rate
    #: the adaptive controller ended at (None: never throttled, so never paced).
    requests_per_s: float = 0.0
    throttled_share: float = 0.0
    pacing_rps: float | None = None
    #: requests abandoned as hung (far slower than the endpoint's p99) and sent again
    requests_abandoned: int = 0
    #: second copies sent of requests far slower than the endpoint's p99, and how many of
    #: them were answered first (their answer was kept)
    requests_hedged: int = 0
    hedges_won: int = 0
    #: what held the run back at the end: qps, endpoint, latency or concurrency
    bound: str | None = None
    #: the endpoint's capacity the controller measured, requests/s (None: no limit met)
    capacity_rps: float | None = None
    #: for a Delta output, the table version holding the run's rows (the commit it made, or
    #: the earlier one a rerun found its transaction in)
    output_version: int | None = None
    #: the most bytes of input rows and request bodies held at once between the reader and the
    #: writer (bounded by ``--max-buffer-mib``, or one batch larger than it)
    buffer_peak_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The summary for a person, one fact a line."""
        retries = ", ".join(f"{k} {v}" for k, v in sorted(self.retries.items())) or "none"
        lat = self.latency_ms
        out = [
            f"endpoint       {self.endpoint}" + (f" ({self.model})" if self.model else ""),
            f"rows           {self.rows_scored:,} scored, {self.rows_rejected:,} rejected"
            + (f", {self.rows_skipped:,} from checkpoint" if self.rows_skipped else "")
            + (f" of {self.rows_total:,}" if self.rows_total else ""),
            f"requests       {self.requests:,} ({self.requests_ok:,} ok, "
            f"{self.throttled_429:,} throttled 429 = {self.throttled_share:.1%}, "
            f"{self.bisections:,} bisections), {self.requests_per_s:,.1f}/s"
            + (f", paced at {self.pacing_rps:,.1f}/s at the end" if self.pacing_rps else "")
            + (
                f" (endpoint capacity measured at {self.capacity_rps:,.1f}/s)"
                if self.capacity_rps
                else ""
            )
            + (f", {self.requests_abandoned:,} hung, resent" if self.requests_abandoned else "")
            + (
                f", {self.requests_hedged:,} slow, sent twice ({self.hedges_won:,} answered "
                "first by the copy)"
                if self.requests_hedged
                else ""
            ),
            f"retries        {retries}",
            f"token refresh  {self.token_refreshes}",
            f"throughput     {self.rows_per_s:,.0f} rows/s over {self.elapsed_s:.1f} s",
            f"buffered       at most {self.buffer_peak_bytes / 2**20:,.1f} MiB of rows and request "
            "bodies",
            f"latency        p50 {lat.get('p50', 0):.0f} ms, p95 {lat.get('p95', 0):.0f} ms, "
            f"p99 {lat.get('p99', 0):.0f} ms",
        ]
        if self.output:
            version = (
                "" if self.output_version is None else f" (Delta version {self.output_version})"
            )
            out.append(f"output         {self.output}{version}")
        if self.error:
            out.append(f"error          {self.error}")
        return out


class RequestObserver(Protocol):
    """Told of every request as it ends (the telemetry's per-request hook)."""

    def __call__(self, status: int | None, latency_s: float, error_type: str | None) -> None: ...


@dataclass
class RunStats:
    """Mutable counters; only the event loop thread changes them (metrics exporters read
    them from their own threads)."""

    started_at: float = field(default_factory=time.monotonic)
    rows_total: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    rows_skipped: int = 0
    requests: int = 0
    requests_ok: int = 0
    throttled_429: int = 0
    bisections: int = 0
    #: requests given up on for taking far longer than the endpoint's usual latency
    requests_abandoned: int = 0
    #: second copies sent of requests far slower than usual, and those answered first
    requests_hedged: int = 0
    hedges_won: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    #: the dispatcher's adaptive controller, read for progress lines and the summary
    controller: RateController | None = None
    #: rejected rows by error message, with example row numbers (for the run report)
    rejects: RejectGroups = field(default_factory=RejectGroups)
    #: data-plane requests sent and not yet answered (the report's "in flight", OTel's
    #: http.client.active_requests)
    active_requests: int = 0
    #: told of each request as it ends (None: no telemetry configured)
    observer: RequestObserver | None = None
    #: bytes of input rows and request bodies held between the reader and the writer: now,
    #: and the most at once (bounded by ``--max-buffer-mib``)
    buffer_bytes: int = 0
    buffer_peak_bytes: int = 0

    @property
    def throttled_share(self) -> float:
        return self.throttled_429 / self.requests if self.requests else 0.0

    def limits(self) -> dict[str, float | None]:
        """The adaptive controller's current in-flight limit and pacing rate (None: unpaced)."""
        controller = self.controller
        if controller is None:
            return {"in_flight_limit": None, "pacing_rps": None}
        return {
            "in_flight_limit": round(controller.in_flight_limit, 1),
            "pacing_rps": round(controller.rate, 2) if controller.paced else None,
        }

    def record_request(
        self, status: int | None, latency_s: float, error_type: str | None = None
    ) -> None:
        """Count one answered (``status``) or failed request; ``error_type``: how a request
        with no answer failed (the transport's kind: connect, timeout, reset...)."""
        if self.observer is not None:
            self.observer(status, latency_s, error_type)
        self.requests += 1
        if status is not None and 200 <= status < 300:
            self.requests_ok += 1
        if status == 429:
            self.throttled_429 += 1
        self.latencies_s.append(latency_s)

    def rows_per_s(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.started_at
        done = self.rows_scored + self.rows_rejected
        return done / elapsed if elapsed > 0 else 0.0

    def percentiles_ms(self) -> dict[str, float]:
        if not self.latencies_s:
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
        return latency_percentiles_ms(self.latencies_s)

    def summary(self, **fields: Any) -> Summary:
        elapsed = time.monotonic() - self.started_at
        return Summary(
            rows_total=self.rows_total,
            rows_scored=self.rows_scored,
            rows_rejected=self.rows_rejected,
            rows_skipped=self.rows_skipped,
            requests=self.requests,
            requests_ok=self.requests_ok,
            retries=dict(self.retries),
            throttled_429=self.throttled_429,
            bisections=self.bisections,
            elapsed_s=round(elapsed, 3),
            rows_per_s=round(self.rows_per_s(), 1),
            requests_per_s=round(self.requests / elapsed, 2) if elapsed > 0 else 0.0,
            throttled_share=round(self.throttled_share, 4),
            pacing_rps=self.limits()["pacing_rps"],
            requests_abandoned=self.requests_abandoned,
            requests_hedged=self.requests_hedged,
            hedges_won=self.hedges_won,
            buffer_peak_bytes=self.buffer_peak_bytes,
            bound=None if self.controller is None else self.controller.bound,
            capacity_rps=None
            if self.controller is None or self.controller.capacity is None
            else round(self.controller.capacity, 2),
            latency_ms={k: round(v, 2) for k, v in self.percentiles_ms().items()},
            **fields,
        )


def latency_percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of ``latencies_s`` (not empty) in ms, as ``np.percentile``'s default
    (linear) method gives them.

    Not ``np.percentile``: it calls ``np.unique``, whose first use imports ``numpy.ma``
    (7-9 ms at the end of every run, or at the run record's first sample).
    """
    ordered = np.sort(np.asarray(latencies_s))
    last = len(ordered) - 1
    result = {}
    for q in (50, 95, 99):
        position = q / 100.0 * last
        below = int(position)
        low, high = float(ordered[below]), float(ordered[min(below + 1, last)])
        result[f"p{q}"] = (low + (high - low) * (position - below)) * 1000.0
    return result
