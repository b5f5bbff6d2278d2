"""Auth faults end to end, and no secret or token in anything the engine prints or writes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import engine
from engine.emulator import Emulator, EmulatorConfig, ServicePrincipal
from engine.emulator.config import TokenFaults
from engine.errors import AuthError
from engine.sink import read_output
from tests.helpers import credentials_for, expected_predictions, regressor_table

ENDPOINT = "demo-regressor"
TOKEN_PATTERN = re.compile(rb"emu-\w+-[A-Za-z0-9_-]{16,}")


async def run_cli(emulator: Emulator, tmp_path: Path, *args: str, secret: str | None = None):
    env = {
        **os.environ,
        "DATABRICKS_HOST": emulator.host,
        "DATABRICKS_CLIENT_ID": emulator.client_id,
        "DATABRICKS_CLIENT_SECRET": secret or emulator.client_secret,
        "DATABRICKS_CONFIG_FILE": str(tmp_path / "absent.cfg"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, out + err


async def test_nothing_printed_or_written_holds_a_secret_or_token(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 3_000, seed=21)
    pq.write_table(table, tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "out.arrow"), "--summary", str(tmp_path / "summary.json"),
        "--progress", "log", "--batch-rows", "300",
    )
    assert code == 0, printed.decode()[-2000:]
    written = printed + (tmp_path / "summary.json").read_bytes()
    written += read_output(str(tmp_path / "out.arrow")).to_string().encode()
    assert emulator.client_secret.encode() not in written
    assert not TOKEN_PATTERN.search(written)
    assert b"rows" in printed  # the summary was printed: the scan looked at something


async def test_wrong_secret_exits_2_in_seconds_with_one_token_request(emulator: Emulator, tmp_path) -> None:
    pq.write_table(regressor_table(emulator, 100, seed=22), tmp_path / "in.parquet")
    started = time.monotonic()
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "out.arrow"), secret="not-the-secret-1234",
    )
    assert code == 2
    assert time.monotonic() - started < 15
    assert b"invalid_client" in printed and b"DATABRICKS_CLIENT_SECRET" in printed
    assert b"not-the-secret-1234" not in printed
    assert b"Traceback" not in printed
    assert sum(emulator.accounting()["token_requests_by_status"].values()) == 1
    assert not (tmp_path / "out.arrow").exists()


async def test_principal_without_can_query_is_told_so(emulator_factory, tmp_path) -> None:
    viewer = ServicePrincipal(client_id="viewer", client_secret="viewer-secret",
                              default_permission="CAN_VIEW")
    emulator = await emulator_factory(EmulatorConfig(principals=(viewer,)))
    pq.write_table(regressor_table(emulator, 100, seed=23), tmp_path / "in.parquet")
    with pytest.raises(AuthError, match="CAN_QUERY") as info:
        await engine.ascore(tmp_path / "in.parquet", output=tmp_path / "o.arrow", endpoint=ENDPOINT,
                            credentials=credentials_for(emulator))
    assert info.value.exit_code == 2
    assert "viewer-secret" not in str(info.value)
    assert sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) == 0


async def test_flaky_token_endpoint_is_retried(emulator: Emulator, tmp_path) -> None:
    emulator.set_token_faults(TokenFaults(seed=3, error_rate=0.5))
    table = regressor_table(emulator, 2_000, seed=24)
    pq.write_table(table, tmp_path / "in.parquet")
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "o.arrow", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), progress="off",
    )
    statuses = emulator.accounting()["token_requests_by_status"]
    assert summary.exit_code == 0
    assert statuses.get(503, 0) > 0 and statuses.get(200, 0) >= 2
    result = read_output(str(tmp_path / "o.arrow"))
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)


async def test_tokens_revoked_mid_run_force_a_refresh_and_nothing_is_lost(
    emulator: Emulator, tmp_path
) -> None:
    table = regressor_table(emulator, 20_000, seed=25)

    async def revoke_once_half_done() -> None:
        while sum(emulator.accounting(ENDPOINT)["rows_delivered"].values()) < 5_000:
            await asyncio.sleep(0.005)
        emulator._state.tokens._tokens.clear()  # the emulator's own store: every token is now unknown

    revoker = asyncio.create_task(revoke_once_half_done())
    result = await engine.ascore_table(
        table, endpoint=ENDPOINT, credentials=credentials_for(emulator), batch_rows=200,
        concurrency=4,
    )
    await revoker
    statuses = emulator.accounting(ENDPOINT)["requests_by_status"]
    assert statuses.get(401, 0) > 0
    assert emulator.accounting()["tokens_issued"]["data_plane"] == 2  # one forced refresh
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)
