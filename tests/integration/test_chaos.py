"""Every fault at once, on an endpoint the engine has never seen, with 75-second tokens.

Time runs 20x fast for both the emulator and the engine (one injected clock and sleep), so
token lifetimes, Retry-After waits and restarts play out in seconds of wall time.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.config import ScoreConfig
from engine.emulator import POISON_VALUE, Emulator, EmulatorConfig, EndpointConfig, Faults
from engine.emulator.models import Model
from engine.pipeline import MemorySink, run
from engine.prepare import prepare
from engine.source import open_source
from engine.transport import Transport
from tests.helpers import credentials_for

WARP = 20.0
ENDPOINT = "churn-scorer"


class WarpClock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self.start) * WARP

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / WARP)


def churn(table: pa.Table) -> list[dict]:
    tenure = table.column("tenure_months").to_numpy()
    seats = table.column("seats").to_numpy().astype(np.float64)
    fee = table.column("monthly_fee").to_numpy().astype(np.float64)
    enterprise = pc.equal(table.column("plan"), "enterprise").to_numpy(zero_copy_only=False)
    risk = 1.0 / (1.0 + tenure / 12.0) + fee / 1000.0 - seats / 500.0 - 0.25 * enterprise
    return [{"risk": float(r), "tier": "high" if r > 0.5 else "low"} for r in risk]


churn.signature = {"tenure_months": "double", "seats": "long", "plan": "string", "monthly_fee": "float"}
churn.output = {
    "type": "object",
    "properties": {"risk": {"type": "number", "format": "double"}, "tier": {"type": "string"}},
}


def customer_table(rows: int, poison_rows: list[int]) -> pa.Table:
    rng = np.random.default_rng(99)
    seats = rng.integers(1, 400, rows).astype(np.int32)
    seats[poison_rows] = POISON_VALUE
    return pa.table({
        "customer_id": pa.array(np.arange(rows, dtype=np.int64) + 10_000),
        "tenure_months": pa.array(rng.uniform(0, 120, rows).astype(np.float32)),
        "seats": pa.array(seats),
        "plan": pa.array(rng.choice(["free", "team", "enterprise"], rows)).dictionary_encode(),
        "monthly_fee": pa.array(np.round(rng.uniform(0, 900, rows), 2)),
        "region": pa.array(rng.choice(["emea", "amer", "apac"], rows)),
    })


async def test_everything_at_once_loses_nothing_and_never_sends_an_expiring_token(tmp_path) -> None:
    clock = WarpClock()
    model = Model.from_callable(churn, name="churn_model")
    config = EmulatorConfig(
        endpoints=(EndpointConfig(name=ENDPOINT, model=model, start_duration_s=20.0),),
        token_ttl_s=75.0,
    )
    poison_rows = [7, 4_321, 4_322, 17_000]
    table = customer_table(24_000, poison_rows)
    pq.write_table(table, tmp_path / "customers.parquet", row_group_size=5_000)
    async with Emulator(config, clock=clock, sleep=clock.sleep) as emulator:
        emulator.set_faults(ENDPOINT, Faults(
            seed=3, qps_limit=4.0, qps_burst=2.0, retry_after=None, error_503_rate=0.05,
            error_500_rate=0.01, reset_before_rate=0.02, reset_after_rate=0.03,
            latency_ms=20.0, jitter_ms=20.0, tail_prob=0.02, tail_ms=2_000.0,
        ))

        async def stop_and_restart() -> None:
            while sum(emulator.accounting(ENDPOINT)["rows_delivered"].values()) < 8_000:
                await asyncio.sleep(0.01)
            emulator.stop_endpoint(ENDPOINT)
            while emulator.accounting(ENDPOINT)["requests_by_status"].get(400, 0) < 10:
                await asyncio.sleep(0.01)
            emulator.start_endpoint(ENDPOINT)

        source = open_source(tmp_path / "customers.parquet")
        sink = MemorySink()
        settings = ScoreConfig(endpoint=ENDPOINT, batch_rows=50, progress="off")
        chaos = asyncio.create_task(stop_and_restart())
        async with Transport() as transport:
            scorer = await prepare(
                source, credentials_for(emulator), settings, transport,
                clock=clock, sleep=clock.sleep,
            )
            summary = await run(source, sink, scorer, transport)
        await chaos
        accounting = emulator.accounting(ENDPOINT)
        everything = emulator.accounting()
        result = sink.table()

    good = [i for i in range(table.num_rows) if i not in poison_rows]
    expected = model.predict(open_source(table.take(good)).reader().read_all().cast(
        pa.schema([("customer_id", pa.int64()), ("tenure_months", pa.float64()),
                   ("seats", pa.int64()), ("plan", pa.string()), ("monthly_fee", pa.float32()),
                   ("region", pa.string())])
    ))
    predictions = result.column("prediction").to_pylist()
    errors = result.column("error").to_pylist()

    assert result.num_rows == table.num_rows
    assert result.column("customer_id").equals(table.column("customer_id"))  # in order
    assert [predictions[i] for i in good] == expected
    assert {i for i, e in enumerate(errors) if e is not None} == set(poison_rows)
    assert summary.rows_rejected == len(poison_rows)
    # every good row delivered exactly once; faults really happened
    delivered = accounting["rows_delivered"]
    assert len(delivered) == len(good) and set(delivered.values()) == {1}
    statuses = accounting["requests_by_status"]
    assert statuses.get(429, 0) > 0 and statuses.get(503, 0) > 0 and statuses.get(400, 0) > 0
    # throttled, so the run ended paced, near the 4 requests/s limit; the share is reported
    assert summary.pacing_rps is not None and 2.0 < summary.pacing_rps <= 6.0
    assert summary.throttled_share == round(summary.throttled_429 / summary.requests, 4) > 0
    assert accounting["resets_after"] > 0 and accounting["resets_before"] > 0
    # 75 s tokens over a run of several minutes of emulator time: refreshed, never expiring
    assert everything["tokens_issued"]["data_plane"] >= 3
    assert everything["expiring_token_requests"] == 0
    assert accounting["expiring_token_requests"] == 0
