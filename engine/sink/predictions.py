"""The ``prediction`` column's type: declared, or decided by the first result (in batch
order) whose predictions are not all-null; results before it wait in a spill file on disk,
so memory stays flat however many there are (the rules are in :mod:`engine.sink`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

from engine.errors import EngineError
from engine.sink.columns import cast, is_text
from engine.sink.formats import SERIAL_IPC
from engine.sink.publish import temp_beside

__all__ = [
    "PredictionTyping",
    "Spill",
]

class Spill:
    """Results waiting, in order, for the prediction type; kept on disk, not in memory."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self._sink = pa.OSFile(path, "wb")
        self._writer = ipc.new_stream(self._sink, schema, options=SERIAL_IPC)

    def add(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def drain(self) -> Iterator[pa.RecordBatch]:
        """Yield every held batch in order, then delete the spill file."""
        self._close()
        try:
            with pa.OSFile(self.path, "rb") as source:  # copies: the file is deleted next
                yield from ipc.open_stream(source)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _close(self) -> None:
        if not self._sink.closed:
            try:
                self._writer.close()
            finally:
                self._sink.close()


class PredictionTyping:
    """Types each result's ``prediction`` column, in batch order, and hands it on to ``write``.

    Args:
        declared: the type every result is cast to; ``None`` to take it from the results.
        spill_beside: the output path the spill file is created beside; ``None`` for the
            system's temporary directory (a remote output).
        schema_for: the output schema for a prediction type (held results are cast to it).
        write: where typed results go, in order.
    """

    def __init__(
        self,
        declared: pa.DataType | None,
        *,
        spill_beside: str | None,
        schema_for: Callable[[pa.DataType], pa.Schema],
        write: Callable[[pa.Table], None],
    ) -> None:
        self.type = declared
        self._declared = declared is not None
        self._decided_by: int | None = None
        self._held: Spill | None = None
        self._spill_beside = spill_beside
        self._schema_for = schema_for
        self._write = write

    def take(self, batch_id: int, table: pa.Table) -> None:
        """Take one result in batch order: hold it until typed, or write it."""
        prediction = table.column("prediction")
        if self.type is None:
            if pa.types.is_null(prediction.type):
                self._hold(table)
                return
            self.type, self._decided_by = prediction.type, batch_id
        if self._held is not None:
            self._release_held(self.type)
        self._write(self._typed(batch_id, table))

    def finish(self) -> pa.DataType:
        """Write what is held (Arrow's null type if no result ever had a typed prediction);
        returns the column's final type."""
        if self._held is not None:
            self._release_held(pa.null())
        return self.type or pa.null()

    def discard(self) -> None:
        """Delete the spill file, if any."""
        if self._held is not None:
            self._held.discard()

    def _typed(self, batch_id: int, table: pa.Table) -> pa.Table:
        target = self.type
        column = table.column("prediction")
        if column.type.equals(target):
            return table
        if self._declared:
            origin = "the declared prediction type"
        else:
            origin = f"the type batch {self._decided_by} set"
        where = f"batch {batch_id}'s predictions ({column.type}) do not convert to {origin}"
        hint = "" if self._declared else "; declare the prediction type up front"
        if is_text(column.type) and not is_text(target):  # parsing text is not a widening
            raise EngineError(f"{where}: text is not parsed into {target}{hint}")
        index = table.schema.get_field_index("prediction")
        return table.set_column(index, "prediction", cast(column, target, where, hint))

    def _hold(self, table: pa.Table) -> None:
        if self._held is None:
            self._held = Spill(temp_beside(self._spill_beside, ".held.tmp"), table.schema)
        self._held.add(table)

    def _release_held(self, prediction_type: pa.DataType) -> None:
        held, self._held = self._held, None
        assert held is not None
        target = self._schema_for(prediction_type)
        for batch in held.drain():
            self._write(pa.Table.from_batches([batch]).cast(target))
