"""engine.sink: results land in batch order, typed, and only ever as a complete file."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import EngineError, InputError, OutputExistsError, StorageError, UsageError
from engine.sink import ROW_GROUP_ROWS, OrderedWriter, OutputSpec, check_output, read_output
from engine.sink.formats import IPC_BATCH_BYTES, IPC_BATCH_ROWS, IpcOutput, ParquetOutput


def _result(batch_id: int, predictions: list[Any], typ: pa.DataType | None = None) -> pa.Table:
    rows = len(predictions)
    errors = [None if p is not None else "rejected" for p in predictions]
    return pa.table(
        {
            "id": [batch_id * 100 + i for i in range(rows)],
            "prediction": pa.array(predictions, typ),
            "error": pa.array(errors, pa.string()),
        }
    )


def _rejected(batch_id: int, rows: int = 2) -> pa.Table:
    return _result(batch_id, [None] * rows, pa.null())


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- check_output --------------------------------------------------------------------------


def test_check_output_refuses_an_existing_file_naming_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.arrow"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"out\.arrow already exists.*`overwrite=True`"):
        check_output(OutputSpec(str(path)))
    check_output(OutputSpec(str(path), overwrite=True))


def test_check_output_refuses_a_directory_even_with_overwrite(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        check_output(OutputSpec(str(tmp_path), overwrite=True))


def test_check_output_accepts_a_parent_that_can_be_created_without_creating_it(
    tmp_path: Path,
) -> None:
    check_output(OutputSpec(str(tmp_path / "new" / "deeper" / "out.arrow")))
    assert _files(tmp_path) == []


def test_check_output_refuses_a_parent_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_output(OutputSpec(str(tmp_path / "file" / "out.arrow")))


def test_writer_refuses_an_existing_output_before_writing_anything(tmp_path: Path) -> None:
    path = tmp_path / "out.arrow"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        OrderedWriter(OutputSpec(str(path)))
    assert _files(tmp_path) == ["out.arrow"]
    assert path.read_bytes() == b"old"


# --- ordering -----------------------------------------------------------------------------


def test_out_of_order_results_are_written_in_batch_order(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    assert writer.add(2, _result(2, [2.0, 2.5])) == 0
    assert writer.add(1, _result(1, [1.0])) == 0
    assert (writer.pending, writer.next_batch_id, writer.rows_written) == (2, 0, 0)
    assert writer.add(0, _result(0, [0.0])) == 3
    assert (writer.pending, writer.next_batch_id, writer.rows_written) == (0, 3, 4)
    writer.finish()
    table = read_output(tmp_path / "out.arrow")
    assert table.column("id").to_pylist() == [0, 100, 200, 201]
    assert table.column("prediction").to_pylist() == [0.0, 1.0, 2.0, 2.5]


def test_record_batches_are_accepted_like_tables(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1.0]).to_batches()[0])
    writer.finish()
    assert read_output(tmp_path / "out.arrow").num_rows == 1


def test_a_repeated_batch_id_is_refused(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1.0]))
    writer.add(2, _result(2, [1.0]))
    for batch_id in (0, 2):
        with pytest.raises(ValueError, match=f"batch {batch_id} was already added"):
            writer.add(batch_id, _result(batch_id, [1.0]))
    writer.abort()


def test_finish_names_the_missing_batch_ids(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    for batch_id in (0, 2, 6):
        writer.add(batch_id, _result(batch_id, [1.0]))
    with pytest.raises(EngineError, match=r"batches 1, 3-5 never arrived \(2 later results"):
        writer.finish()
    writer.abort()
    assert _files(tmp_path) == []


def test_finish_with_expected_batches_names_the_ones_never_sent(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1.0]))
    with pytest.raises(EngineError, match="batches 1-2 never arrived"):
        writer.finish(expected_batches=3)
    writer.abort()


def test_finish_with_expected_batches_refuses_extra_ids(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1.0]))
    writer.add(5, _result(5, [1.0]))
    with pytest.raises(EngineError, match="unexpected batches 5"):
        writer.finish(expected_batches=1)
    writer.abort()


# --- atomic finish ------------------------------------------------------------------------


def test_nothing_appears_at_the_path_before_finish(tmp_path: Path) -> None:
    path = tmp_path / "out.arrow"
    writer = OrderedWriter(OutputSpec(str(path)))
    writer.add(0, _result(0, [1.0] * 1000))
    assert not path.exists()
    temps = _files(tmp_path)
    assert len(temps) == 1
    assert temps[0].startswith(".out.arrow.")
    assert temps[0].endswith(".tmp")
    assert writer.finish() == str(path)
    assert _files(tmp_path) == ["out.arrow"]


def test_a_writer_that_is_never_used_creates_nothing(tmp_path: Path) -> None:
    OrderedWriter(OutputSpec(str(tmp_path / "sub" / "out.arrow")))
    assert _files(tmp_path) == []


def test_abort_leaves_no_output_and_no_temp_files(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.parquet")))
    writer.add(0, _rejected(0))  # held in a spill file too
    writer.add(1, _result(1, [1.0]))
    writer.add(3, _result(3, [1.0]))
    writer.abort()
    writer.abort()  # idempotent
    assert _files(tmp_path) == []


def test_context_manager_aborts_on_an_exception(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        OrderedWriter(OutputSpec(str(tmp_path / "out.arrow"))) as writer,
    ):
        writer.add(0, _result(0, [1.0]))
        raise RuntimeError("boom")
    assert _files(tmp_path) == []


def test_context_manager_finishes_on_a_clean_exit(tmp_path: Path) -> None:
    with OrderedWriter(OutputSpec(str(tmp_path / "out.arrow"))) as writer:
        writer.add(0, _result(0, [1.0]))
    assert _files(tmp_path) == ["out.arrow"]


def test_abort_after_finish_keeps_the_output(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1.0]))
    writer.finish()
    writer.abort()
    assert read_output(tmp_path / "out.arrow").num_rows == 1


def test_add_after_finish_is_an_error(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.finish()
    with pytest.raises(RuntimeError, match="already finished"):
        writer.add(0, _result(0, [1.0]))


def test_overwrite_replaces_an_existing_output_only_at_finish(tmp_path: Path) -> None:
    path = tmp_path / "out.arrow"
    path.write_bytes(b"old")
    writer = OrderedWriter(OutputSpec(str(path), overwrite=True))
    writer.add(0, _result(0, [1.0]))
    assert path.read_bytes() == b"old"
    writer.finish()
    assert read_output(path).num_rows == 1


def test_a_file_that_appears_during_the_run_is_not_clobbered(tmp_path: Path) -> None:
    path = tmp_path / "out.arrow"
    writer = OrderedWriter(OutputSpec(str(path)))
    writer.add(0, _result(0, [1.0]))
    path.write_bytes(b"someone else's")
    with pytest.raises(OutputExistsError, match="appeared while the run was writing"):
        writer.finish()
    writer.abort()
    assert path.read_bytes() == b"someone else's"
    assert _files(tmp_path) == ["out.arrow"]


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.arrow"
    writer = OrderedWriter(OutputSpec(str(path)))
    writer.finish()
    assert path.is_file()


# --- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.parquet", "out.PQ"])
def test_parquet_extension_writes_zstd_parquet(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    writer = OrderedWriter(OutputSpec(str(path)))
    writer.add(0, _result(0, [1.0, 2.0]))
    writer.finish()
    assert path.read_bytes()[:4] == b"PAR1"
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"
    assert read_output(path).column("prediction").to_pylist() == [1.0, 2.0]


@pytest.mark.parametrize("name", ["out.arrow", "out.feather", "out.IPC", "out"])
def test_arrow_extensions_and_none_write_an_arrow_ipc_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    writer = OrderedWriter(OutputSpec(str(path)))
    writer.add(0, _result(0, [1.0]))
    writer.finish()
    assert path.read_bytes()[:6] == b"ARROW1"
    assert pa.ipc.open_file(str(path)).read_all().num_rows == 1


@pytest.mark.parametrize("name", ["out.csv", "out.json", "scored.2026-11-21.jsonl"])
def test_an_extension_the_engine_does_not_write_is_refused_naming_the_fix(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(UsageError, match=r"does not write '\.[a-z0-9-]+' files.*\.parquet"):
        check_output(OutputSpec(str(tmp_path / name)))
    assert _files(tmp_path) == []


def test_output_takes_the_umasks_mode_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
        writer.add(0, _result(0, [1.0]))
        writer.finish()
    finally:
        os.umask(old)
    assert (tmp_path / "out.arrow").stat().st_mode & 0o777 == 0o640


def test_small_parquet_results_are_gathered_into_large_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    writer = OrderedWriter(OutputSpec(str(path)))
    per_batch = 1_000
    batches = (ROW_GROUP_ROWS // per_batch) * 2 + 5
    for batch_id in range(batches):
        writer.add(batch_id, _result(batch_id, [1.0] * per_batch))
    writer.finish()
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_rows == batches * per_batch
    assert metadata.num_row_groups <= 3
    assert metadata.row_group(0).num_rows >= ROW_GROUP_ROWS


def test_small_arrow_results_are_gathered_into_large_record_batches(tmp_path: Path) -> None:
    """2,000 results of 100 rows read back as a few record batches, not 2,000 chunks."""
    path = tmp_path / "out.arrow"
    writer = OrderedWriter(OutputSpec(str(path)))
    for batch_id in range(2_000):
        writer.add(batch_id, _result(batch_id, [float(batch_id)] * 100))
    writer.finish()
    with pa.ipc.open_file(path) as file:
        sizes = [file.get_batch(i).num_rows for i in range(file.num_record_batches)]
        table = file.read_all()
    # results stay whole: a record batch is the first that reaches the row limit
    assert len(sizes) == 4 and sum(sizes) == 200_000, sizes
    assert all(IPC_BATCH_ROWS <= n < IPC_BATCH_ROWS + 100 for n in sizes[:-1]), sizes
    assert table.column("prediction").to_pylist() == [float(i // 100) for i in range(200_000)]
    assert table.column("id").to_pylist() == [
        batch_id * 100 + i for batch_id in range(2_000) for i in range(100)
    ]


@pytest.mark.parametrize(("name", "output"), [("out.arrow", IpcOutput), ("out.parquet", ParquetOutput)])
def test_gathered_results_are_written_off_the_callers_thread_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, output: type[Any]
) -> None:
    """The caller (the event loop) goes on while Arrow writes: every gathering is written
    by one other thread, in batch order."""
    writers: set[int] = set()
    emit = output._emit

    def recording(self: Any, table: pa.Table) -> None:
        writers.add(threading.get_ident())
        emit(self, table)

    monkeypatch.setattr(output, "_emit", recording)
    path = tmp_path / name
    writer = OrderedWriter(OutputSpec(str(path)))
    for batch_id in reversed(range(2_000)):
        writer.add(batch_id, _result(batch_id, [float(batch_id)] * 100))
    writer.finish()
    assert len(writers) == 1 and threading.get_ident() not in writers
    table = read_output(path)
    assert table.column("id").to_pylist() == list(range(200_000))
    assert table.column("prediction").to_pylist() == [float(i // 100) for i in range(200_000)]


def test_a_write_that_fails_in_the_background_is_raised_by_a_later_add(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk met by the output thread is not lost: a later add raises it as a storage
    error naming the output, and the abort leaves nothing behind."""
    real = pa.OSFile

    def full(path: str, mode: str = "r", **kwargs: Any) -> pa.NativeFile:
        return real("/dev/full", mode) if mode == "wb" else real(path, mode, **kwargs)

    monkeypatch.setattr(pa, "OSFile", full)
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    with pytest.raises(StorageError, match="cannot write the output .*No space left on device"):
        for batch_id in range(2_000):
            writer.add(batch_id, _result(batch_id, [1.0] * 100))
    writer.abort()
    assert _files(tmp_path) == []


