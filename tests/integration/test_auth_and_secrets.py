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


async def run_cli(
    emulator: Emulator,
    tmp_path: Path,
    *args: str,
    secret: str | None = None,
    auth_env: dict[str, str] | None = None,
):
    """``python -m engine *args``; credentials in the environment: the emulator's service
    principal, or ``auth_env`` instead of it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env["DATABRICKS_CONFIG_FILE"] = str(tmp_path / "absent.cfg")
    env.update(
        auth_env
        if auth_env is not None
        else {
            "DATABRICKS_HOST": emulator.host,
            "DATABRICKS_CLIENT_ID": emulator.client_id,
            "DATABRICKS_CLIENT_SECRET": secret or emulator.client_secret,
        }
    )
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


def _requests(emulator: Emulator) -> int:
    return sum(emulator.accounting(ENDPOINT)["requests_by_status"].values())


async def test_a_personal_access_token_serves_describe_and_validate_but_scoring_refuses_it(
    emulator: Emulator, tmp_path
) -> None:
    pat = {"DATABRICKS_HOST": emulator.host, "DATABRICKS_TOKEN": emulator.personal_access_token}
    pq.write_table(regressor_table(emulator, 50, seed=25), tmp_path / "in.parquet")

    code, printed = await run_cli(emulator, tmp_path, "describe", ENDPOINT, auth_env=pat)
    assert code == 0 and b"READY" in printed, printed.decode()[-1000:]
    code, printed = await run_cli(
        emulator, tmp_path, "validate", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        auth_env=pat,
    )
    assert code == 0 and b"OK" in printed, printed.decode()[-1000:]
    tokens_before = emulator.accounting()["token_requests_by_status"]

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "out.arrow"), auth_env=pat,
    )

    assert code == 2
    assert b"accept OAuth tokens only" in printed and b"DATABRICKS_CLIENT_ID" in printed
    assert b"Traceback" not in printed and emulator.personal_access_token.encode() not in printed
    assert emulator.accounting()["token_requests_by_status"] == tokens_before  # failed up front
    assert _requests(emulator) == 0 and not (tmp_path / "out.arrow").exists()


async def test_databricks_sdk_auth_mints_the_data_plane_token_by_jwt_bearer_exchange(
    emulator: Emulator, tmp_path
) -> None:
    pytest.importorskip("databricks.sdk")
    table = regressor_table(emulator, 2_000, seed=26)
    pq.write_table(table, tmp_path / "in.parquet")
    principal = {
        "DATABRICKS_HOST": emulator.host,
        "DATABRICKS_CLIENT_ID": emulator.client_id,
        "DATABRICKS_CLIENT_SECRET": emulator.client_secret,
    }

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "out.arrow"), "--auth", "databricks-sdk", auth_env=principal,
    )

    assert code == 0, printed.decode()[-2000:]
    predictions = read_output(str(tmp_path / "out.arrow")).column("prediction").to_pylist()
    assert predictions == expected_predictions(emulator, ENDPOINT, table)
    assert emulator.accounting()["data_plane_grants"] == {"jwt-bearer": 1}
    assert emulator.client_secret.encode() not in printed


async def test_databricks_sdk_auth_with_a_personal_access_token_is_refused_before_sending(
    emulator: Emulator, tmp_path
) -> None:
    pytest.importorskip("databricks.sdk")
    pq.write_table(regressor_table(emulator, 50, seed=27), tmp_path / "in.parquet")
    pat = {"DATABRICKS_HOST": emulator.host, "DATABRICKS_TOKEN": emulator.personal_access_token}

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "out.arrow"), "--auth", "databricks-sdk", auth_env=pat,
    )

    assert code == 2 and b"accept OAuth tokens only" in printed, printed.decode()[-2000:]
    assert _requests(emulator) == 0
    assert emulator.accounting()["data_plane_grants"] == {}
