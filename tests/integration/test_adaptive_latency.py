"""Rising latency bounds requests in flight: an endpoint at its provisioned concurrency that
queues (no 429s) is kept busy without a queue of 64 requests waiting at it. Provisioned
concurrency that refuses (429) past its slots and scales up mid-run is used once it has.

Both the emulator and the engine run on one virtual clock that moves only when the loop is
idle (tests/virtual_time.py): the 100 ms the emulator injects is measured as exactly 100 ms
plus the queueing, whatever the machine's speed or load. (It ran on a 20x warped wall clock
before, where 5 ms of real scheduling delay on a busy machine read as 100 ms of latency and
once left the limit at 13.4.)
"""

from __future__ import annotations

from engine.emulator import Faults, LimitStep
from tests.virtual_time import score_on_virtual_clock


def test_a_queueing_endpoint_gets_few_requests_in_flight_and_every_row(tmp_path) -> None:
    faults = Faults(max_concurrency=4, concurrency_mode="queue", latency_ms=100.0)
    done = score_on_virtual_clock(tmp_path, faults, rows=30_000, seed=8)

    controller = done.scorer.stats.controller
    assert controller is not None
    assert done.predictions == done.expected
    assert done.summary.throttled_429 == 0 and done.accounting["peak_admitted"] == 4
    # Slow start overshoots until latency has been seen; then the limit comes down to a few
    # times the endpoint's 4 slots instead of the 64 workers.
    assert controller.latency_cuts > 0
    assert controller.in_flight_limit <= 12


def test_provisioned_concurrency_that_scales_up_mid_run_is_used(tmp_path) -> None:
    # 4 slots of 50 ms (80 req/s), 429 past them; 8 from 5 s on; 1,280 requests of 100 rows.
    steps = (LimitStep(at_s=5.0, max_concurrency=8),)
    faults = Faults(max_concurrency=4, concurrency_mode="429", latency_ms=50.0, schedule=steps)
    done = score_on_virtual_clock(tmp_path, faults, rows=128_000, seed=9)

    controller = done.scorer.stats.controller
    assert controller is not None
    assert done.predictions == done.expected
    assert controller.concurrency_cap == 8  # learned at 4, tried higher once it scaled up
    assert done.accounting["peak_admitted"] == 8
    # and paced for 8 slots of 50 ms, not 4 (the run's wall time is no measure here: virtual
    # time may jump while a thread reads or writes)
    assert controller.capacity is not None and controller.capacity >= 0.9 * 8 / 0.050
    assert done.summary.throttled_429 <= 0.05 * 1280
