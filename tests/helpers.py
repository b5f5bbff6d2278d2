"""Shared test helpers: sample data shaped like an emulator endpoint's signature, and a
fresh interpreter to see what a piece of code imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
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


ROOT = Path(__file__).resolve().parents[1]


def in_fresh_interpreter(code: str) -> Any:
    """Run ``code`` in a new Python with only this checkout on its path; return the JSON it
    printed last (what it imported cannot leak in from the test process)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
