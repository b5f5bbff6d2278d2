"""Delta tables in and out, for real: delta-rs tables in tmp dirs, scored on the emulator."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import struct
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import engine
from engine.emulator import Emulator
from engine.errors import InputError, OutputExistsError, UsageError
from engine.sink import read_output
from engine.source import open_source
from tests.helpers import credentials_for, expected_predictions, regressor_table
from tests.integration.test_auth_and_secrets import run_cli

deltalake = pytest.importorskip("deltalake")

ENDPOINT = "demo-regressor"
COMMON = ("--endpoint", ENDPOINT, "--batch-rows", "250", "--progress", "off")


def _with_day(table: pa.Table, day: str) -> pa.Table:
    return table.append_column("day", pa.array([day] * table.num_rows))


def _two_versions(emulator: Emulator, root: Path) -> tuple[pa.Table, pa.Table]:
    """Version 0: 1,000 rows of day 01; version 1 appends 600 rows of day 02 (by day)."""
    first = _with_day(regressor_table(emulator, 1_000, seed=80), "2025-01-01")
    second = _with_day(regressor_table(emulator, 600, seed=81), "2025-01-02")
    deltalake.write_deltalake(str(root), first, partition_by=["day"])
    deltalake.write_deltalake(str(root), second, partition_by=["day"], mode="append")
    return first, second


def _model_rows(table: pa.Table) -> pa.Table:
    return table.drop_columns(["day"])


def _requests(emulator: Emulator) -> int:
    return int(emulator.accounting(ENDPOINT)["requests_total"])


def _read_table(root: Path) -> pa.Table:
    return pa.table(deltalake.DeltaTable(str(root)).to_pyarrow_table())


def _by_feature(table: pa.Table) -> pa.Table:
    """Rows in a fixed order (Delta files have none): by the first model column."""
    return table.sort_by([(table.column_names[0], "ascending")])


# --- input ----------------------------------------------------------------------------------


async def test_cli_scores_a_delta_table_at_its_latest_version(
    emulator: Emulator, tmp_path: Path
) -> None:
    first, second = _two_versions(emulator, tmp_path / "table")
    out = tmp_path / "out.parquet"

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "table"), "-o", str(out), *COMMON
    )

    assert code == 0, printed.decode()[-2000:]
    result = read_output(out)
    both = pa.concat_tables([first, second])
    assert result.num_rows == 1_600
    assert result.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, _model_rows(both)
    )  # files in commit order: version 0's rows, then version 1's
    assert result.column("day").to_pylist() == both.column("day").to_pylist()


async def test_input_version_reads_that_snapshot_only(emulator: Emulator, tmp_path: Path) -> None:
    first, _ = _two_versions(emulator, tmp_path / "table")

    summary = await engine.ascore(
        tmp_path / "table", output=tmp_path / "v0.parquet", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), input_version=0, progress="off",
    )

    assert summary.rows_scored == 1_000
    result = read_output(tmp_path / "v0.parquet")
    assert result.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, _model_rows(first)
    )


async def test_input_timestamp_reads_the_version_current_then(
    emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "table"
    first = regressor_table(emulator, 400, seed=86)
    deltalake.write_deltalake(str(root), first)
    between = datetime.datetime.now(datetime.UTC)
    await asyncio.sleep(0.05)
    deltalake.write_deltalake(str(root), regressor_table(emulator, 200, seed=87), mode="append")
    options = dict(endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off")

    then = await engine.ascore(
        root, output=tmp_path / "then.parquet", input_timestamp=between.isoformat(), **options
    )

    assert then.rows_scored == 400
    assert read_output(tmp_path / "then.parquet").column("prediction").to_pylist() == (
        expected_predictions(emulator, ENDPOINT, first)
    )
    with pytest.raises(InputError, match="has no version as of 2000-01-01"):
        await engine.ascore(root, output=tmp_path / "x.parquet",
                            input_timestamp="2000-01-01T00:00:00Z", **options)
    with pytest.raises(UsageError, match="not an RFC 3339"):
        await engine.ascore(root, output=tmp_path / "x.parquet", input_timestamp="yesterday",
                            **options)
    assert _requests(emulator) == 1  # the first run only: 400 rows in one request


async def test_where_on_a_partition_and_a_data_column_scores_exactly_the_matching_rows(
    emulator: Emulator, tmp_path: Path
) -> None:
    _, second = _two_versions(emulator, tmp_path / "table")
    feature = second.column_names[0]
    threshold = pc.quantile(second.column(feature), 0.5)[0].as_py()
    out = tmp_path / "out.parquet"

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "table"), "-o", str(out), *COMMON,
        "--where", f"day = '2025-01-02' AND {feature} > {threshold}",
    )

    assert code == 0, printed.decode()[-2000:]
    wanted = second.filter(pc.greater(second.column(feature), threshold))
    result = read_output(out)
    assert 0 < result.num_rows == wanted.num_rows < 600
    assert result.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, _model_rows(wanted)
    )


async def test_shards_split_a_delta_table_by_file_and_together_are_the_whole(
    emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "table"
    for i in range(6):
        part = _with_day(regressor_table(emulator, 300, seed=90 + i), f"2025-01-0{i + 1}")
        deltalake.write_deltalake(str(root), part, mode="append", partition_by=["day"])
    whole = tmp_path / "whole.parquet"
    runs = [run_cli(emulator, tmp_path, "score", str(root), "-o", str(whole), *COMMON)]
    for index in range(3):
        out = tmp_path / f"shard-{index}.parquet"
        runs.append(
            run_cli(emulator, tmp_path, "score", str(root), "--shard", f"{index}/3", "-o",
                    str(out), *COMMON)
        )
    for code, printed in await asyncio.gather(*runs):
        assert code == 0, printed.decode()[-2000:]

    shards = [read_output(tmp_path / f"shard-{index}.parquet") for index in range(3)]
    assert [shard.num_rows for shard in shards] == [600, 600, 600]
    assert pa.concat_tables(shards).to_pylist() == read_output(whole).to_pylist()


async def test_a_rerun_resumes_and_an_appended_version_scores_only_its_new_rows(
    emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "table"
    first = _with_day(regressor_table(emulator, 1_000, seed=82), "2025-01-01")
    deltalake.write_deltalake(str(root), first)
    options = dict(
        endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off",
        checkpoint=tmp_path / "ck", batch_rows=100,
    )
    await engine.ascore(root, output=tmp_path / "a.arrow", **options)
    emulator.reset_accounting()

    again = await engine.ascore(root, output=tmp_path / "b.arrow", **options)
    assert again.rows_skipped == 1_000 and _requests(emulator) == 0

    deltalake.write_deltalake(
        str(root), _with_day(regressor_table(emulator, 300, seed=83), "2025-01-02"),
        mode="append",
    )
    grown = await engine.ascore(root, output=tmp_path / "c.arrow", **options)
    assert (grown.rows_skipped, grown.rows_scored) == (1_000, 300)
    assert _requests(emulator) == 3


def _delete_rows_with_a_deletion_vector(root: Path, rows: list[int]) -> None:
    """Commit a deletion vector marking ``rows`` of the table's one file deleted, as
    Databricks does (delta-rs itself deletes by rewriting files): an inline vector, a
    RoaringBitmapArray (magic, one 32-bit bitmap of one array container) in Z85."""
    log = root / "_delta_log"
    add = next(
        entry["add"] for line in (log / f"{0:020d}.json").read_text().splitlines()
        if "add" in (entry := json.loads(line))
    )
    bitmap = struct.pack("<IIHH", 12346, 1, 0, len(rows) - 1) + struct.pack("<I", 16)
    bitmap += b"".join(struct.pack("<H", row) for row in sorted(rows))
    vector = struct.pack("<IqI", 1681511377, 1, 0) + bitmap
    vector += b"\0" * (-len(vector) % 4)
    remove = {"path": add["path"], "deletionTimestamp": 1, "dataChange": True,
              "extendedFileMetadata": True, "partitionValues": {}, "size": add["size"]}
    marked = {**add, "deletionVector": {"storageType": "i", "pathOrInlineDv": _z85(vector),
                                        "sizeInBytes": len(vector), "cardinality": len(rows)}}
    entries = [{"commitInfo": {"timestamp": 1, "operation": "DELETE"}}, {"remove": remove},
               {"add": marked}]
    (log / f"{1:020d}.json").write_text("".join(json.dumps(e) + "\n" for e in entries))


def _z85(data: bytes) -> str:
    alphabet = (
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
    )
    out = []
    for start in range(0, len(data), 4):
        value = int.from_bytes(data[start : start + 4], "big")
        out.append("".join(alphabet[value // 85**power % 85] for power in range(4, -1, -1)))
    return "".join(out)


def test_a_delta_table_of_wide_rows_is_read_a_few_rows_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Parquet inputs: a read holds about READ_BYTES of rows, the first file by its
    footer's estimate, the others by what the first decoded to; partition values kept."""
    import engine.source.parquet as parquet_source

    monkeypatch.setattr(parquet_source, "READ_BYTES", 256 * 1024)
    root = tmp_path / "docs"
    parts = []
    for day, start in (("2025-01-01", 0), ("2025-01-02", 1_000)):
        ids = range(start, start + 1_000)
        part = pa.table({
            "id": pa.array(ids, pa.int64()),
            "doc": [f"{i:06d}".ljust(4_096, "abcdefgh"[i % 8]) for i in ids],
        })
        parts.append(_with_day(part, day))
        deltalake.write_deltalake(str(root), parts[-1], partition_by=["day"], mode="append")
    source = open_source(str(root))

    batches = list(source.reader(["id", "doc", "day"], batch_rows=16_384))

    read = pa.Table.from_batches(batches).sort_by("id")
    assert read.equals(pa.concat_tables(parts).select(["id", "doc", "day"]))
    assert max(batch.nbytes for batch in batches) <= 1.1 * 256 * 1024
    assert len(batches) <= 2_000 / (256 * 1024 // (4_096 + 40)) + 2 + 2


def test_delta_files_stream_without_decoding_a_whole_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow's dataset scanner decodes a row group at once (100 MB on a table of
    embeddings); the files are streamed a read at a time instead."""
    import engine.source.parquet as parquet_source

    monkeypatch.setattr(parquet_source, "READ_BYTES", 256 * 1024)
    root = tmp_path / "one-group"
    ids = range(2_000)
    table = pa.table({
        "id": pa.array(ids, pa.int64()),
        "doc": [f"{i:06d}".ljust(4_096, "abcdefgh"[i % 8]) for i in ids],
    })  # 8 MB in one file, one row group
    deltalake.write_deltalake(str(root), table)
    source = open_source(str(root))
    base = pa.total_allocated_bytes()
    alive, rows = 0, 0
    for batch in source.reader(["id", "doc"], batch_rows=16_384):
        alive = max(alive, pa.total_allocated_bytes() - base)
        rows += batch.num_rows
        del batch
    assert rows == 2_000
    assert alive < 3 * 2**20, alive  # a few reads' worth, not the 8 MB row group


def test_every_delta_file_is_read_by_its_decoded_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dictionary-encoded repeated long strings are a few bytes a row in a file's footer;
    each file is sized by what its first rows decode to, the files a deletion vector keeps
    apart (read one by one) too."""
    import engine.source.parquet as parquet_source

    monkeypatch.setattr(parquet_source, "READ_BYTES", 256 * 1024)
    root = tmp_path / "prompts"
    prompts = [f"prompt {k} ".ljust(4_096, "xyzw"[k % 4]) for k in range(5)]

    def part(start: int) -> pa.Table:
        return pa.table({
            "id": pa.array(range(start, start + 2_000), pa.int64()),
            "prompt": [prompts[i % 5] for i in range(start, start + 2_000)],
        })

    deltalake.write_deltalake(
        str(root), part(0), configuration={"delta.enableDeletionVectors": "true"}
    )
    _delete_rows_with_a_deletion_vector(root, [3, 1_500])  # version 1: the first file's
    deltalake.write_deltalake(str(root), part(2_000), mode="append")
    source = open_source(str(root))

    batches = list(source.reader(["id", "prompt"], batch_rows=16_384))

    read = pa.Table.from_batches(batches).sort_by("id")
    live = [i for i in range(4_000) if i not in (3, 1_500)]
    assert read.column("id").to_pylist() == live
    assert read.column("prompt").to_pylist() == [prompts[i % 5] for i in live]
    assert max(batch.nbytes for batch in batches) <= 1.1 * 256 * 1024


