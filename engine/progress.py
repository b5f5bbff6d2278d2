"""Feedback while a run goes: a rich progress bar on a terminal, log lines otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Protocol

from engine.config import ProgressMode
from engine.stats import RunStats

__all__ = ["Progress", "make_progress"]

log = logging.getLogger("engine.progress")


class Progress(Protocol):
    def start(self, total_rows: int | None) -> None: ...
    def update(self, stats: RunStats) -> None: ...
    def stop(self) -> None: ...


class NullProgress:
    def start(self, total_rows: int | None) -> None:
        pass

    def update(self, stats: RunStats) -> None:
        pass

    def stop(self) -> None:
        pass


class LogProgress:
    """One plain line per interval: what Airflow's task log shows well."""

    def __init__(self) -> None:
        self._total: int | None = None
        self._last: tuple[float, int] | None = None  # (when, requests) at the previous line

    def _requests_per_s(self, stats: RunStats) -> float:
        """Requests per second since the previous line (since the start for the first)."""
        now = time.monotonic()
        when, requests = self._last or (stats.started_at, 0)
        self._last = (now, stats.requests)
        return (stats.requests - requests) / (now - when) if now > when else 0.0

    def start(self, total_rows: int | None) -> None:
        self._total = total_rows

    def update(self, stats: RunStats) -> None:
        done = stats.rows_scored + stats.rows_rejected + stats.rows_skipped
        of = f"/{self._total:,}" if self._total else ""
        fields = {
            "rows_done": done,
            "rows_total": self._total,
            "rows_rejected": stats.rows_rejected,
            "rows_per_s": round(stats.rows_per_s(), 1),
            "requests": stats.requests,
            "requests_per_s": round(self._requests_per_s(stats), 2),
            "throttled_429": stats.throttled_429,
            "throttled_share": round(stats.throttled_share, 4),
            "retries": dict(stats.retries),
            "requests_hedged": stats.requests_hedged,
            "requests_abandoned": stats.requests_abandoned,
            **stats.limits(),
        }
        pacing = fields["pacing_rps"]
        message = (
            f"progress: {done:,}{of} rows ({stats.rows_rejected:,} rejected), "
            f"{fields['rows_per_s']:,.0f} rows/s, {stats.requests} requests "
            f"(now {fields['requests_per_s']:,.1f}/s"
            + (f", paced at {pacing:,.1f}/s" if pacing else "")
            + f"), {stats.throttled_429} throttled ({stats.throttled_share:.1%}), "
            f"{sum(stats.retries.values())} retries"
            + (f", {stats.requests_hedged} slow sent twice" if stats.requests_hedged else "")
            + (f", {stats.requests_abandoned} hung, resent" if stats.requests_abandoned else "")
        )
        log.info(message, extra={"event": "progress", "fields": fields})

    def stop(self) -> None:
        pass


class BarProgress:
    """A rich progress bar on stderr."""

    #: A bar is read continuously: refresh it often (log lines keep the configured interval).
    interval_s = 0.25

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            transient=False,
        )
        self._task = self._bar.add_task("scoring", total=None, detail="")

    def start(self, total_rows: int | None) -> None:
        self._bar.update(self._task, total=total_rows)
        self._bar.start()

    def update(self, stats: RunStats) -> None:
        done = stats.rows_scored + stats.rows_rejected + stats.rows_skipped
        detail = (
            f"{stats.rows_per_s():,.0f} rows/s · {stats.throttled_429} throttled "
            f"({stats.throttled_share:.1%})"
        )
        pacing = stats.limits()["pacing_rps"]
        if pacing:
            detail += f" · paced {pacing:,.1f} req/s"
        if stats.rows_rejected:
            detail += f" · {stats.rows_rejected} rejected"
        self._bar.update(self._task, completed=done, detail=detail)

    def stop(self) -> None:
        self._bar.stop()


def make_progress(mode: ProgressMode) -> Progress:
    if mode == "off":
        return NullProgress()
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return BarProgress()
    return LogProgress()


async def report_every(progress: Progress, stats: RunStats, interval_s: float) -> None:
    """Update ``progress`` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        progress.update(stats)