def test_wide_arrow_results_are_gathered_only_up_to_a_bound(tmp_path: Path) -> None:
    """Rows of 64 KB: a record batch holds about IPC_BATCH_BYTES of them (passed by at most
    one result), not 65k rows."""
    path = tmp_path / "wide.arrow"
    writer = OrderedWriter(OutputSpec(str(path)))
    note = "n" * 65_536
    for batch_id in range(40):
        result = _result(batch_id, [1.0] * 100)
        writer.add(batch_id, result.add_column(0, "note", pa.array([note] * 100)))
    writer.finish()
    with pa.ipc.open_file(path) as file:
        batches = [file.get_batch(i) for i in range(file.num_record_batches)]
    assert sum(batch.num_rows for batch in batches) == 4_000
    assert len(batches) > 1
    result_bytes = 100 * len(note)
    assert max(batch.nbytes for batch in batches) <= IPC_BATCH_BYTES + 1.1 * result_bytes


def test_output_schema_is_kept_columns_then_prediction_then_error(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    table = _result(0, [1.0]).select(["error", "prediction", "id"])
    writer.add(0, table)
    writer.finish()
    assert read_output(tmp_path / "out.arrow").schema == pa.schema(
        [("id", pa.int64()), ("prediction", pa.float64()), ("error", pa.string())]
    )


def test_empty_run_writes_a_valid_file_with_the_output_schema(tmp_path: Path) -> None:
    kept = pa.schema([("id", pa.int64())])
    writer = OrderedWriter(
        OutputSpec(str(tmp_path / "out.parquet")), prediction_type=pa.float64(), kept_schema=kept
    )
    writer.finish()
    table = read_output(tmp_path / "out.parquet")
    assert table.num_rows == 0
    assert table.schema.names == ["id", "prediction", "error"]
    assert table.schema.field("prediction").type == pa.float64()


def test_read_output_of_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no output file"):
        read_output(tmp_path / "nope.arrow")


# --- schema checks and prediction typing ------------------------------------------------


def test_declared_prediction_type_is_applied_to_every_result(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")), prediction_type=pa.float32())
    writer.add(0, _result(0, [1, 2]))
    writer.add(1, _rejected(1))
    writer.finish()
    column = read_output(tmp_path / "out.arrow").column("prediction")
    assert column.type == pa.float32()
    assert column.to_pylist() == [1.0, 2.0, None, None]


def test_prediction_that_cannot_take_the_declared_type_is_a_clear_error(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")), prediction_type=pa.int64())
    with pytest.raises(EngineError, match=r"batch 0's predictions \(string\) do not convert"):
        writer.add(0, _result(0, ["cat"]))
    writer.abort()


def test_without_a_declared_type_the_first_typed_result_decides(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _rejected(0))
    writer.add(1, _rejected(1))
    assert writer.prediction_type is None
    assert writer.add(2, _result(2, [1.5])) == 1
    assert writer.prediction_type == pa.float64()
    writer.add(3, _result(3, [2, 3]))  # int64, widened to double
    writer.add(4, _rejected(4))
    writer.finish()
    table = read_output(tmp_path / "out.arrow")
    assert table.schema.field("prediction").type == pa.float64()
    assert table.column("id").to_pylist() == [0, 1, 100, 101, 200, 300, 301, 400, 401]
    assert table.column("prediction").to_pylist() == [None] * 4 + [1.5, 2.0, 3.0, None, None]
    assert table.column("error").to_pylist()[:4] == ["rejected"] * 4


def test_held_results_count_as_written_so_the_callers_window_moves(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    assert writer.add(0, _rejected(0, rows=3)) == 1
    assert writer.rows_written == 3
    writer.abort()


def test_held_results_wait_on_disk_not_in_memory(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _rejected(0, rows=10_000))
    assert any(name.endswith(".held.tmp") for name in _files(tmp_path))
    writer.add(1, _result(1, [1.0]))
    assert not any(name.endswith(".held.tmp") for name in _files(tmp_path))
    writer.finish()
    assert read_output(tmp_path / "out.arrow").num_rows == 10_001


def test_the_type_is_decided_in_batch_order_not_arrival_order(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(1, _result(1, [2]))
    writer.add(0, _result(0, [1.5]))
    assert writer.prediction_type == pa.float64()
    writer.finish()
    assert read_output(tmp_path / "out.arrow").column("prediction").to_pylist() == [1.5, 2.0]


def test_text_predictions_are_not_parsed_into_numbers(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1.5]))
    with pytest.raises(EngineError, match=r"batch 1's predictions \(string\).*not parsed"):
        writer.add(1, _result(1, ["2.5"]))
    writer.abort()


def test_all_results_rejected_writes_a_null_typed_prediction(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.parquet")))
    writer.add(0, _rejected(0))
    writer.add(1, _rejected(1))
    writer.finish()
    table = read_output(tmp_path / "out.parquet")
    assert table.schema.field("prediction").type == pa.null()
    assert table.num_rows == 4
    assert _files(tmp_path) == ["out.parquet"]


def test_later_type_that_loses_data_is_refused_with_a_fix(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1, 2]))
    with pytest.raises(EngineError, match=r"batch 0 set.*declare the prediction type up front"):
        writer.add(1, _result(1, [1.5]))
    writer.abort()


def test_struct_missing_a_field_is_filled_with_nulls(tmp_path: Path) -> None:
    full = pa.struct([("label", pa.string()), ("score", pa.float64())])
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [{"label": "a", "score": 0.5}], full))
    writer.add(1, _result(1, [{"label": "b"}]))
    writer.finish()
    assert read_output(tmp_path / "out.arrow").column("prediction").to_pylist() == [
        {"label": "a", "score": 0.5},
        {"label": "b", "score": None},
    ]