def test_partition_values_nulls_and_columns_added_since_read_as_delta_rs_reads_them(
    tmp_path: Path,
) -> None:
    root = tmp_path / "evolving"
    first = pa.table({
        "id": pa.array(range(10), pa.int64()),
        "day": ["a"] * 5 + ["b"] * 5,
        "n": pa.array([1, None] * 5, pa.int64()),
    })
    deltalake.write_deltalake(str(root), first, partition_by=["day", "n"])
    second = pa.table({
        "id": pa.array([10, 11], pa.int64()),
        "day": ["c", "c"],
        "n": pa.array([3, 3], pa.int64()),
        "extra": ["x", "y"],
    })
    deltalake.write_deltalake(
        str(root), second, partition_by=["day", "n"], mode="append", schema_mode="merge"
    )
    source = open_source(str(root))

    ours = source.reader(source.schema.names).read_all().sort_by("id")

    theirs = pa.table(deltalake.DeltaTable(str(root)).to_pyarrow_table()).sort_by("id")
    assert ours.equals(theirs.select(ours.column_names))  # the same types too, not cast
    assert ours.column("n").to_pylist() == [1, None] * 5 + [3, 3]
    assert ours.column("extra").to_pylist() == [None] * 10 + ["x", "y"]


async def test_rows_a_deletion_vector_deletes_are_not_scored(
    emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "dv"
    table = regressor_table(emulator, 500, seed=84)
    deltalake.write_deltalake(
        str(root), table, configuration={"delta.enableDeletionVectors": "true"}
    )
    deleted = [0, 7, 250, 499]
    _delete_rows_with_a_deletion_vector(root, deleted)
    out = tmp_path / "o.parquet"

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(root), "-o", str(out), *COMMON, "--batch-rows", "64"
    )

    assert code == 0, printed.decode()[-2000:]
    live = table.filter(pa.array([i not in deleted for i in range(500)]))
    result = read_output(out)
    assert result.num_rows == 496
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, live)
    assert emulator.accounting(ENDPOINT)["rows_delivered"] and _rows_sent(emulator) == 496


