"""The Spark task's result hand-over is bounded: a slow consumer holds the engine back instead
of letting results pile up in memory. (pyarrow only: no Spark, no sockets.)"""

from __future__ import annotations

import threading

import pyarrow as pa

from engine.spark import _QueueSink

SCHEMA = pa.schema([("x", pa.int64())])


def table(i: int) -> pa.Table:
    return pa.table({"x": pa.array([i] * 1000, pa.int64())})


def test_a_slow_consumer_never_has_more_than_the_bound_waiting() -> None:
    sink = _QueueSink(SCHEMA, max_tables=4)
    producer = threading.Thread(
        target=lambda: ([sink.add(i, table(i)) for i in range(50)], sink.finish())
    )
    producer.start()
    seen, most_waiting = [], 0
    while True:
        most_waiting = max(most_waiting, sink.results.qsize())
        item = sink.results.get(timeout=10)
        if item is None:
            break
        seen.append(item.column("x")[0].as_py())
    producer.join(timeout=10)
    assert seen == list(range(50))  # every result, in order
    assert most_waiting <= 4


def test_a_consumer_that_stops_reading_releases_a_blocked_producer() -> None:
    sink = _QueueSink(SCHEMA, max_tables=2)
    producer = threading.Thread(target=lambda: [sink.add(i, table(i)) for i in range(10)])
    producer.start()
    sink.results.get(timeout=10)  # read one, then stop reading (Spark's limit())
    sink.closed.set()
    producer.join(timeout=10)
    assert not producer.is_alive()