def test_struct_with_an_extra_field_is_refused_rather_than_dropped(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [{"label": "a"}]))
    with pytest.raises(EngineError, match=r"has no field.*score"):
        writer.add(1, _result(1, [{"label": "b", "score": 0.5}]))
    writer.abort()


def test_result_without_an_error_column_is_refused(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    with pytest.raises(EngineError, match="batch 0's result has no error column"):
        writer.add(0, _result(0, [1.0]).drop_columns(["error"]))
    writer.abort()


def test_result_with_other_kept_columns_is_refused(tmp_path: Path) -> None:
    writer = OrderedWriter(
        OutputSpec(str(tmp_path / "out.arrow")), kept_schema=pa.schema([("key", pa.string())])
    )
    with pytest.raises(EngineError, match=r"batch 0's kept columns are \['id'\]"):
        writer.add(0, _result(0, [1.0]))
    writer.abort()


def test_kept_columns_are_cast_to_the_kept_schema(tmp_path: Path) -> None:
    kept = pa.schema([("id", pa.int32())])
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")), kept_schema=kept)
    writer.add(0, _result(0, [1.0]))
    writer.finish()
    assert read_output(tmp_path / "out.arrow").schema.field("id").type == pa.int32()


def test_a_result_unlike_the_one_before_is_fitted_again(tmp_path: Path) -> None:
    """Results whose schema fitted are accepted by one comparison; one that differs is
    checked and fitted again, not let through."""
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    writer.add(0, _result(0, [1.0]))
    writer.add(1, _result(1, [2.0]))  # the same schema
    narrower = _result(2, [3.0])
    narrower = narrower.set_column(0, "id", narrower.column("id").cast(pa.int32()))
    writer.add(2, narrower)  # cast back to the output's int64
    with pytest.raises(EngineError, match=r"batch 3's kept columns are \['key'\]"):
        writer.add(3, _result(3, [4.0]).rename_columns(["key", "prediction", "error"]))
    writer.finish()
    out = read_output(tmp_path / "out.arrow")
    assert out.schema.field("id").type == pa.int64()
    assert out.column("id").to_pylist() == [0, 100, 200]


def test_kept_schema_may_not_use_a_result_column_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot be named"):
        OrderedWriter(
            OutputSpec(str(tmp_path / "out.arrow")),
            kept_schema=pa.schema([("prediction", pa.int64())]),
        )


def test_null_typed_error_column_is_written_as_string(tmp_path: Path) -> None:
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    table = _result(0, [1.0]).set_column(2, "error", pa.nulls(1, pa.null()))
    writer.add(0, table)
    writer.finish()
    assert read_output(tmp_path / "out.arrow").schema.field("error").type == pa.string()


# --- other filesystems (fsspec's in-process memory filesystem; no sockets) -----------------


@pytest.fixture
def memory_fs() -> Iterator[Any]:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")  # one store per process: start and end it empty
    memory.store.clear()
    yield memory
    memory.store.clear()


@pytest.mark.parametrize("name", ["out.arrow", "out.parquet"])
def test_output_on_an_fsspec_filesystem_appears_only_at_finish(memory_fs: Any, name: str) -> None:
    uri = f"memory://results/{name}"
    writer = OrderedWriter(OutputSpec(uri))
    writer.add(1, _result(1, [1.0]))
    writer.add(0, _result(0, [0.5, 2.0]))
    assert not memory_fs.exists(f"/results/{name}")
    assert writer.finish() == uri
    assert memory_fs.ls("/results", detail=False) == [f"/results/{name}"]
    assert read_output(uri).column("prediction").to_pylist() == [0.5, 2.0, 1.0]
    with pytest.raises(OutputExistsError, match=rf"{uri} already exists"):
        check_output(OutputSpec(uri))


def test_abort_on_an_fsspec_filesystem_leaves_nothing(memory_fs: Any) -> None:
    writer = OrderedWriter(OutputSpec("memory://results/out.parquet"))
    writer.add(0, _result(0, [0.5]))
    writer.abort()
    assert memory_fs.find("/") == []


# --- early sync: a local output reaches the disk while it is written -------------------------


@pytest.fixture
def sync_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.sink.formats as formats

    monkeypatch.setattr(formats, "EARLY_SYNC_BYTES", 1)


def _synced_output(path: Path, sync: Any) -> IpcOutput:
    sink = pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), buffer_size=1 << 20)
    schema = pa.schema([("x", pa.float64())])
    return IpcOutput(sink, schema, sync=sync)