def _rows_sent(emulator: Emulator) -> int:
    return sum(emulator.accounting(ENDPOINT)["rows_delivered"].values())


async def test_column_mapping_is_refused_before_anything_is_sent(
    emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "mapped"
    deltalake.write_deltalake(
        str(root), regressor_table(emulator, 50, seed=85),
        configuration={"delta.columnMapping.mode": "name"},
    )

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(root), "-o", str(tmp_path / "o.parquet"), *COMMON
    )

    text = printed.decode()
    assert code == 2, text
    assert "column mapping" in text and "engine.spark.score" in text
    assert "Traceback" not in text
    assert _requests(emulator) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--input-version", "7"), "has no version 7: its latest is 1"),
        (("--where", "no_such_column = 1"), "not in the table: no_such_column"),
        (("--where", "day = = 1"), "does not parse as SQL"),
        (("--input-version", "0", "--input-timestamp", "2025-01-01T00:00:00Z"), "give one"),
    ],
)
async def test_bad_delta_input_flags_exit_2_naming_the_fix(
    emulator: Emulator, tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    _two_versions(emulator, tmp_path / "table")

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "table"), "-o",
        str(tmp_path / "o.parquet"), *COMMON, *flags,
    )

    text = printed.decode()
    assert code == 2, text
    assert message in text and "Traceback" not in text
    assert _requests(emulator) == 0


