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
from engine.errors import EndpointError
from engine.pipeline import MemorySink, prepare, run
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
    assert "--start-if-stopped" not in message, message
    assert "raise --wait-ready (waited 60 s)" in message
    assert info.value.exit_code == 2