def _gathering(rows: int = IPC_BATCH_ROWS) -> pa.Table:
    return pa.table({"x": pa.array([0.5] * rows, pa.float64())})


def test_a_local_output_is_synced_while_it_is_written_not_only_at_the_end(
    tmp_path: Path, sync_every_byte: None,
) -> None:
    """Each sync sees the gatherings written before it already in the file, and runs on a
    thread of its own, so the output thread never waits for the disk."""
    path = tmp_path / "out.arrow"
    seen: list[tuple[int, int]] = []  # (file size when the sync ran, its thread)

    def sync() -> None:
        seen.append((path.stat().st_size, threading.current_thread().name))

    output = _synced_output(path, sync)
    for _ in range(3):
        output.write(_gathering())
    output.close(flush=True)
    assert seen, "nothing was synced before close"
    assert all(size >= IPC_BATCH_ROWS * 8 for size, _ in seen), seen
    assert all(name.startswith("engine-output-sync") for _, name in seen), seen
    assert pa.ipc.open_file(str(path)).read_all().num_rows == 3 * IPC_BATCH_ROWS


def test_an_early_sync_that_fails_is_raised_by_close(tmp_path: Path, sync_every_byte: None) -> None:
    def failing() -> None:
        raise OSError(5, "Input/output error")

    output = _synced_output(tmp_path / "out.arrow", failing)
    output.write(_gathering())
    with pytest.raises(OSError, match="Input/output error"):
        output.close(flush=True)


