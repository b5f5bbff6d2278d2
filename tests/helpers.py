"""Shared test helpers: sample data shaped like an emulator endpoint's signature."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

import engine
from engine.emulator import Emulator


def credentials_for(emulator: Emulator) -> engine.Credentials:
    return engine.Credentials(
        host=emulator.host, client_id=emulator.client_id, client_secret=emulator.client_secret
    )


def regressor_table(emulator: Emulator, rows: int, *, seed: int, endpoint: str = "demo-regressor") -> pa.Table:
    return emulator.model(endpoint).sample(rows, seed=seed)


def expected_predictions(emulator: Emulator, endpoint: str, table: pa.Table) -> list[Any]:
    return list(pa.array(emulator.model(endpoint).predict(table)).to_pylist())
