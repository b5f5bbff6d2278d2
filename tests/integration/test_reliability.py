"""Backfill-grade reliability against the emulator: bad rows, resume, stops, state changes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.emulator import POISON_VALUE, Emulator, EmulatorConfig, EndpointConfig, Faults
from engine.errors import RunAborted
from engine.sink import read_output
from tests.helpers import credentials_for, expected_predictions, regressor_table

ENDPOINT = "demo-regressor"


def poison(table: pa.Table, rows: list[int]) -> pa.Table:
    """Put the emulator's poison marker in the first column of ``rows``."""
    name = table.column_names[0]
    values = table.column(name).to_pylist()
    for row in rows:
        values[row] = POISON_VALUE
    return table.set_column(0, name, pa.array(values, table.schema.field(name).type))


async def test_poison_rows_are_isolated_and_neighbours_scored(emulator: Emulator, tmp_path) -> None:
    table = poison(regressor_table(emulator, 4_000, seed=11), [5, 1_234, 1_235, 3_999])
    pq.write_table(table, tmp_path / "in.parquet")
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "out.arrow", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), batch_rows=1_000, progress="off",
    )
    result = read_output(str(tmp_path / "out.arrow"))
    errors = result.column("error").to_pylist()
    predictions = result.column("prediction").to_pylist()
    bad = {5, 1_234, 1_235, 3_999}
    assert summary.exit_code == 3 and summary.rows_rejected == 4
    assert {i for i, e in enumerate(errors) if e is not None} == bad
    assert all(predictions[i] is None for i in bad)
    good = [i for i in range(4_000) if i not in bad]
    want = expected_predictions(emulator, ENDPOINT, table.take(good))
    assert [predictions[i] for i in good] == want
    # bounded extra requests: about 2*log2(batch) per bad row, plus the 4 batches themselves
    assert summary.requests <= 4 + 4 * 2 * 10 + 4


async def test_max_error_rows_stops_the_run(emulator: Emulator, tmp_path) -> None:
    table = poison(regressor_table(emulator, 3_000, seed=12), list(range(0, 3_000, 100)))
    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.raises(RunAborted, match="`max_error_rows=2`"):
        await engine.ascore(
            tmp_path / "in.parquet", output=tmp_path / "out.arrow", endpoint=ENDPOINT,
            credentials=credentials_for(emulator), batch_rows=500, max_error_rows=2,
            concurrency=2, progress="off",
        )
    assert not (tmp_path / "out.arrow").exists()


async def test_endpoint_stopped_mid_run_pauses_then_finishes(emulator_factory, tmp_path) -> None:
    config = EmulatorConfig(endpoints=(EndpointConfig(name=ENDPOINT, start_duration_s=0.5),))
    emulator = await emulator_factory(config)
    emulator.set_faults(ENDPOINT, Faults(qps_limit=100.0, qps_burst=1.0))
    table = regressor_table(emulator, 30_000, seed=13)
    pq.write_table(table, tmp_path / "in.parquet")

    async def stop_then_start() -> None:
        while sum(emulator.accounting(ENDPOINT)["rows_delivered"].values()) < 5_000:
            await asyncio.sleep(0.02)
        emulator.stop_endpoint(ENDPOINT)
        while emulator.accounting(ENDPOINT)["requests_by_status"].get(400, 0) == 0:
            await asyncio.sleep(0.02)
        emulator.start_endpoint(ENDPOINT)

    chaos = asyncio.create_task(stop_then_start())
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "out.arrow", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), batch_rows=250, progress="off",
    )
    await chaos
    result = read_output(str(tmp_path / "out.arrow"))
    accounting = emulator.accounting(ENDPOINT)
    assert summary.exit_code == 0
    assert accounting["requests_by_status"].get(400, 0) > 0  # it really was stopped mid-run
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)
    assert set(accounting["rows_delivered"].values()) == {1}


