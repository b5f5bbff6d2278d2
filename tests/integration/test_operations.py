"""Backfill-grade operations: slow starts, one run per output, broken disks, summaries.

Every fault is real or injected at the boundary (a full disk is pyarrow writing to
/dev/full; a read-only directory is ``chmod``/``chattr +i``); time-based behaviour runs on
the chaos test's 20x clock, so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.checkpoint import Checkpoint
from engine.config import ScoreConfig
from engine.emulator import Emulator, EmulatorConfig, EndpointConfig, Faults
from engine.errors import EndpointError, RunLocked, StorageError
from engine.pipeline import MemorySink, run
from engine.prepare import prepare
from engine.runlock import RunLock, lock_path
from engine.sink import read_output
from engine.source import open_source
from engine.transport import Transport
from tests.helpers import credentials_for, expected_predictions, regressor_table
from tests.integration.test_auth_and_secrets import run_cli
from tests.integration.test_chaos import WarpClock

ENDPOINT = "demo-regressor"


def _cli_env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(
        DATABRICKS_HOST=emulator.host,
        DATABRICKS_CLIENT_ID=emulator.client_id,
        DATABRICKS_CLIENT_SECRET=emulator.client_secret,
        DATABRICKS_CONFIG_FILE=str(tmp_path / "absent.cfg"),
    )
    return env


def _score_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "score", str(src), "--endpoint", ENDPOINT,
            "--output", str(out), "--progress", "off", *extra]


def _requests(emulator: Emulator) -> int:
    return sum(emulator.accounting(ENDPOINT)["requests_by_status"].values())


# --- 1. --start-if-stopped waits as long as an endpoint really takes ------------------------


async def _score_on(clock: WarpClock, emulator: Emulator, tmp_path: Path, **config: Any):
    table = regressor_table(emulator, 2_000, seed=41)
    pq.write_table(table, tmp_path / "in.parquet")
    source = open_source(tmp_path / "in.parquet")
    settings = ScoreConfig(endpoint=ENDPOINT, batch_rows=500, progress="off", **config)
    sink = MemorySink()
    async with Transport() as transport:
        scorer = await prepare(
            source, credentials_for(emulator), settings, transport, start_if_stopped=True,
            clock=clock, sleep=clock.sleep,
        )
        summary = await run(source, sink, scorer, transport)
    return table, sink, summary


async def test_start_if_stopped_waits_for_an_endpoint_that_takes_minutes_to_start(
    tmp_path, caplog
) -> None:
    clock = WarpClock()  # 20x: the 3-minute start takes 9 s of real time
    config = EmulatorConfig(
        endpoints=(EndpointConfig(name=ENDPOINT, start_stopped=True, start_duration_s=180.0),)
    )
    caplog.set_level("INFO", logger="engine")
    async with Emulator(config, clock=clock, sleep=clock.sleep) as emulator:
        table, sink, summary = await _score_on(clock, emulator, tmp_path)
        assert emulator.endpoint_state(ENDPOINT)["ready"] == "READY"
    assert summary.exit_code == 0
    assert sink.table().column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    assert "waiting up to 30 min for endpoint 'demo-regressor' to be READY" in caplog.text
    assert "checking again in" in caplog.text  # a line while it waits


async def test_a_start_longer_than_wait_ready_fails_without_asking_for_given_flags(
    tmp_path,
) -> None:
    clock = WarpClock()
    config = EmulatorConfig(
        endpoints=(EndpointConfig(name=ENDPOINT, start_stopped=True, start_duration_s=3_600.0),)
    )
    async with Emulator(config, clock=clock, sleep=clock.sleep) as emulator:
        with pytest.raises(EndpointError) as info:
            await _score_on(clock, emulator, tmp_path, wait_ready_s=60.0)
        assert _requests(emulator) == 0
    message = str(info.value)
    assert "start_if_stopped" not in message, message
    assert "raise `wait_ready_s` (waited 60 s)" in message
    assert info.value.exit_code == 2


# --- 2. one run per output -------------------------------------------------------------------


async def test_a_second_run_on_the_same_output_is_refused_at_once_naming_the_first(
    emulator: Emulator, tmp_path
) -> None:
    emulator.set_faults(ENDPOINT, Faults(qps_limit=20.0, qps_burst=1.0))  # ~3 s of work
    table = regressor_table(emulator, 12_000, seed=42)
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, src)
    env = _cli_env(emulator, tmp_path)
    first = await asyncio.create_subprocess_exec(
        *_score_cmd(src, out, "--batch-rows", "200"), env=env, stderr=asyncio.subprocess.PIPE
    )
    lock = lock_path(tmp_path / ".out.parquet.checkpoint")
    while _requests(emulator) < 3:
        assert first.returncode is None, "the first run ended before the second started"
        await asyncio.sleep(0.01)
    assert lock.exists()
    requests_before = _requests(emulator)

    started = time.monotonic()
    second = await asyncio.create_subprocess_exec(
        *_score_cmd(src, out, "--batch-rows", "200", "--summary", str(tmp_path / "s.json")),
        env=env, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await second.communicate()
    refused_after_s = time.monotonic() - started
    text = stderr.decode()
    print(f"second run refused after {refused_after_s:.2f} s (process start to exit)")
    assert second.returncode == 2, text
    assert "another run is already writing" in text and str(out) in text
    assert f"pid {first.pid} on host {socket.gethostname()}, started 20" in text
    assert "Traceback" not in text
    assert first.returncode is None  # refused while the first was still running
    assert json.loads((tmp_path / "s.json").read_text())["exit_code"] == 2

    _, stderr = await first.communicate()
    assert first.returncode == 0, stderr.decode()[-2000:]
    assert read_output(out).column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    scored = emulator.accounting(ENDPOINT)["rows_scored"]
    assert set(scored.values()) == {1}  # the refused run sent nothing
    assert requests_before > 0 and not lock.exists()  # released and removed after the run


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path) -> None:
    lock = tmp_path / ".out.arrow.checkpoint.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from engine.runlock import RunLock\n"
         f"RunLock.acquire(Path({str(lock)!r}), output='out.arrow'); print('held', flush=True)\n"
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {holder.pid} on host "):
            RunLock.acquire(lock, output="out.arrow")
        started = time.perf_counter()
        with pytest.raises(RunLocked):
            RunLock.acquire(lock, output="out.arrow")
        print(f"in-process refusal took {1e6 * (time.perf_counter() - started):.0f} µs")
    finally:
        holder.kill()  # kill -9: no cleanup runs in the holder
        holder.wait()
    assert f'"pid":{holder.pid}' in lock.read_text()  # the dead run's record is still there
    with RunLock.acquire(lock, output="out.arrow") as taken:
        assert f'"pid":{os.getpid()}' in taken.path.read_text()
    assert not lock.exists()


# --- 3. I/O failures of the output or the checkpoint ------------------------------------------


class _DiskFills:
    """pyarrow files opened after ``after`` checkpoint parts go to /dev/full (ENOSPC on
    write), or fail to open with ``open_error`` (EROFS: a read-only filesystem)."""

    def __init__(self, monkeypatch, *, after: int, open_error: int | None = None) -> None:
        self.real = pa.OSFile
        self.parts = 0
        self.after = after
        self.open_error = open_error
        monkeypatch.setattr(pa, "OSFile", self)

    def __call__(self, path: str, mode: str = "r", **kwargs: Any) -> pa.NativeFile:
        if "w" in mode and "/parts/" in path:
            self.parts += 1
            if self.parts > self.after:
                if self.open_error is not None:
                    raise OSError(self.open_error, os.strerror(self.open_error), path)
                return self.real("/dev/full", mode)
        return self.real(path, mode, **kwargs)


@pytest.mark.parametrize(
    ("open_error", "cause"),
    [(None, "No space left on device (ENOSPC)"), (errno.EROFS, "Read-only file system (EROFS)")],
)
async def test_a_disk_that_fills_mid_run_is_one_clear_error_and_a_rerun_resumes(
    emulator: Emulator, tmp_path, monkeypatch, open_error, cause
) -> None:
    emulator.set_faults(ENDPOINT, Faults(qps_limit=20.0, qps_burst=1.0))  # >= 1.5 s of work
    table = regressor_table(emulator, 3_000, seed=43)
    src, out, ck = tmp_path / "in.parquet", tmp_path / "out.arrow", tmp_path / "ck"
    pq.write_table(table, src)
    kwargs = dict(endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off",
                  batch_rows=100, concurrency=2, checkpoint=ck)
    disk = _DiskFills(monkeypatch, after=1, open_error=open_error)
    with pytest.raises(StorageError) as info:
        await engine.ascore(src, output=out, **kwargs)
    message = str(info.value)
    assert f"cannot write the checkpoint in {ck}: {cause}" in message, message
    assert "rerun the same command to resume" in message
    assert info.value.exit_code == 1 and disk.parts >= 2
    assert info.value.summary is not None and info.value.summary.exit_code == 1
    assert info.value.summary.error == message
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["ck", "in.parquet"]
    kept = len(Checkpoint.open(ck))  # consistent: it loads, and holds what was persisted
    assert kept >= 1

    monkeypatch.setattr(pa, "OSFile", disk.real)  # space freed
    emulator.set_faults(ENDPOINT, Faults())
    summary = await engine.ascore(src, output=out, **kwargs)
    assert summary.exit_code == 0 and summary.rows_skipped == 100 * kept
    assert read_output(out).column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )


async def test_an_output_write_that_fails_names_the_output_and_the_cause(
    emulator: Emulator, tmp_path, monkeypatch
) -> None:
    table = regressor_table(emulator, 1_000, seed=44)
    pq.write_table(table, tmp_path / "in.parquet")
    real = pa.OSFile

    def full_output(path: str, mode: str = "r", **kwargs: Any) -> pa.NativeFile:
        return real("/dev/full", mode) if os.path.basename(path).startswith(".out.") else real(
            path, mode, **kwargs
        )

    monkeypatch.setattr(pa, "OSFile", full_output)
    with pytest.raises(StorageError) as info:
        await engine.ascore(
            tmp_path / "in.parquet", output=tmp_path / "out.arrow", endpoint=ENDPOINT,
            credentials=credentials_for(emulator), progress="off", batch_rows=100,
        )
    assert str(info.value).startswith(
        f"cannot finish writing the output {tmp_path / 'out.arrow'}: No space left on device"
    )
    assert "rerun the same command to resume" in str(info.value)
    monkeypatch.setattr(pa, "OSFile", real)
    emulator.reset_accounting()
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "out.arrow", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), progress="off", batch_rows=100,
    )
    assert summary.rows_skipped == 1_000 and emulator.accounting(ENDPOINT)["requests_total"] == 0


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """A directory no file can be created in: ``chattr +i`` for root (who ignores modes)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a read-only directory")
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
            pytest.skip("chattr +i is not supported on this filesystem")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


