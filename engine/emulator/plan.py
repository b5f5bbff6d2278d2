"""Per-request fault decisions and the QPS token bucket. Pure and seeded: no I/O, no clock.

A request's decisions depend only on ``(seed, request number)``, through a ``random.Random``
seeded with both, so a run repeats whenever its requests arrive in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from engine.emulator.config import Faults, TokenFaults

__all__ = ["RequestPlan", "TokenBucket", "TokenPlan", "plan_request", "plan_token_request"]

Outcome = Literal["ok", "error_500", "error_503", "reset_before", "reset_after"]


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What happens to one data-plane request.

    Attributes:
        outcome: ``ok``, an injected error status, or a dropped connection before/after the model.
        latency_s: how long the request waits before the model runs.
    """

    outcome: Outcome
    latency_s: float


def _rng(seed: int, number: int, salt: str) -> random.Random:
    return random.Random(f"{salt}:{seed}:{number}")  # str seeds hash with SHA-512: stable


def plan_request(faults: Faults, number: int) -> RequestPlan:
    """Decide request ``number``'s fate under ``faults``."""
    rng = _rng(faults.seed, number, "request")
    draw = rng.random()
    outcome: Outcome = "ok"
    for name, rate in (
        ("error_500", faults.error_500_rate),
        ("error_503", faults.error_503_rate),
        ("reset_before", faults.reset_before_rate),
    ):
        if draw < rate:
            outcome = name  # type: ignore[assignment]
            break
        draw -= rate
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
    """A token bucket on the caller's clock: ``rate`` per second, holding up to ``burst``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        elapsed = max(0.0, now - self._updated)
        self._level = min(self.burst, self._level + elapsed * self.rate)
        self._updated = now
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self.rate
