"""Requests that are read and never answered (a dead backend behind a live connection) cost
the run seconds, not forever: each is abandoned after 10x the endpoint's p99 (30 s at least)
and sent again.

Time runs 20x fast for both the emulator and the engine (the chaos test's injected clock), so
the 30 s floor plays out in about 1.5 s of wall time.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from engine.config import ScoreConfig
from engine.emulator import Emulator, EmulatorConfig, EndpointConfig, Faults
from engine.pipeline import MemorySink, prepare, run
from engine.source import open_source
from engine.transport import Transport
from tests.helpers import credentials_for, expected_predictions
from tests.integration.test_chaos import WarpClock

ENDPOINT = "demo-regressor"


async def test_two_hung_requests_in_a_thousand_cost_seconds_and_lose_no_row(tmp_path) -> None:
    clock = WarpClock()
    faults = Faults(hang_every=500, latency_ms=10.0)  # 2 of the 1000 requests never answered
    config = EmulatorConfig(endpoints=(EndpointConfig(name=ENDPOINT, faults=faults),))
    async with Emulator(config, clock=clock, sleep=clock.sleep) as emulator:
        table = emulator.model(ENDPOINT).sample(100_000, seed=3)
        pq.write_table(table, tmp_path / "in.parquet")
        source = open_source(tmp_path / "in.parquet")
        sink = MemorySink()
        settings = ScoreConfig(endpoint=ENDPOINT, batch_rows=100, progress="off")  # defaults
        started = clock()
        async with Transport() as transport:
            scorer = await prepare(
                source, credentials_for(emulator), settings, transport,
                clock=clock, sleep=clock.sleep,
            )
            summary = await run(source, sink, scorer, transport)
        emulated_s = clock() - started
        accounting = emulator.accounting(ENDPOINT)

    assert sink.table().column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    assert accounting["hung"] >= 2
    assert summary.requests_abandoned == accounting["hung"]
    # each hang costs the 30 s floor (plus a check interval), not the 300 s request timeout
    assert emulated_s < 120.0
