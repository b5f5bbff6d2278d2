"""The command line as a user runs it: exit codes, messages, machine-readable logs."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from engine.emulator import POISON_VALUE, Emulator
from tests.helpers import regressor_table
from tests.integration.test_auth_and_secrets import run_cli

ENDPOINT = "demo-regressor"


async def test_json_logs_are_one_object_per_line_with_progress_and_summary(
    emulator: Emulator, tmp_path
) -> None:
    pq.write_table(regressor_table(emulator, 2_000, seed=31), tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"), "--progress", "log", "--log-format", "json",
    )
    assert code == 0
    lines = [json.loads(line) for line in printed.decode().splitlines() if line.strip()]
    events = {line["event"] for line in lines}
    assert {"progress", "summary"} <= events
    summary = next(line for line in lines if line["event"] == "summary")
    assert summary["rows_scored"] == 2_000 and summary["exit_code"] == 0
    assert summary["throttled_share"] == 0.0 and summary["requests_per_s"] > 0
    progress = [line for line in lines if line["event"] == "progress"][-1]
    for key in ("requests_per_s", "throttled_share", "in_flight_limit", "pacing_rps"):
        assert key in progress, key
    assert progress["pacing_rps"] is None  # never throttled, so never paced


async def test_rejected_rows_exit_3_and_summary_json_counts_them(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 500, seed=32)
    values = table.column("x0").to_pylist()
    values[42] = POISON_VALUE
    table = table.set_column(0, "x0", pa.array(values, pa.float64()))
    pq.write_table(table, tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"), "--summary", str(tmp_path / "s.json"),
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert code == 3, printed.decode()[-1000:]
    assert summary["rows_rejected"] == 1 and summary["rows_scored"] == 499
    assert b"rejected" in printed


async def test_missing_input_is_a_usage_error_without_traceback(emulator: Emulator, tmp_path) -> None:
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "nope-*.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"),
    )
    assert code == 2
    assert b"nope-*.parquet" in printed and b"Traceback" not in printed


async def test_a_bad_setting_is_named_by_its_flag_at_the_command_line(
    emulator: Emulator, tmp_path
) -> None:
    pq.write_table(regressor_table(emulator, 10, seed=34), tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"), "--batch-rows", "0", "--shard", "0/4",
    )
    assert code == 2
    assert b"error: --batch-rows must be at least 1, got 0" in printed
    assert b"`batch_rows`" not in printed
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"), "--shard", "4/4",
    )
    assert code == 2
    assert b"error: --shard 4/4: expected I/N with 0 <= I < N, e.g. --shard 0/4" in printed


async def test_run_errors_that_name_parameters_are_printed_and_summarised_with_flags(
    emulator: Emulator, tmp_path
) -> None:
    pq.write_table(regressor_table(emulator, 10, seed=35), tmp_path / "in.parquet")
    (tmp_path / "o.arrow").write_bytes(b"keep me")
    summary_path = tmp_path / "summary.json"
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"), "--summary", str(summary_path),
    )
    assert code == 2
    assert b"already exists; pass --overwrite to replace it" in printed
    assert b"`overwrite" not in printed
    assert "pass --overwrite to replace it" in json.loads(summary_path.read_text())["error"]
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"), "--overwrite", "--mode", "append",
    )
    assert code == 2
    assert b"error: --overwrite and --mode 'append' disagree" in printed


async def test_validate_passes_a_fitting_input_and_lists_every_problem_otherwise(
    emulator: Emulator, tmp_path
) -> None:
    table = regressor_table(emulator, 50, seed=33)
    pq.write_table(table, tmp_path / "good.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "validate", str(tmp_path / "good.parquet"), "--endpoint", ENDPOINT
    )
    assert code == 0 and b"OK" in printed
    broken = table.drop_columns(["x0", "x1"]).append_column("x0", pa.array(["a"] * 50))
    pq.write_table(broken, tmp_path / "bad.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "validate", str(tmp_path / "bad.parquet"), "--endpoint", ENDPOINT
    )
    assert code == 2
    assert b"x0" in printed and b"x1" in printed
    assert sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) == 0


async def test_describe_shows_state_url_and_schema(emulator: Emulator, tmp_path) -> None:
    code, printed = await run_cli(emulator, tmp_path, "describe", ENDPOINT)
    text = printed.decode()
    assert code == 0, text
    assert "READY" in text and emulator.endpoint_url(ENDPOINT) in text
    assert "x0" in text and "prediction" in text


async def test_json_logs_have_a_line_per_retry(emulator_factory, tmp_path) -> None:
    from engine.emulator import EmulatorConfig, Faults

    emulator = await emulator_factory(EmulatorConfig())
    emulator.set_faults(ENDPOINT, Faults(seed=5, error_500_rate=0.2, reset_before_rate=0.05))
    pq.write_table(regressor_table(emulator, 4_000, seed=34), tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.arrow"), "--batch-rows", "100", "--log-format", "json",
    )
    assert code == 0, printed.decode()[-2000:]
    lines = [json.loads(line) for line in printed.decode().splitlines() if line.strip()]
    retries = [line for line in lines if line["event"] == "retry"]
    summary = next(line for line in lines if line["event"] == "summary")
    assert len(retries) == sum(summary["retries"].values()) > 0
    assert {r["cause"] for r in retries} <= {"500", "reset", "connect", "timeout"}
    assert all(r["level"] == "info" and r["batch_id"] >= 0 for r in retries)