async def test_a_checkpoint_that_turns_read_only_mid_run_exits_1_without_traceback(
    emulator: Emulator, tmp_path
) -> None:
    emulator.set_faults(ENDPOINT, Faults(qps_limit=20.0, qps_burst=1.0))  # >= 3 s of work
    table = regressor_table(emulator, 6_000, seed=45)
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, src)
    env = _cli_env(emulator, tmp_path)
    summary_path = tmp_path / "summary.json"
    cmd = _score_cmd(src, out, "--batch-rows", "100", "--summary", str(summary_path))
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.PIPE)
    parts = tmp_path / ".out.parquet.checkpoint" / "parts"
    manifest = parts.parent / "manifest.jsonl"
    while not (manifest.exists() and manifest.stat().st_size):
        assert proc.returncode is None
        await asyncio.sleep(0.01)
    with _read_only(parts):
        _, stderr = await proc.communicate()
    text = stderr.decode()
    assert proc.returncode == 1, text[-2000:]
    assert "Traceback" not in text
    assert f"error: cannot write the checkpoint in {parts.parent}: " in text
    assert "(EPERM)" in text or "(EACCES)" in text
    assert "rerun the same command to resume" in text
    summary = json.loads(summary_path.read_text())
    assert summary["exit_code"] == 1 and "cannot write the checkpoint" in summary["error"]
    assert summary["rows_scored"] > 0

    emulator.set_faults(ENDPOINT, Faults())
    rerun = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.PIPE)
    _, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    resumed = json.loads(summary_path.read_text())
    assert resumed["exit_code"] == 0 and resumed["rows_skipped"] >= 100
    assert read_output(out).column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )


