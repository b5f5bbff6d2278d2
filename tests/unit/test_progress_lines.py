"""The progress log line (what Airflow's task log shows): slow and hung requests are said."""

from __future__ import annotations

import logging

import pytest

from engine.progress import LogProgress
from engine.stats import RunStats


def _line(stats: RunStats, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    progress = LogProgress()
    progress.start(1_000)
    with caplog.at_level(logging.INFO, logger="engine.progress"):
        progress.update(stats)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("progress:")]
    return record


def test_a_quiet_run_s_line_says_nothing_of_slow_or_hung_requests(caplog) -> None:
    record = _line(RunStats(requests=10, requests_ok=10, rows_scored=1_000), caplog)
    assert "sent twice" not in record.getMessage() and "hung" not in record.getMessage()
    assert record.fields["requests_hedged"] == 0  # type: ignore[attr-defined]


def test_slow_requests_sent_twice_and_hung_ones_resent_are_said(caplog) -> None:
    stats = RunStats(requests=12, requests_ok=10, rows_scored=1_000)
    stats.requests_hedged, stats.requests_abandoned = 2, 1
    record = _line(stats, caplog)
    assert record.getMessage().endswith(", 2 slow sent twice, 1 hung, resent")
    assert record.fields["requests_hedged"] == 2  # type: ignore[attr-defined]
    assert record.fields["requests_abandoned"] == 1  # type: ignore[attr-defined]