async def test_delta_flags_on_a_file_input_are_refused(emulator: Emulator, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(regressor_table(emulator, 10, seed=85), tmp_path / "in.parquet")
    with pytest.raises(UsageError, match="`input_version` applies to Delta tables"):
        await engine.ascore(
            tmp_path / "in.parquet", output=tmp_path / "o.parquet", endpoint=ENDPOINT,
            credentials=credentials_for(emulator), input_version=3,
        )


# --- output ---------------------------------------------------------------------------------


async def test_delta_output_is_one_commit_partitioned_and_refused_when_it_exists(
    emulator: Emulator, tmp_path: Path
) -> None:
    first, second = _two_versions(emulator, tmp_path / "in")
    out = tmp_path / "scored"

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in"), "-o", str(out), *COMMON,
        "--output-format", "delta", "--partition-by", "day",
    )

    assert code == 0, printed.decode()[-2000:]
    table = deltalake.DeltaTable(str(out))
    assert table.version() == 0  # one commit for the whole run
    assert table.metadata().partition_columns == ["day"]
    assert sorted(os.listdir(out)) == ["_delta_log", "day=2025-01-01", "day=2025-01-02"]
    both = pa.concat_tables([first, second])
    written = _by_feature(_read_table(out))
    expected = _by_feature(
        both.append_column(
            "prediction", pa.array(expected_predictions(emulator, ENDPOINT, _model_rows(both)))
        )
    )
    assert written.column("prediction").to_pylist() == expected.column("prediction").to_pylist()
    assert written.column("error").null_count == 1_600
    assert "Delta version 0" in printed.decode()

    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in"), "-o", str(out), *COMMON
    )
    assert code == 2 and "--mode append" in printed.decode()


