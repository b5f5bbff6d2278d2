"""``--shard I/N`` end to end: N shard runs together are the unsharded run, row for row."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.emulator import Emulator
from engine.errors import UsageError
from engine.sink import read_output
from tests.helpers import credentials_for, expected_predictions, regressor_table
from tests.integration.test_auth_and_secrets import run_cli

ENDPOINT = "demo-regressor"


def _dataset(emulator: Emulator, directory: Path) -> pa.Table:
    """Three files of 2,000 rows in row groups of 400: 15 units to deal into shards."""
    tables = [regressor_table(emulator, 2_000, seed=60 + i) for i in range(3)]
    directory.mkdir()
    for index, table in enumerate(tables):
        pq.write_table(table, directory / f"part-{index}.parquet", row_group_size=400)
    return pa.concat_tables(tables)


async def test_cli_shard_outputs_concatenated_are_the_unsharded_output(
    emulator: Emulator, tmp_path: Path
) -> None:
    data = _dataset(emulator, tmp_path / "in")
    whole = tmp_path / "whole.parquet"
    common = ("--endpoint", ENDPOINT, "--batch-rows", "300", "--progress", "off")
    runs = [run_cli(emulator, tmp_path, "score", str(tmp_path / "in"), "-o", str(whole), *common)]
    for index in range(4):
        runs.append(
            run_cli(
                emulator, tmp_path, "score", str(tmp_path / "in"), "--shard", f"{index}/4",
                "-o", str(tmp_path / f"shard-{index}.parquet"),
                "--summary", str(tmp_path / f"shard-{index}.json"), *common,
            )
        )
    for code, printed in await asyncio.gather(*runs):
        assert code == 0, printed.decode()[-2000:]

    unsharded = read_output(whole)
    assert unsharded.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, data
    )
    shards = [read_output(tmp_path / f"shard-{index}.parquet") for index in range(4)]
    assert all(shard.num_rows > 0 for shard in shards)
    assert pa.concat_tables(shards).to_pylist() == unsharded.to_pylist()
    summaries = [json.loads((tmp_path / f"shard-{i}.json").read_text()) for i in range(4)]
    assert sum(s["rows_scored"] for s in summaries) == 6_000


async def test_a_shard_with_no_rows_writes_an_empty_output_and_succeeds(
    emulator: Emulator, tmp_path: Path
) -> None:
    table = regressor_table(emulator, 100, seed=70)
    pq.write_table(table, tmp_path / "one.parquet")  # one row group: one unit for two shards

    summaries = [
        await engine.ascore(
            tmp_path / "one.parquet",
            output=tmp_path / f"shard-{index}.parquet",
            endpoint=ENDPOINT,
            credentials=credentials_for(emulator),
            shard=(index, 2),
            progress="off",
        )
        for index in range(2)
    ]

    assert [s.exit_code for s in summaries] == [0, 0]
    assert sorted(s.rows_scored for s in summaries) == [0, 100]
    assert sum(s.requests for s in summaries) == 1
    outputs = [read_output(tmp_path / f"shard-{index}.parquet") for index in range(2)]
    assert sorted(out.num_rows for out in outputs) == [0, 100]
    for out in outputs:  # the empty shard's output has the full schema, so outputs concatenate
        assert out.schema.names == [*table.schema.names, "prediction", "error"]
    assert pa.concat_tables(outputs).column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )


async def test_qps_is_the_total_across_shards(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _dataset(emulator, tmp_path / "in")
    caplog.set_level(logging.INFO, logger="engine")

    await engine.ascore(
        tmp_path / "in",
        output=tmp_path / "s.parquet",
        endpoint=ENDPOINT,
        credentials=credentials_for(emulator),
        shard="2/4",
        qps=200.0,
        progress="off",
    )

    assert "shard 2/4: 1,600 rows, a qps share of 50" in caplog.text


async def test_shard_with_in_memory_data_is_refused(emulator: Emulator, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="`shard` applies to file inputs only"):
        await engine.ascore(
            regressor_table(emulator, 10, seed=71),
            output=tmp_path / "o.parquet",
            endpoint=ENDPOINT,
            credentials=credentials_for(emulator),
            shard=(0, 2),
        )
