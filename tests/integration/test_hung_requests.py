"""Requests that are read and never answered (a dead backend behind a live connection) cost
the run seconds, not forever: each is abandoned after 10x the endpoint's p99 (30 s at least)
and sent again.

Both the emulator and the engine run on one virtual clock that moves only when the loop is
idle (tests/virtual_time.py), so the 30 s floor plays out at once, and a busy machine adds no
time: the emulated duration is what the engine's own timing decisions made it.
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


def test_two_hung_requests_in_a_thousand_cost_seconds_and_lose_no_row(tmp_path) -> None:
    clock = VirtualClock()
    with asyncio.Runner(loop_factory=lambda: virtual_loop(clock)) as runner:
        runner.run(_hung_requests_run(clock, tmp_path))


async def _hung_requests_run(clock: VirtualClock, tmp_path) -> None:
    faults = Faults(hang_every=500, latency_ms=10.0)  # 2 of the 1000 requests never answered
    config = EmulatorConfig(endpoints=(EndpointConfig(name=ENDPOINT, faults=faults),))
    async with Emulator(config, clock=clock, sleep=clock.sleep) as emulator:
        table = emulator.model(ENDPOINT).sample(100_000, seed=3)
        pq.write_table(table, tmp_path / "in.parquet")
        source = open_source(tmp_path / "in.parquet")
        sink = MemorySink()
        settings = ScoreConfig(endpoint=ENDPOINT, batch_rows=100, progress="off")  # defaults
        async with Transport() as transport:
            scorer = await prepare(
                source, credentials_for(emulator), settings, transport,
                clock=clock, sleep=clock.sleep,
            )
            summary = await run(source, sink, scorer, transport)
        accounting = emulator.accounting(ENDPOINT)

    assert sink.table().column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    assert accounting["hung"] >= 2
    assert summary.requests_abandoned == accounting["hung"]
    # each hang costs the 30 s floor, not the 300 s request timeout
    waits = sorted(scorer.stats.latencies_s)[-summary.requests_abandoned :]
    assert all(30.0 <= wait < 60.0 for wait in waits), waits
