"""Pure: find the endpoint's capacity from what it accepts, and hold the run just under it.

The endpoint's limit is usually unknown to the user: a token bucket of R requests/s (429
above it) or provisioned concurrency (429, or queueing, above it). The controller has two
phases, like TCP:

* **slow start**: requests in flight start at ``initial_in_flight`` and grow by one per
  accepted request (doubling every round trip) up to the worker count; nothing is paced, so a
  fast endpoint is reached within a few round trips and the client is the only bound;
* **after the first throttle** (429) the run is *paced*: the rate drops to ``backoff`` ×
  the rate the endpoint actually accepted over the last ``window_s`` (its measured capacity),
  at most once per ``cut_interval_s`` so one burst of 429s is one cut (and, while less than a
  window has been seen, never by more than ``max_cut`` at once), then grows by
  ``growth_per_s`` per second to probe for more, never beyond ``headroom`` × what is accepted.

The result is a sawtooth between ``backoff``·C and C: about 0.97 of capacity, with only the
probing overshoot throttled. A user's ``--qps`` is a hard ceiling on top (``max_rate``).

**Rising latency** bounds requests in flight, in every phase (a gradient limiter, as in
Netflix's concurrency-limits): an endpoint at its provisioned concurrency queues requests
instead of refusing them, so throughput stops growing while latency does. The controller
keeps the shortest recent latency (``base``: the endpoint's own service time, the minimum over
``LATENCY_WINDOW_S``) and a smoothed current one; about once a round trip it sets
``limit ← limit × clamp(tolerance × base / current, 0.5, 1) + √limit`` (smoothed), so
requests in flight settle where latency is at most ``latency_tolerance`` × the service time:
capacity still fully used (the √limit allowance keeps a small queue), no needless queueing.
A queueing delay under ``min_queue_delay_s`` is ignored (a fast endpoint is not slowed for
a few milliseconds of jitter).
503s are not taken as a capacity signal: Databricks answers them for passing faults too, and a
steady few percent of them would otherwise grind the rate down; they are retried with
backoff. Plain values and arithmetic: the async pacer that applies it lives in dispatch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["RateController"]

#: Acceptances a capacity measurement wants before it is trusted, and how far back it looks.
MIN_SAMPLES = 24
HISTORY_S = 10.0
#: Shortest span a capacity is measured over: a run's first instants say little (a token
#: bucket lets its whole burst through at once).
MIN_SPAN_S = 0.25
#: How far back the shortest latency (the endpoint's service time) is looked for.
LATENCY_WINDOW_S = 30.0
#: Latency samples before the latency rule acts.
MIN_LATENCY_SAMPLES = 16


@dataclass(kw_only=True)
class RateController:
    """In-flight limit and pacing rate from successes and throttles (times in seconds).

    Attributes:
        max_in_flight: the worker count: never more requests in flight.
        max_rate: a hard requests/s ceiling (``--qps``), or infinity.
        rate: the pacing rate once paced; infinity during slow start.
    """

    max_in_flight: int = 64
    initial_in_flight: int = 4
    max_rate: float = math.inf
    min_rate: float = 0.5
    growth_per_s: float = 0.04
    backoff: float = 0.94
    window_s: float = 1.0
    cut_interval_s: float = 0.5
    headroom: float = 1.5
    latency_tolerance: float = 1.5
    min_queue_delay_s: float = 0.1
    in_flight_limit: float = field(default=0.0, init=False)
    rate: float = field(default=math.inf, init=False)
    slow_start: bool = field(default=True, init=False)
    throttles: int = field(default=0, init=False)
    cuts: int = field(default=0, init=False)
    max_cut: float = 0.5
    _accepted: deque[float] = field(default_factory=deque, init=False, repr=False)
    _recent: deque[float] = field(
        default_factory=lambda: deque(maxlen=MIN_SAMPLES), init=False, repr=False
    )
    _updated_at: float | None = field(default=None, init=False, repr=False)
    _cut_at: float = field(default=-math.inf, init=False, repr=False)
    #: (second, shortest latency seen in it), for the windowed minimum
    _minima: deque[tuple[int, float]] = field(default_factory=deque, init=False, repr=False)
    _latency: float = field(default=0.0, init=False, repr=False)
    _latency_samples: int = field(default=0, init=False, repr=False)
    _since_gradient: int = field(default=0, init=False, repr=False)
    latency_cuts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.in_flight_limit = float(min(self.initial_in_flight, self.max_in_flight))
        self.rate = self.max_rate

    @property
    def paced(self) -> bool:
        return math.isfinite(self.rate)

    def accepted_rate(self, now: float) -> float:
        """Successes per second over the last window."""
        return self._window_count(now) / self.window_s

    def measured_capacity(self, now: float) -> tuple[float, bool] | None:
        """Accepted requests per second, and whether the measurement is trustworthy.

        Over the last ``window_s``, or over the last ``MIN_SAMPLES`` acceptances when the
        window holds fewer (a slow endpoint needs a longer look); None before any.
        """
        in_window = self._window_count(now)
        if in_window >= MIN_SAMPLES:
            return in_window / self.window_s, True
        recent = [t for t in self._recent if t > now - HISTORY_S]
        if not recent:
            return None
        return len(recent) / max(now - recent[0], MIN_SPAN_S), len(recent) >= MIN_SAMPLES

    def _window_count(self, now: float) -> int:
        while self._accepted and self._accepted[0] <= now - self.window_s:
            self._accepted.popleft()
        return len(self._accepted)

    def base_latency(self) -> float | None:
        """The shortest latency over the last ``LATENCY_WINDOW_S`` (None before any)."""
        return min((m for _, m in self._minima), default=None)

    def on_success(self, now: float, latency_s: float | None = None) -> None:
        """A request was accepted after ``latency_s``: remember it; grow the in-flight limit
        or the rate, or bound the in-flight limit when latency says requests are queueing."""
        self._accepted.append(now)
        self._recent.append(now)
        elapsed = 0.0 if self._updated_at is None else max(0.0, now - self._updated_at)
        self._updated_at = now
        if latency_s is not None and self._on_latency(now, latency_s):
            return
        if self.slow_start:
            self.in_flight_limit = min(float(self.max_in_flight), self.in_flight_limit + 1.0)
            self.slow_start = self.in_flight_limit < self.max_in_flight
            return
        # Past slow start, in flight grows by one a round trip (probing, as TCP does).
        limit = self.in_flight_limit
        self.in_flight_limit = min(float(self.max_in_flight), limit + 1.0 / max(limit, 1.0))
        grown = self.rate * (1.0 + self.growth_per_s) ** elapsed
        ceiling = max(self.headroom * self.accepted_rate(now), self.min_rate * 2)
        self.rate = min(self.max_rate, max(self.rate, min(grown, ceiling)))

    def on_throttle(self, now: float) -> None:
        """The endpoint refused a request for capacity: pace at what it really accepts."""
        self.throttles += 1
        if self.slow_start:
            self.slow_start = False
            self.in_flight_limit = float(self.max_in_flight)
        self._updated_at = now
        if now - self._cut_at < self.cut_interval_s:
            return
        measured = self.measured_capacity(now)
        if measured is None:  # nothing accepted lately: halve (or start slow)
            cut = self.rate * self.max_cut if self.paced else 2.0 * self.min_rate
        else:
            capacity, trusted = measured
            cut = min(self.rate, capacity) * self.backoff
            if self.paced and not trusted:  # a thin measurement never cuts by more than max_cut
                cut = max(cut, self.rate * self.max_cut)
        self.rate = min(self.max_rate, max(self.min_rate, cut))
        self._cut_at = now
        self.cuts += 1

    def _on_latency(self, now: float, latency_s: float) -> bool:
        """Track latency. True while requests queue at the endpoint (then nothing grows);
        about once a round trip it then also applies the gradient."""
        second = int(now)
        if self._minima and self._minima[-1][0] == second:
            if latency_s < self._minima[-1][1]:
                self._minima[-1] = (second, latency_s)
        else:
            self._minima.append((second, latency_s))
        while self._minima[0][0] <= now - LATENCY_WINDOW_S:
            self._minima.popleft()
        self._latency_samples += 1
        weight = 0.2 if self._latency_samples > 1 else 1.0
        self._latency += weight * (latency_s - self._latency)
        self._since_gradient += 1
        base = self.base_latency() or latency_s
        current = self._latency
        queueing = (
            not self.slow_start  # the ramp's own burst says little; judge once it is over
            and self._latency_samples >= MIN_LATENCY_SAMPLES
            and current - base >= self.min_queue_delay_s
            and current > self.latency_tolerance * base
        )
        if not queueing:
            return False
        if self._since_gradient >= max(1.0, self.in_flight_limit / 2):
            # Shrink toward where latency is tolerable; √limit keeps a small queue so the
            # endpoint never waits for the next request.
            self._since_gradient = 0
            gradient = max(0.5, min(1.0, self.latency_tolerance * base / current))
            target = self.in_flight_limit * gradient + math.sqrt(self.in_flight_limit)
            limit = 0.5 * self.in_flight_limit + 0.5 * target
            floor = float(min(self.initial_in_flight, self.max_in_flight))
            self.in_flight_limit = max(floor, min(self.in_flight_limit, limit))
            self.slow_start = False
            self.latency_cuts += 1
        return True