async def test_append_and_overwrite_modes(emulator: Emulator, tmp_path: Path) -> None:
    _two_versions(emulator, tmp_path / "in")
    out = tmp_path / "scored"
    options = dict(
        output=out, endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off"
    )
    await engine.ascore(tmp_path / "in", input_version=0, output_format="delta", **options)

    appended = await engine.ascore(tmp_path / "in", mode="append", **options)
    assert appended.output_version == 1
    assert _read_table(out).num_rows == 1_000 + 1_600

    replaced = await engine.ascore(tmp_path / "in", input_version=0, mode="overwrite", **options)
    assert replaced.output_version == 2
    assert _read_table(out).num_rows == 1_000


async def test_bad_delta_outputs_are_refused_before_anything_is_sent(
    emulator: Emulator, tmp_path: Path
) -> None:
    _two_versions(emulator, tmp_path / "in")
    options = dict(endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("not a table")

    with pytest.raises(UsageError, match="no _delta_log/"):
        await engine.ascore(tmp_path / "in", output=tmp_path / "stuff", output_format="delta",
                            **options)
    with pytest.raises(UsageError, match="`partition_by` nope: not among"):
        await engine.ascore(tmp_path / "in", output=tmp_path / "o", output_format="delta",
                            partition_by="nope", **options)
    with pytest.raises(UsageError, match="`partition_by` applies to Delta outputs"):
        await engine.ascore(tmp_path / "in", output=tmp_path / "o.parquet", partition_by="day",
                            **options)
    await engine.ascore(tmp_path / "in", output=tmp_path / "o", output_format="delta",
                        keep=["day"], **options)
    emulator.reset_accounting()
    with pytest.raises(UsageError, match="has columns"):
        await engine.ascore(tmp_path / "in", output=tmp_path / "o", mode="append", **options)
    with pytest.raises(OutputExistsError):
        await engine.ascore(tmp_path / "in", output=tmp_path / "o", output_format="delta",
                            **options)
    assert _requests(emulator) == 0


# --- exactly once -----------------------------------------------------------------------------

_CRASH_AFTER_COMMIT = """
import os, sys
import engine.delta_sink as delta
real_commit = delta._commit
def commit_then_crash(*args, **kwargs):
    real_commit(*args, **kwargs)
    os._exit(137)  # the process dies between the commit and the exit, like a killed task
delta._commit = commit_then_crash
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def _cli(emulator: Emulator, tmp_path: Path, *args: str, crash: bool) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(
        DATABRICKS_CONFIG_FILE=str(tmp_path / "absent.cfg"), DATABRICKS_HOST=emulator.host,
        DATABRICKS_CLIENT_ID=emulator.client_id,
        DATABRICKS_CLIENT_SECRET=emulator.client_secret,
    )
    program = ["-c", _CRASH_AFTER_COMMIT] if crash else ["-m", "engine"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *program, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


async def test_a_rerun_after_a_crash_between_commit_and_exit_appends_nothing_twice(
    emulator: Emulator, tmp_path: Path
) -> None:
    _two_versions(emulator, tmp_path / "in")
    out = tmp_path / "scored"
    args = ("score", str(tmp_path / "in"), "-o", str(out), "--output-format", "delta",
            "--mode", "append", *COMMON)

    code, printed = await _cli(emulator, tmp_path, *args, crash=True)
    assert code == 137, printed[-2000:]
    assert _read_table(out).num_rows == 1_600  # committed before the crash
    assert (tmp_path / ".scored.checkpoint.staged.arrow").exists()  # the crash left it
    emulator.reset_accounting()

    code, printed = await _cli(emulator, tmp_path, *args, crash=False)

    assert code == 0, printed[-2000:]
    assert "already holds this run's rows" in printed and "version 0" in printed
    assert _read_table(out).num_rows == 1_600
    assert deltalake.DeltaTable(str(out)).version() == 0
    assert _requests(emulator) == 0  # nothing sent either
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


async def test_another_input_version_is_another_run_and_no_resume_writes_again(
    emulator: Emulator, tmp_path: Path
) -> None:
    _two_versions(emulator, tmp_path / "in")
    out = tmp_path / "scored"
    options = dict(
        output=out, endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off",
        output_format="delta", mode="append",
    )
    await engine.ascore(tmp_path / "in", input_version=0, **options)
    skipped = await engine.ascore(tmp_path / "in", input_version=0, **options)
    assert (skipped.output_version, skipped.rows_scored) == (0, 0)

    other = await engine.ascore(tmp_path / "in", input_version=1, **options)
    assert other.output_version == 1 and other.rows_scored == 1_600
    again = await engine.ascore(tmp_path / "in", input_version=0, resume=False, **options)
    assert again.output_version == 2
    assert _read_table(out).num_rows == 1_000 + 1_600 + 1_000


def test_without_deltalake_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "t" / "_delta_log").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "deltalake", None)
    with pytest.raises(UsageError, match=r"pip install 'databricks-batch-engine\[delta\]'"):
        open_source(tmp_path / "t")


async def test_shards_appending_to_one_new_table_each_commit_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    for i in range(4):
        part = _with_day(regressor_table(emulator, 250, seed=100 + i), f"2025-02-0{i + 1}")
        deltalake.write_deltalake(str(root), part, mode="append")
    out = tmp_path / "scored"
    runs = [
        run_cli(emulator, tmp_path, "score", str(root), "--shard", f"{index}/2", "-o", str(out),
                "--output-format", "delta", "--mode", "append", *COMMON)
        for index in range(2)
    ]
    for code, printed in await asyncio.gather(*runs):
        assert code == 0, printed.decode()[-2000:]

    table = deltalake.DeltaTable(str(out))
    assert table.version() == 1  # two commits: one per shard
    assert _read_table(out).num_rows == 1_000
    assert not list(tmp_path.glob(".scored*.checkpoint"))  # each shard removed its own


async def test_validate_checks_the_delta_version_it_is_given(
    emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "table"
    table = regressor_table(emulator, 50, seed=84)
    deltalake.write_deltalake(str(root), table)
    broken = table.drop_columns(["x0"])
    deltalake.write_deltalake(str(root), broken, mode="overwrite", schema_mode="overwrite")
    validate = ("validate", str(root), "--endpoint", ENDPOINT)

    code, printed = await _cli(emulator, tmp_path, *validate, "--input-version", "0", crash=False)
    assert code == 0 and "OK" in printed, printed[-2000:]
    code, printed = await _cli(emulator, tmp_path, *validate, crash=False)
    assert code == 2 and "x0" in printed, printed[-2000:]
    code, printed = await _cli(
        emulator, tmp_path, *validate, "--input-timestamp", "2000-01-01T00:00:00Z", crash=False
    )
    assert code == 2 and "2000-01-01" in printed and "Traceback" not in printed
    assert _requests(emulator) == 0
