"""Requests that are read and never answered (a dead backend behind a live connection) cost
the run a second or so, not forever: each gets a second copy once it has taken 3x the
endpoint's p99 (1 s at least), and the first answer is kept; with copies turned off
(``hedge=False``, ``--no-hedge``) each is abandoned after 10x the p99 (30 s at least) and
sent again.

Both the emulator and the engine run on one virtual clock that moves only when the loop is
idle (tests/virtual_time.py), so the waits play out at once, and a busy machine adds no
time: the emulated duration is what the engine's own timing decisions made it.
"""

from __future__ import annotations

from engine.emulator import Faults
from tests.virtual_time import score_on_virtual_clock


def test_two_hung_requests_in_a_thousand_cost_a_second_each_and_lose_no_row(tmp_path) -> None:
    faults = Faults(hang_every=500, latency_ms=10.0)  # 2 of the 1000 requests never answered
    done = score_on_virtual_clock(tmp_path, faults, rows=100_000, seed=3)
    summary, scorer, accounting = done.summary, done.scorer, done.accounting

    assert done.predictions == done.expected
    assert accounting["hung"] >= 2
    assert summary.hedges_won == accounting["hung"]  # each hung request's copy answered
    assert summary.requests_hedged == summary.hedges_won
    assert summary.requests_abandoned == 0
    # each hung request waited about the 1 s hedge floor: the longest waits of the run
    waits = sorted(scorer.stats.latencies_s)[-summary.hedges_won :]
    assert all(1.0 <= wait < 2.0 for wait in waits), waits


def test_with_copies_turned_off_each_hung_request_is_abandoned_at_the_floor(tmp_path) -> None:
    faults = Faults(hang_every=500, latency_ms=10.0)
    done = score_on_virtual_clock(
        tmp_path, faults, rows=100_000, seed=3, options={"hedge": False}
    )
    summary, scorer, accounting = done.summary, done.scorer, done.accounting

    assert done.predictions == done.expected
    assert accounting["hung"] >= 2
    assert summary.requests_hedged == 0
    assert summary.requests_abandoned == accounting["hung"]
    # each hang costs the 30 s floor, not the 300 s request timeout
    waits = sorted(scorer.stats.latencies_s)[-summary.requests_abandoned :]
    assert all(30.0 <= wait < 60.0 for wait in waits), waits
