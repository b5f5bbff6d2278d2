"""Memory between the reader and the writer is bounded in bytes, not only in batches.

Wide rows make a few batches large: the reorder window (then 4 x workers batches) alone let a
table of embeddings pile up a gigabyte. The input here is a RecordBatchReader whose rows
carry a 2 KB kept column; at each batch it hands out it notes how many Arrow bytes are alive:
input rows read and not yet written, and the output file's 1 MiB write buffer.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pyarrow as pa
import pytest

import engine
from engine.emulator import Emulator, Faults
from engine.sink import formats, read_output
from tests.helpers import credentials_for, expected_predictions, regressor_table

ENDPOINT = "demo-regressor"
BATCH_ROWS = 200
NOTE_BYTES = 2048
BATCHES = 60
OUTPUT_BUFFER = 2**20  # engine.sink.writer buffers the Arrow file it writes


def _wide_input(emulator: Emulator, alive: list[int]) -> tuple[pa.Table, pa.RecordBatchReader]:
    base = regressor_table(emulator, BATCH_ROWS * BATCHES, seed=11)
    notes = pa.array([f"{i:08d}".ljust(NOTE_BYTES, "x") for i in range(base.num_rows)])
    table = base.append_column("note", notes)
    schema = table.schema
    batches = table.to_batches(max_chunksize=BATCH_ROWS)

    def produce() -> Iterator[pa.RecordBatch]:
        start = pa.total_allocated_bytes()
        for batch in batches:
            # a fresh copy per batch: the engine holds it until it is written, nothing else
            fresh = pa.RecordBatch.from_arrays(
                [pa.concat_arrays([column]) for column in batch.columns], schema=schema
            )
            alive.append(pa.total_allocated_bytes() - start)
            yield fresh

    return table, pa.RecordBatchReader.from_batches(schema, produce())


@pytest.fixture(autouse=True)
def _results_written_as_they_come(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Arrow output gathers results up to IPC_BATCH_BYTES (16 MiB) before it writes them:
    a buffer of its own, bounded and tested in tests/unit/test_sink.py. Here each result is
    written as it comes, so what is measured is what the budget bounds."""
    monkeypatch.setattr(formats, "IPC_BATCH_BYTES", 1)


async def _score_wide(
    emulator: Emulator, tmp_path, **options
) -> tuple[list[int], int, engine.Summary]:
    # The endpoint, not the reader, is slow: 4 requests per 100 ms, 40 batches/s, so batches
    # pile up behind it on any machine that reads and encodes faster than that (the test
    # without a tight budget needs them to).
    emulator.set_faults(ENDPOINT, Faults(latency_ms=100.0))
    # Arrow bytes are counted process-wide: garbage an earlier test left in reference cycles
    # (tables held by an exception's frames), freed by a collection mid-run, counted as this
    # run freeing memory (the test failed after tests/unit/test_sink.py in one process).
    gc.collect()
    alive: list[int] = []
    table, reader = _wide_input(emulator, alive)
    batch_bytes = table.slice(0, BATCH_ROWS).nbytes
    out = tmp_path / "out.arrow"
    summary = await engine.ascore(
        reader, output=out, endpoint=ENDPOINT, credentials=credentials_for(emulator),
        batch_rows=BATCH_ROWS, concurrency=4, progress="off", overwrite=True, **options,
    )
    result = read_output(str(out))
    assert summary.exit_code == 0 and summary.rows_scored == table.num_rows
    assert result.select(table.column_names).equals(table)
    want = expected_predictions(emulator, ENDPOINT, table)
    assert result.column("prediction").to_pylist() == want
    return alive, batch_bytes, summary


async def test_wide_rows_wait_for_the_byte_budget(emulator: Emulator, tmp_path) -> None:
    alive, batch_bytes, summary = await _score_wide(emulator, tmp_path, max_buffer_mib=1)
    assert batch_bytes > 300_000  # each batch is a third of the budget
    # the budget, the output's write buffer, the batch the producer holds while it waits
    # for the budget and the one being read (measured: 1 MiB + 4.1 batches)
    assert max(alive) <= OUTPUT_BUFFER + 2**20 + 3 * batch_bytes, (max(alive), batch_bytes)
    # the summary says how much of the budget the run held (rows and bodies)
    assert 2 * batch_bytes <= summary.buffer_peak_bytes <= 2**20


async def test_without_a_tight_budget_more_piles_up(
    emulator: Emulator, tmp_path
) -> None:
    # The same run with the default budget: the queue and the batches being sent bind.
    # It shows what the test above measures does move with the budget.
    alive, batch_bytes, summary = await _score_wide(emulator, tmp_path)
    assert max(alive) > OUTPUT_BUFFER + 2**20 + 6 * batch_bytes, (max(alive), batch_bytes)
    assert summary.buffer_peak_bytes > 6 * batch_bytes