async def test_debug_shows_the_traceback_that_is_otherwise_hidden(
    emulator: Emulator, tmp_path
) -> None:
    args = ("score", str(tmp_path / "nope.parquet"), "--endpoint", ENDPOINT, "-o",
            str(tmp_path / "o.arrow"))
    code, printed = await run_cli(emulator, tmp_path, *args)
    assert code == 2 and b"Traceback" not in printed
    code, printed = await run_cli(emulator, tmp_path, *args, "--debug")
    assert code == 2 and b"Traceback" in printed and b"nope.parquet" in printed


# --- 4. --summary on every exit ------------------------------------------------------------


async def test_summary_in_a_missing_directory_is_refused_before_anything_is_sent(
    emulator: Emulator, tmp_path
) -> None:
    pq.write_table(regressor_table(emulator, 100, seed=46), tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "-o", str(tmp_path / "o.arrow"), "--summary", str(tmp_path / "nodir" / "s.json"),
    )
    assert code == 2, printed.decode()
    assert b"--summary" in printed and b"nodir" in printed and b"Traceback" not in printed
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "o.arrow").exists()
    assert _requests(emulator) == 0
    assert sum(emulator.accounting()["tokens_issued"].values()) == 0


async def test_summary_is_written_when_the_run_fails_with_the_code_and_the_message(
    emulator: Emulator, tmp_path
) -> None:
    pq.write_table(regressor_table(emulator, 100, seed=47), tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "-o", str(tmp_path / "o.arrow"), "--summary", str(tmp_path / "s.json"),
        secret="wrong-secret",
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert code == 2 and summary["exit_code"] == 2
    assert summary["error"] and summary["error"] in printed.decode()
    assert summary["endpoint"] == ENDPOINT and summary["output"] is None


# --- 6. output formats ---------------------------------------------------------------------


async def test_an_output_named_csv_is_refused_before_anything_is_sent(
    emulator: Emulator, tmp_path
) -> None:
    pq.write_table(regressor_table(emulator, 100, seed=48), tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "-o", str(tmp_path / "out.csv"),
    )
    assert code == 2 and b"does not write '.csv' files" in printed and b"out.parquet" in printed
    assert _requests(emulator) == 0 and not (tmp_path / "out.csv").exists()


# --- 8. checkpoint group commit: what a kill -9 costs -------------------------------------

#: 60,000 rows, 200-row batches, 4 in flight, 50 ms a request: at most 16,000 rows/s
KILL_ROWS, KILL_BATCH, KILL_IN_FLIGHT, KILL_LATENCY_S = 60_000, 200, 4, 0.05


@pytest.mark.parametrize("kill_at", [0.25, 0.5, 0.75])
async def test_kill_9_rescores_little_more_than_what_was_in_flight(
    emulator: Emulator, tmp_path, kill_at: float
) -> None:
    emulator.set_faults(ENDPOINT, Faults(latency_ms=1000 * KILL_LATENCY_S))
    table = regressor_table(emulator, KILL_ROWS, seed=49)
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, src)
    cmd = _score_cmd(src, out, "--batch-rows", str(KILL_BATCH), "--concurrency",
                     str(KILL_IN_FLIGHT))
    env = _cli_env(emulator, tmp_path)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL)
    delivered = lambda: sum(emulator.accounting(ENDPOINT)["rows_delivered"].values())  # noqa: E731
    while delivered() < KILL_ROWS * kill_at:
        assert proc.returncode is None, "the run ended before it could be killed"
        # Not faster: each look copies the emulator's per-row counters on its own loop.
        await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    killed_at, killed_s = delivered(), time.monotonic() - started

    emulator.set_faults(ENDPOINT, Faults())
    rerun = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.PIPE)
    _, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    assert read_output(out).column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    rescored = sum(n - 1 for n in emulator.accounting(ENDPOINT)["rows_scored"].values())
    print(f"kill -9 at {killed_at:,} of {KILL_ROWS:,} rows delivered "
          f"({killed_at / (killed_s or 1):,.0f} rows/s): {rescored:,} rescored")
    # What was in flight, plus what can finish during a 100 ms commit interval and its write
    # (0.25 s allowed): the endpoint's latency, not the machine, bounds the rate, and a slower
    # machine only lowers it. Measured: 1,000 / 2,400 / 1,600 rescored at 25/50/75 %; with
    # the former 1 s interval, 2,400 / 5,000 / 7,200 (over this bound from half way on).
    in_flight = KILL_IN_FLIGHT * KILL_BATCH
    most_rows_per_s = in_flight / KILL_LATENCY_S
    assert rescored <= in_flight + most_rows_per_s * 0.25, rescored


