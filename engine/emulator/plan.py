"""Per-request fault decisions, the limits in force, and the QPS token bucket.

Pure and seeded: no I/O, no clock. A request's decisions depend only on ``(seed, request
number)``, through a ``random.Random`` seeded with both, so a run repeats whenever its requests
arrive in the same order. Two numberings: *arrivals* (every request that reaches the limits,
for random 429s) and *admissions* (requests past the limits, for everything else).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from engine.emulator.config import KEEP, Faults, TokenFaults

__all__ = [
    "Limits",
    "RequestPlan",
    "TokenBucket",
    "TokenPlan",
    "default_burst",
    "limits_at",
    "plan_request",
    "plan_throttle",
    "plan_token_request",
]

Outcome = Literal["ok", "error_500", "error_503", "reset_before", "hang", "reset_after"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force at one moment.

    Attributes:
        qps_limit: requests per second (None: no cap).
        qps_burst: the bucket's size in requests (None when there is no cap).
        max_concurrency: requests served at once (None: no cap).
    """

    qps_limit: float | None
    qps_burst: float | None
    max_concurrency: int | None


def default_burst(qps_limit: float) -> float:
    """A tenth of a second of requests at ``qps_limit``, at least one request."""
    return max(1.0, qps_limit / 10.0)


def limits_at(faults: Faults, elapsed_s: float) -> Limits:
    """The limits ``elapsed_s`` seconds into ``faults.schedule`` (steps at or before it apply)."""
    qps, concurrency = faults.qps_limit, faults.max_concurrency
    for step in faults.schedule:
        if step.at_s > elapsed_s:
            break
        if step.qps_limit is not KEEP:
            qps = step.qps_limit
        if step.max_concurrency is not KEEP:
            concurrency = step.max_concurrency
    if qps is None:
        return Limits(None, None, concurrency)
    burst = faults.qps_burst if faults.qps_burst is not None else default_burst(qps)
    return Limits(qps, burst, concurrency)


def plan_throttle(faults: Faults, arrival: int) -> bool:
    """Whether arrival number ``arrival`` gets a random 429 (unrelated to load)."""
    if faults.throttle_rate <= 0:
        return False
    return _rng(faults.seed, arrival, "throttle").random() < faults.throttle_rate


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What happens to one data-plane request.

    Attributes:
        outcome: ``ok``, an injected error status, a dropped connection before/after the
            model, or ``hang`` (never answered).
        latency_s: how long the request waits before the model runs.
    """

    outcome: Outcome
    latency_s: float


def _rng(seed: int, number: int, salt: str) -> random.Random:
    return random.Random(f"{salt}:{seed}:{number}")  # str seeds hash with SHA-512: stable


def plan_request(faults: Faults, number: int) -> RequestPlan:
    """Decide admitted request ``number``'s fate under ``faults``."""
    rng = _rng(faults.seed, number, "request")
    draw = rng.random()
    outcome: Outcome = "ok"
    for name, rate in (
        ("error_500", faults.error_500_rate),
        ("error_503", faults.error_503_rate),
        ("reset_before", faults.reset_before_rate),
        ("hang", faults.hang_rate),
    ):
        if draw < rate:
            outcome = name  # type: ignore[assignment]
            break
        draw -= rate
    if faults.hang_every is not None and number % faults.hang_every == faults.hang_every - 1:
        outcome = "hang"
    if outcome == "ok" and rng.random() < faults.reset_after_rate:
        outcome = "reset_after"
    latency_ms = faults.latency_ms + faults.jitter_ms * rng.random()
    if rng.random() < faults.tail_prob:
        latency_ms += faults.tail_ms
    return RequestPlan(outcome, latency_ms / 1000.0)


@dataclass(frozen=True, slots=True)
class TokenPlan:
    """What happens to one token request.

    Attributes:
        outcome: ``ok``, ``error`` (503) or ``timeout`` (hang, then drop).
        latency_s: the wait before answering.
    """

    outcome: Literal["ok", "error", "timeout"]
    latency_s: float


def plan_token_request(faults: TokenFaults, number: int) -> TokenPlan:
    """Decide token request ``number``'s fate under ``faults``."""
    rng = _rng(faults.seed, number, "token")
    draw = rng.random()
    if draw < faults.timeout_rate:
        return TokenPlan("timeout", faults.timeout_s)
    if draw < faults.timeout_rate + faults.error_rate:
        return TokenPlan("error", faults.latency_ms / 1000.0)
    return TokenPlan("ok", faults.latency_ms / 1000.0)


class TokenBucket:
    """A token bucket on the caller's clock: ``rate`` per second, holding up to ``burst``.

    It starts full. :meth:`retune` changes the rate and size in place: tokens earned at the
    old rate up to the change are kept (capped at the new size), later ones come at the new
    rate, so a limit change neither hands out a fresh burst nor takes earned tokens away.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._level = min(self.burst, self._level + elapsed * self.rate)
        self._updated = max(self._updated, now)

    def retune(self, rate: float, burst: float, now: float) -> None:
        """From ``now`` on, refill at ``rate`` up to ``burst``."""
        self._refill(now)
        self.rate, self.burst = rate, burst
        self._level = min(self._level, burst)

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        self._refill(now)
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self.rate