def _engine_cmd(emulator: Emulator, src: Path, out: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "DATABRICKS_HOST": emulator.host,
        "DATABRICKS_CLIENT_ID": emulator.client_id,
        "DATABRICKS_CLIENT_SECRET": emulator.client_secret,
        "DATABRICKS_CONFIG_FILE": str(out.parent / "no-databrickscfg"),
    }
    cmd = [sys.executable, "-m", "engine", "score", str(src), "--endpoint", ENDPOINT,
           "--output", str(out), "--progress", "log", "--batch-rows", "200", *extra]
    return cmd, env


async def _delivered(emulator: Emulator) -> int:
    return sum(emulator.accounting(ENDPOINT)["rows_delivered"].values())


async def test_kill_9_half_way_then_rerun_completes_rescoring_little(emulator: Emulator, tmp_path) -> None:
    rows = 40_000
    emulator.set_faults(ENDPOINT, Faults(qps_limit=60.0, qps_burst=1.0))
    table = regressor_table(emulator, rows, seed=14)
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, src)
    cmd, env = _engine_cmd(emulator, src, out, "--concurrency", "4")
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL)
    while await _delivered(emulator) < rows // 2:
        assert proc.returncode is None, "the run ended before it could be killed"
        await asyncio.sleep(0.01)
    proc.kill()
    await proc.wait()
    assert not out.exists()
    scored_before = await _delivered(emulator)

    emulator.set_faults(ENDPOINT, Faults())
    rerun = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.PIPE)
    _, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    result = pq.read_table(out)
    assert result.num_rows == rows
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)
    scored = emulator.accounting(ENDPOINT)["rows_scored"]
    rescored = sum(count - 1 for count in scored.values())
    print(f"killed with {scored_before} of {rows} rows delivered; {rescored} rescored on rerun")
    assert len(scored) == rows
    assert rescored <= 0.10 * rows, f"{rescored} rows scored twice after killing at {scored_before}"
    assert not (tmp_path / ".out.parquet.checkpoint").exists()  # removed after success


async def test_sigterm_stops_gracefully_with_exit_143_and_resumes(emulator: Emulator, tmp_path) -> None:
    rows = 20_000
    emulator.set_faults(ENDPOINT, Faults(qps_limit=40.0, qps_burst=1.0))
    table = regressor_table(emulator, rows, seed=15)
    src, out = tmp_path / "in.parquet", tmp_path / "out.arrow"
    pq.write_table(table, src)
    cmd, env = _engine_cmd(emulator, src, out)
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.PIPE)
    while await _delivered(emulator) < 2_000:
        assert proc.returncode is None
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = await proc.communicate()
    text = stderr.decode()
    assert proc.returncode == 143, text[-2000:]
    assert "resume" in text
    assert not out.exists()
    delivered_at_stop = await _delivered(emulator)

    emulator.set_faults(ENDPOINT, Faults())
    rerun = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.PIPE)
    _, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    result = read_output(str(out))
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)
    scored = emulator.accounting(ENDPOINT)["rows_scored"]
    # everything delivered before the stop was checkpointed: nothing is scored twice
    assert sum(count - 1 for count in scored.values()) == 0, delivered_at_stop


async def test_no_resume_starts_clean(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 1_000, seed=16)
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    ck = tmp_path / "ck"
    kwargs = dict(endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off",
                  checkpoint=ck, batch_rows=100)
    await engine.ascore(src, output=tmp_path / "a.arrow", **kwargs)
    assert ck.exists()  # an explicit checkpoint directory is kept
    emulator.reset_accounting()
    summary = await engine.ascore(src, output=tmp_path / "b.arrow", **kwargs)
    assert summary.rows_skipped == 1_000 and emulator.accounting(ENDPOINT)["requests_total"] == 0
    summary = await engine.ascore(src, output=tmp_path / "c.arrow", resume=False, **kwargs)
    assert summary.rows_scored == 1_000 and summary.rows_skipped == 0


