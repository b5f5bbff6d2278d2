"""Pure: how long one request may go unanswered before it is taken for hung.

A dead backend behind a live connection never answers, and the request timeout (Databricks'
297 s execution limit) is far too long to wait behind one batch; so the bound follows the
endpoint's observed latency (many times its p99, with a floor), and the dispatcher abandons
and resends a request that passes it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["HANG_FLOOR_S", "HangBound"]

#: A request unanswered this many times the endpoint's p99 latency is taken for hung...
HANG_P99_FACTOR = 10.0
#: ...but never sooner than this (a model may be slow now and then), in seconds.
HANG_FLOOR_S = 30.0
#: Answers seen before the p99 is trusted (until then a request may take the whole timeout).
HANG_MIN_SAMPLES = 20
#: Latencies kept for the p99, and how often it is recomputed.
HANG_SAMPLES = 512
HANG_RECOMPUTE_EVERY = 64


@dataclass(kw_only=True)
class HangBound:
    """How long to wait for one answer before abandoning the request and sending it again.

    A dead backend behind a live connection never answers; waiting for the request timeout
    (Databricks' 297 s) would stall the run behind one batch. So a request gets
    ``factor`` × the p99 of recent latencies, at least ``floor_s``, at most ``ceiling_s``.

    Attributes:
        ceiling_s: the request timeout (``--request-timeout``): never wait longer.
    """

    ceiling_s: float = 300.0
    floor_s: float = HANG_FLOOR_S
    factor: float = HANG_P99_FACTOR
    p99_s: float | None = field(default=None, init=False)
    _recent: deque[float] = field(
        default_factory=lambda: deque(maxlen=HANG_SAMPLES), init=False, repr=False
    )
    _since: int = field(default=0, init=False, repr=False)

    def record(self, latency_s: float) -> None:
        """An accepted answer came after ``latency_s`` (only answers that ran the model say
        how long the model takes: a 429 comes back at once), or a request was abandoned
        after waiting ``latency_s`` (so an endpoint that became slow raises the bound
        instead of having every request abandoned)."""
        self._recent.append(latency_s)
        self._since += 1
        if len(self._recent) >= HANG_MIN_SAMPLES and (
            self.p99_s is None or self._since >= HANG_RECOMPUTE_EVERY
        ):
            self._since = 0
            ordered = sorted(self._recent)
            self.p99_s = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def deadline_s(self) -> float:
        """Seconds a request may take before it is abandoned: the request timeout until
        ``HANG_MIN_SAMPLES`` answers are known."""
        if self.p99_s is None:
            return self.ceiling_s
        return min(self.ceiling_s, max(self.floor_s, self.factor * self.p99_s))
