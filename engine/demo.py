"""``engine demo``: the whole job on the embedded emulator, in one command."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.config import Credentials, ProgressMode, ScoreConfig
from engine.stats import Summary

__all__ = ["run_demo"]

DEMO_ENDPOINT = "demo-regressor"


def _say(text: str) -> None:
    print(text, file=sys.stderr)


async def run_demo(*, rows: int, directory: Path, progress: ProgressMode = "auto") -> Summary:
    """Start the emulator, write ``rows`` sample rows, score them, check every prediction."""
    from engine.api import ascore
    from engine.emulator import Emulator, EmulatorConfig
    from engine.sink import read_output

    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before serving
    input_path = directory / "input.parquet"
    output_path = directory / "predictions.arrow"
    async with Emulator(EmulatorConfig()) as emulator:
        model = emulator.model(DEMO_ENDPOINT)
        table = model.sample(rows, seed=2026)
        pq.write_table(table, input_path, row_group_size=50_000)
        _say(f"emulator: workspace {emulator.host}, data plane {emulator.data_plane_host}")
        _say(f"input:    {input_path} ({rows:,} rows, columns {', '.join(table.column_names)})")
        _say(f"scoring:  endpoint '{DEMO_ENDPOINT}' -> {output_path}")
        credentials = Credentials(
            host=emulator.host,
            client_id=emulator.client_id,
            client_secret=emulator.client_secret,
        )
        summary = await ascore(
            input_path,
            output=output_path,
            config=ScoreConfig(endpoint=DEMO_ENDPOINT, progress=progress),
            credentials=credentials,
            overwrite=True,
        )
        result = read_output(str(output_path))
        expected = pa.array(model.predict(table))
    matches = pc.all(pc.equal(result.column("prediction"), expected)).as_py()
    _say("")
    for line in summary.lines():
        _say(line)
    _say(
        f"checked:  {result.num_rows:,} output rows for {rows:,} input rows; every prediction "
        + ("equals the model's" if matches and result.num_rows == rows else "DIFFERS")
    )
    _say(str(pl.from_arrow(result.slice(0, 5))))
    _say("")
    _say(
        "Next: `engine emulate` serves the emulator for your own runs; "
        "`engine score --help` lists every option."
    )
    return summary
