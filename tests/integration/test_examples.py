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


def test_spark_example_scores_parquet_to_parquet_in_local_mode(tmp_path: Path) -> None:
    import importlib.util

    import pytest

    if importlib.util.find_spec("pyspark") is None:
        pytest.skip("needs pyspark: pip install -e '.[spark]'")
    import pyarrow.parquet as pq

    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "spark_score.py"),
         str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--demo"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 row(s) rejected" in done.stdout
    out = pq.read_table(tmp_path / "out")
    assert out.num_rows == 20_000 and out.column("prediction").null_count == 0
