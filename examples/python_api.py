"""The Python API end to end, on the embedded emulator: run `python examples/python_api.py`.

Against a real workspace, drop the emulator and let credentials come from DATABRICKS_HOST /
DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET (or ~/.databrickscfg).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

import engine
from engine.emulator import EmulatorThread


def main() -> None:
    with EmulatorThread() as emulator, tempfile.TemporaryDirectory() as tmp:
        credentials = engine.Credentials(
            host=emulator.host, client_id=emulator.client_id, client_secret=emulator.client_secret
        )
        model = emulator.model("demo-classifier")

        # 1. In memory: a polars DataFrame in, a pyarrow Table out (one row per input row).
        frame = pl.from_arrow(model.sample(1_000, seed=1))
        scored = engine.score_table(frame, endpoint="demo-classifier", credentials=credentials)
        print(pl.from_arrow(scored).select("prediction", "error").head(3))

        # 2. Files: a Parquet dataset in, Parquet out, with a settings object shared with the CLI.
        source = Path(tmp) / "input"
        source.mkdir()
        for day in range(3):
            pq.write_table(model.sample(5_000, seed=day), source / f"day-{day}.parquet")
        config = engine.ScoreConfig(endpoint="demo-classifier", batch_rows=500, progress="off")
        summary = engine.score(
            source, output=Path(tmp) / "scored.parquet", config=config, credentials=credentials
        )
        print(f"{summary.rows_scored} rows scored at {summary.rows_per_s:,.0f} rows/s, "
              f"exit code {summary.exit_code}")


if __name__ == "__main__":
    main()
