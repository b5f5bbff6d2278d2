"""Counters for tests and benchmarks: what the emulator saw and did.

Per endpoint: data-plane requests by status, dropped connections, 200 answers the client had
gone before (``answers_lost``: its timeout, a Ctrl-C; not counted by status), per-row
``rows_scored`` (the model ran, even if the answer was lost) and ``rows_delivered`` (a 200
was written), 429s by cause (``throttled_rate``: the QPS bucket; ``throttled_concurrency``:
the concurrency cap in 429 mode; ``throttled_random``: ``throttle_rate``; ``throttled``: their
sum), requests left hanging (``hung`` in all, ``hanging`` now), in-flight peaks, and requests
that carried an expiring or expired token. Cumulative counts polled over time give the
accepted rate. Globally: tokens issued by kind and token requests by status. Snapshots are
plain dicts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Accounting", "EndpointAccounting"]


@dataclass
class EndpointAccounting:
    """One endpoint's counters (see the module docstring)."""

    requests_by_status: Counter[int] = field(default_factory=Counter)
    rows_scored: Counter[str] = field(default_factory=Counter)
    rows_delivered: Counter[str] = field(default_factory=Counter)
    resets_before: int = 0
    resets_after: int = 0
    answers_lost: int = 0
    throttled_rate: int = 0
    throttled_concurrency: int = 0
    throttled_random: int = 0
    hung: int = 0
    hanging: int = 0
    expiring_token_requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    admitted: int = 0
    peak_admitted: int = 0
    requests_total: int = 0

    @property
    def throttled(self) -> int:
        """Every 429 the emulator chose to answer, whatever the cause."""
        return self.throttled_rate + self.throttled_concurrency + self.throttled_random

    def enter(self) -> None:
        """A request got past authentication."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        """That request finished, one way or another."""
        self.in_flight -= 1

    def admit(self) -> None:
        """A request took a concurrency slot."""
        self.admitted += 1
        self.peak_admitted = max(self.peak_admitted, self.admitted)

    def release(self) -> None:
        """That request gave its slot back."""
        self.admitted -= 1

    def snapshot(self) -> dict[str, Any]:
        """Plain-dict copy (status keys are ints)."""
        return {
            "requests_total": self.requests_total,
            "requests_by_status": dict(self.requests_by_status),
            "rows_scored": dict(self.rows_scored),
            "rows_delivered": dict(self.rows_delivered),
            "resets_before": self.resets_before,
            "resets_after": self.resets_after,
            "answers_lost": self.answers_lost,
            "throttled": self.throttled,
            "throttled_rate": self.throttled_rate,
            "throttled_concurrency": self.throttled_concurrency,
            "throttled_random": self.throttled_random,
            "hung": self.hung,
            "hanging": self.hanging,
            "expiring_token_requests": self.expiring_token_requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "peak_admitted": self.peak_admitted,
        }

    def reset(self) -> None:
        """Zero every counter except the requests still in flight (or hanging)."""
        in_flight, admitted, hanging = self.in_flight, self.admitted, self.hanging
        self.__init__()  # type: ignore[misc]
        self.in_flight, self.admitted, self.hanging = in_flight, admitted, hanging


@dataclass
class Accounting:
    """All counters of one emulator."""

    endpoints: dict[str, EndpointAccounting]
    tokens_issued: Counter[str] = field(default_factory=Counter)
    #: data-plane tokens issued, by grant: "client_credentials" (one step) or "jwt-bearer"
    data_plane_grants: Counter[str] = field(default_factory=Counter)
    token_requests_by_status: Counter[int] = field(default_factory=Counter)
    token_timeouts: int = 0
    expiring_token_requests: int = 0

    @classmethod
    def for_endpoints(cls, names: list[str]) -> Accounting:
        """Empty counters for ``names``."""
        return cls({name: EndpointAccounting() for name in names})

    def snapshot(self, name: str | None = None) -> dict[str, Any]:
        """One endpoint's counters, or everything (``{"endpoints": {...}, "tokens_issued": ...}``).

        Raises:
            KeyError: no endpoint ``name``.
        """
        if name is not None:
            return self.endpoints[name].snapshot()
        return {
            "endpoints": {n: e.snapshot() for n, e in self.endpoints.items()},
            "tokens_issued": {"workspace": 0, "data_plane": 0, **self.tokens_issued},
            "data_plane_grants": dict(self.data_plane_grants),
            "token_requests_by_status": dict(self.token_requests_by_status),
            "token_timeouts": self.token_timeouts,
            "expiring_token_requests": self.expiring_token_requests,
        }

    def reset(self) -> None:
        """Zero every counter."""
        for endpoint in self.endpoints.values():
            endpoint.reset()
        self.tokens_issued.clear()
        self.data_plane_grants.clear()
        self.token_requests_by_status.clear()
        self.token_timeouts = 0
        self.expiring_token_requests = 0
