"""Rising latency bounds requests in flight: an endpoint at its provisioned concurrency that
queues (no 429s) is kept busy without a queue of 64 requests waiting at it.

Both the emulator and the engine run on one virtual clock that moves only when the loop is
idle (tests/virtual_time.py): the 100 ms the emulator injects is measured as exactly 100 ms
plus the queueing, whatever the machine's speed or load. (It ran on a 20x warped wall clock
before, where 5 ms of real scheduling delay on a busy machine read as 100 ms of latency and
once left the limit at 13.4.)
"""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq

from engine.config import ScoreConfig
from engine.emulator import Emulator, EmulatorConfig, EndpointConfig, Faults
from engine.pipeline import MemorySink, run
from engine.prepare import prepare
from engine.source import open_source
from engine.transport import Transport
from tests.helpers import credentials_for, expected_predictions
from tests.virtual_time import VirtualClock, virtual_loop

ENDPOINT = "demo-regressor"


def test_a_queueing_endpoint_gets_few_requests_in_flight_and_every_row(tmp_path) -> None:
    clock = VirtualClock()
    with asyncio.Runner(loop_factory=lambda: virtual_loop(clock)) as runner:
        runner.run(_queueing_endpoint_run(clock, tmp_path))


async def _queueing_endpoint_run(clock: VirtualClock, tmp_path) -> None:
    faults = Faults(max_concurrency=4, concurrency_mode="queue", latency_ms=100.0)
    config = EmulatorConfig(endpoints=(EndpointConfig(name=ENDPOINT, faults=faults),))
    async with Emulator(config, clock=clock, sleep=clock.sleep) as emulator:
        table = emulator.model(ENDPOINT).sample(30_000, seed=8)
        pq.write_table(table, tmp_path / "in.parquet")
        source = open_source(tmp_path / "in.parquet")
        sink = MemorySink()
        settings = ScoreConfig(endpoint=ENDPOINT, batch_rows=100, progress="off")
        async with Transport() as transport:
            scorer = await prepare(
                source, credentials_for(emulator), settings, transport,
                clock=clock, sleep=clock.sleep,
            )
            summary = await run(source, sink, scorer, transport)
        accounting = emulator.accounting(ENDPOINT)

    controller = scorer.stats.controller
    assert controller is not None
    assert sink.table().column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    assert summary.throttled_429 == 0 and accounting["peak_admitted"] == 4
    # Slow start overshoots until latency has been seen; then the limit comes down to a few
    # times the endpoint's 4 slots instead of the 64 workers.
    assert controller.latency_cuts > 0
    assert controller.in_flight_limit <= 12
