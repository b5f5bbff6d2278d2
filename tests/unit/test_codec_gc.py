"""Encoding a body starts no garbage collection, and leaves the collector as it found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pyarrow as pa
import pytest

from engine.codec import encode_dataframe_split


@pytest.fixture
def collections() -> Iterator[list[int]]:
    started: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(count)
    try:
        yield started
    finally:
        gc.callbacks.remove(count)


def _batch() -> pa.RecordBatch:
    # 5000 rows of strings and a short int run: 5000 row tuples, 7x the gen-0 threshold
    return pa.record_batch(
        {"s": pa.array([f"r{i}" for i in range(5000)]), "n": pa.array(range(5000), pa.int64())}
    )


def test_encoding_starts_no_collection_and_re_enables_the_collector(
    collections: list[int],
) -> None:
    batch = _batch()
    assert gc.isenabled()
    gc.collect()  # counts from zero, so only the encoding could start one
    collections.clear()
    encode_dataframe_split(batch)
    # Unpaused, 5000 row tuples start 7 collections; paused, at most the one the re-enabled
    # collector owes (freed tuples go to a free list, which does not lower its count).
    assert len(collections) <= 1
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    try:
        encode_dataframe_split(_batch())
        assert not gc.isenabled()
    finally:
        gc.enable()