async def test_stopped_endpoint_is_an_error_naming_the_fix(emulator_factory, tmp_path) -> None:
    config = EmulatorConfig(endpoints=(EndpointConfig(name=ENDPOINT, start_stopped=True),))
    emulator = await emulator_factory(config)
    pq.write_table(regressor_table(emulator, 10, seed=17), tmp_path / "in.parquet")
    with pytest.raises(engine.EndpointError, match="`start_if_stopped=True`") as info:
        await engine.ascore(tmp_path / "in.parquet", output=tmp_path / "o.arrow", endpoint=ENDPOINT,
                            credentials=credentials_for(emulator))
    assert info.value.exit_code == 2
    assert emulator.endpoint_state(ENDPOINT)["ready"] == "NOT_READY"


async def test_start_if_stopped_starts_the_endpoint_and_scores(emulator_factory, tmp_path) -> None:
    config = EmulatorConfig(
        endpoints=(EndpointConfig(name=ENDPOINT, start_stopped=True, start_duration_s=0.3),)
    )
    emulator = await emulator_factory(config)
    table = regressor_table(emulator, 1_000, seed=18)
    pq.write_table(table, tmp_path / "in.parquet")
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "o.arrow", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), start_if_stopped=True, wait_ready_s=30,
        progress="off",
    )
    assert summary.exit_code == 0
    assert emulator.endpoint_state(ENDPOINT)["ready"] == "READY"
    result = read_output(str(tmp_path / "o.arrow"))
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)


async def test_wait_ready_waits_for_an_update_in_progress(emulator_factory, tmp_path) -> None:
    config = EmulatorConfig(
        endpoints=(EndpointConfig(name=ENDPOINT, start_stopped=True, start_duration_s=0.5),)
    )
    emulator = await emulator_factory(config)
    emulator.start_endpoint(ENDPOINT)  # someone else started it: IN_PROGRESS for 0.5 s
    pq.write_table(regressor_table(emulator, 100, seed=19), tmp_path / "in.parquet")
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "o.arrow", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), wait_ready_s=30, progress="off",
    )
    assert summary.exit_code == 0 and summary.rows_scored == 100


async def test_changed_input_redoes_only_the_batches_that_changed(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 2_000, seed=20)
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    kwargs = dict(endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off",
                  checkpoint=tmp_path / "ck", batch_rows=100)
    await engine.ascore(src, output=tmp_path / "a.arrow", **kwargs)
    values = table.column("x0").to_pylist()
    values[150] += 1.0  # one row of batch 1 changes
    changed = table.set_column(0, "x0", pa.array(values, pa.float64()))
    pq.write_table(changed, src)
    emulator.reset_accounting()
    summary = await engine.ascore(src, output=tmp_path / "b.arrow", **kwargs)
    assert emulator.accounting(ENDPOINT)["requests_total"] == 1
    assert summary.rows_scored == 100 and summary.rows_skipped == 1_900
    result = read_output(str(tmp_path / "b.arrow"))
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, changed)


async def test_after_sigint_no_paced_request_leaves(emulator: Emulator, tmp_path) -> None:
    # --qps 5 keeps most batches waiting for their turn in the pacer: none of them is sent
    # after the signal (the emulator once counted 70), only those already in flight finish.
    emulator.set_faults(ENDPOINT, Faults(latency_ms=100.0))
    table = regressor_table(emulator, 20_000, seed=17)
    src, out = tmp_path / "in.parquet", tmp_path / "out.arrow"
    pq.write_table(table, src)
    cmd, env = _engine_cmd(emulator, src, out)
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--qps", "5", env=env, stderr=asyncio.subprocess.PIPE
    )
    while emulator.accounting(ENDPOINT)["requests_total"] < 5:
        assert proc.returncode is None
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    sent_at_signal = emulator.accounting(ENDPOINT)["requests_total"]
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    sent_after = emulator.accounting(ENDPOINT)["requests_total"] - sent_at_signal
    assert sent_after <= 2, f"{sent_after} requests left after SIGINT"