def test_the_writer_syncs_a_local_output_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through OrderedWriter: past ``EARLY_SYNC_BYTES`` the output file is synced before the
    final fsync of ``finish``."""
    import engine.sink.formats as formats
    import engine.sink.writer as writer_module

    monkeypatch.setattr(formats, "EARLY_SYNC_BYTES", 1)
    synced: list[str] = []
    real = writer_module.fsync_path

    def recording(path: str) -> None:
        synced.append(os.path.basename(path))
        real(path)

    monkeypatch.setattr(writer_module, "fsync_path", recording)
    path = tmp_path / "out.arrow"
    writer = OrderedWriter(OutputSpec(str(path)))
    per_batch = 1_000
    for batch_id in range((IPC_BATCH_ROWS // per_batch) * 2 + 5):
        writer.add(batch_id, _result(batch_id, [1.0] * per_batch))
    writer.finish()
    # one or more early syncs of the temporary file, then the final one
    assert len(synced) >= 2 and len(set(synced)) == 1, synced
    assert read_output(path).num_rows == ((IPC_BATCH_ROWS // per_batch) * 2 + 5) * per_batch


def test_one_sync_at_a_time_and_writes_go_on_while_it_runs(
    tmp_path: Path, sync_every_byte: None
) -> None:
    """A sync that blocks (a slow disk) holds up neither the writes nor the caller; no second
    sync starts until it is done, and close waits for it."""
    release = threading.Event()
    started: list[int] = []

    def slow_sync() -> None:
        started.append(1)
        assert release.wait(timeout=60), "the test never released the sync"

    path = tmp_path / "out.arrow"
    output = _synced_output(path, slow_sync)
    for _ in range(4):
        output.write(_gathering())  # each would start a sync if none were running
    output._wait()  # every gathering submitted so far is written, the sync still blocked
    assert len(started) == 1
    assert path.stat().st_size >= 3 * IPC_BATCH_ROWS * 8
    release.set()
    output.close(flush=True)
    assert pa.ipc.open_file(str(path)).read_all().num_rows == 4 * IPC_BATCH_ROWS


def test_an_abort_waits_for_a_sync_in_flight_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.sink.formats as formats
    import engine.sink.writer as writer_module

    monkeypatch.setattr(formats, "EARLY_SYNC_BYTES", 1)
    release = threading.Event()
    in_flight = threading.Event()

    def slow_sync(path: str) -> None:
        in_flight.set()
        assert release.wait(timeout=60), "the test never released the sync"

    monkeypatch.setattr(writer_module, "fsync_path", slow_sync)
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    for batch_id in range(IPC_BATCH_ROWS // 1_000 + 1):
        writer.add(batch_id, _result(batch_id, [1.0] * 1_000))
    assert in_flight.wait(timeout=60)
    threading.Timer(0.05, release.set).start()  # the abort below must wait for this
    writer.abort()
    assert release.is_set()
    assert _files(tmp_path) == []


def test_an_output_on_a_fuse_mount_is_synced_only_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dbfs and /Volumes on a cluster are FUSE mounts of an object store, which may upload
    a file at each fsync: there the output is synced once, before it is moved into place."""
    import engine.sink.formats as formats
    import engine.sink.writer as writer_module

    monkeypatch.setattr(formats, "EARLY_SYNC_BYTES", 1)
    monkeypatch.setattr(writer_module, "filesystem_type", lambda path: "fuse")
    synced: list[str] = []
    real = writer_module.fsync_path

    def recording(path: str) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(writer_module, "fsync_path", recording)
    writer = OrderedWriter(OutputSpec(str(tmp_path / "out.arrow")))
    for batch_id in range((IPC_BATCH_ROWS // 1_000) * 2 + 5):
        writer.add(batch_id, _result(batch_id, [1.0] * 1_000))
    writer.finish()
    assert len(synced) == 1


_MOUNTINFO = """22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /Volumes rw,nosuid shared:7 - fuse /dev/fuse rw,user_id=0
31 22 0:41 / /mnt/my\\040data rw - fuse.s3fs s3fs rw
32 22 0:42 / /dbfs rw - fuse.dbfs dbfs rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/Volumes/main/default/v/out.arrow", "fuse"),
        ("/Volumes", "fuse"),
        ("/Volumesque/out.arrow", "ext4"),
        ("/mnt/my data/out.arrow", "fuse.s3fs"),
        ("/dbfs/tmp/out.arrow", "fuse.dbfs"),
        ("/home/me/out.arrow", "ext4"),
    ],
)
def test_the_filesystem_of_a_path_is_its_longest_mount(path: str, kind: str) -> None:
    from engine.durable import filesystem_type

    assert filesystem_type(path, _MOUNTINFO) == kind