# --- 5. CSV read with the endpoint's types ---------------------------------------------------


def _csv_with_late_surprises(emulator: Emulator, path: Path) -> tuple[pa.Table, list[int]]:
    """60,000 regressor rows as CSV (3+ MiB): ``x0`` holds whole numbers for its first
    50,000 rows (so the first MiB reads as int64), then decimals; three rows far past the
    first MiB hold values that do not parse. Returns the table as the model sees it and the
    rows that cannot be read."""
    table = regressor_table(emulator, 60_000, seed=50)
    x0 = [float(round(v)) if i < 50_000 else v for i, v in enumerate(table.column("x0").to_pylist())]
    table = table.set_column(0, "x0", pa.array(x0, pa.float64()))
    lines = ["x0,x1,x2,x3,x4,x5,x6,x7,count,segment"]
    for row in table.to_pylist():
        values = [row["x0"] if row["x0"] != int(row["x0"]) else int(row["x0"])]
        values += [row[f"x{i}"] for i in range(1, 8)] + [row["count"], row["segment"] or ""]
        lines.append(",".join(str(v) for v in values))
    bad = [40_000, 55_123, 59_999]
    for row, (column, value) in zip(bad, [(1, "abc"), (8, "12.5"), (3, "1,5")], strict=True):
        cells = lines[row + 1].split(",")
        cells[column] = f'"{value}"' if "," in value else value
        lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 3 << 20
    return table, bad


