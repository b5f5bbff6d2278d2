"""The examples stay true: each runs as a user would and does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_python_api_example_scores_in_memory_and_files() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "15000 rows scored" in done.stdout and "exit code 0" in done.stdout
