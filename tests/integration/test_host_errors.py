"""A misconfigured workspace host is a configuration error (exit 2) that names --host and the
likely cause, after a short retry: not six retries and "try again later". Loopback only."""

from __future__ import annotations

import socket

import pyarrow.parquet as pq

from engine.emulator import Emulator, EmulatorConfig
from tests.helpers import regressor_table
from tests.integration.test_auth_and_secrets import run_cli

ENDPOINT = "demo-regressor"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def env_for(host: str, emulator: Emulator) -> dict[str, str]:
    return {
        "DATABRICKS_HOST": host,
        "DATABRICKS_CLIENT_ID": emulator.client_id,
        "DATABRICKS_CLIENT_SECRET": emulator.client_secret,
    }


async def score(emulator: Emulator, tmp_path, host: str) -> tuple[int, str]:
    pq.write_table(regressor_table(emulator, 100, seed=1), tmp_path / "in.parquet")
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "-o", str(tmp_path / "out.arrow"), auth_env=env_for(host, emulator),
    )
    return code, printed.decode()


async def test_a_port_nothing_listens_on_names_host_and_exits_2(emulator: Emulator, tmp_path) -> None:
    code, printed = await score(emulator, tmp_path, f"http://127.0.0.1:{closed_port()}")
    assert code == 2
    assert "connection refused" in printed and "--host" in printed
    assert "Traceback" not in printed and "try again later" not in printed
    assert not (tmp_path / "out.arrow").exists()


async def test_https_against_a_plain_http_server_says_so(emulator: Emulator, tmp_path) -> None:
    https_host = emulator.host.replace("http://", "https://")
    code, printed = await score(emulator, tmp_path, https_host)
    assert code == 2
    assert "plain http" in printed and "--host" in printed
    assert "Traceback" not in printed


async def test_tokens_shorter_than_the_refusal_margin_are_named(emulator_factory, tmp_path) -> None:
    emulator = await emulator_factory(EmulatorConfig(token_ttl_s=20.0))
    code, printed = await score(emulator, tmp_path, emulator.host)
    assert code == 2
    assert "valid for 20 s" in printed and "CAN_QUERY" not in printed
    assert emulator.accounting(ENDPOINT)["requests_total"] == 0  # nothing was sent