async def test_a_csv_value_that_does_not_parse_rejects_its_row_and_the_run_goes_on(
    emulator: Emulator, tmp_path
) -> None:
    table, bad = _csv_with_late_surprises(emulator, tmp_path / "in.csv")
    summary_path = tmp_path / "s.json"
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.csv"), "--endpoint", ENDPOINT,
        "-o", str(tmp_path / "out.parquet"), "--summary", str(summary_path),
    )
    assert code == 3, printed.decode()[-2000:]
    summary = json.loads(summary_path.read_text())
    assert summary["rows_rejected"] == 3 and summary["rows_scored"] == 60_000 - 3
    result = read_output(tmp_path / "out.parquet")
    assert result.schema.field("x0").type == pa.float64()  # the endpoint's type, not int64
    errors = result.column("error").to_pylist()
    assert [i for i, e in enumerate(errors) if e is not None] == bad
    path = tmp_path / "in.csv"
    assert errors[40_000] == f"{path}, line 40002: column 'x1': 'abc' is not a double"
    assert errors[55_123] == f"{path}, line 55125: column 'count': '12.5' is not a int64"
    assert errors[59_999] == f"{path}, line 60001: column 'x3': '1,5' is not a double"
    good = [i for i in range(60_000) if i not in bad]
    predictions = result.column("prediction").to_pylist()
    assert [predictions[i] for i in good] == expected_predictions(
        emulator, ENDPOINT, table.take(good)
    )
    assert all(predictions[i] is None for i in bad)
    assert sum(emulator.accounting(ENDPOINT)["rows_scored"].values()) == 60_000 - 3  # unsent


async def test_validate_says_what_it_did_not_check_and_full_reads_every_row(
    emulator: Emulator, tmp_path
) -> None:
    _, bad = _csv_with_late_surprises(emulator, tmp_path / "in.csv")
    args = ("validate", str(tmp_path / "in.csv"), "--endpoint", ENDPOINT)
    code, printed = await run_cli(emulator, tmp_path, *args)
    text = printed.decode()
    assert code == 0, text
    assert "CSV values checked in the first" in text and "--full reads every row" in text
    code, printed = await run_cli(emulator, tmp_path, *args, "--full")
    text = printed.decode()
    assert code == 2, text
    assert "3 CSV row(s) of the 60,000 read hold values that do not parse" in text
    assert f"{tmp_path / 'in.csv'}, line 40002: column 'x1': 'abc' is not a double" in text
    assert _requests(emulator) == 0
