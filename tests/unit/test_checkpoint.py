"""Checkpoint persistence: atomic parts, a manifest that survives a torn last line."""

from __future__ import annotations

import pyarrow as pa

from engine.checkpoint import FLUSH_BATCHES, MANIFEST, Checkpoint, batch_key


def test_key_depends_on_content_endpoint_and_model_version() -> None:
    base = batch_key(b"body", endpoint="e", model_version="v1")
    assert base == batch_key(b"body", endpoint="e", model_version="v1")
    assert base != batch_key(b"body2", endpoint="e", model_version="v1")
    assert base != batch_key(b"body", endpoint="f", model_version="v1")
    assert base != batch_key(b"body", endpoint="e", model_version="v2")


def test_written_batches_are_found_after_reopening(tmp_path) -> None:
    store = Checkpoint.open(tmp_path / "ck")
    store.add("k1", pa.array([1.0, 2.0]), pa.nulls(2, pa.string()))
    store.add("k2", pa.nulls(1, pa.null()), pa.array(["bad row"]))
    store.write(store.take_pending())

    again = Checkpoint.open(tmp_path / "ck")
    assert len(again) == 2
    preds, errors = again.get("k1")
    assert preds.to_pylist() == [1.0, 2.0] and errors.to_pylist() == [None, None]
    preds, errors = again.get("k2")
    assert preds.to_pylist() == [None] and errors.to_pylist() == ["bad row"]
    assert again.get("missing") is None


def test_torn_manifest_line_is_ignored(tmp_path) -> None:
    store = Checkpoint.open(tmp_path / "ck")
    store.add("k1", pa.array([1]), pa.nulls(1, pa.string()))
    store.write(store.take_pending())
    with open(tmp_path / "ck" / MANIFEST, "ab") as manifest:
        manifest.write(b'{"key": "k2", "part": "part-x.ar')  # killed mid-append
    again = Checkpoint.open(tmp_path / "ck")
    assert len(again) == 1 and again.get("k1") is not None


def test_manifest_line_for_a_missing_part_is_ignored(tmp_path) -> None:
    (tmp_path / "ck" / "parts").mkdir(parents=True)
    (tmp_path / "ck" / MANIFEST).write_bytes(b'{"key":"k","part":"gone.arrow","start":0,"rows":1}\n')
    assert len(Checkpoint.open(tmp_path / "ck")) == 0


def test_fresh_discards_what_was_there(tmp_path) -> None:
    store = Checkpoint.open(tmp_path / "ck")
    store.add("k1", pa.array([1]), pa.nulls(1, pa.string()))
    store.write(store.take_pending())
    assert len(Checkpoint.open(tmp_path / "ck", fresh=True)) == 0


def test_finished_batches_queue_until_taken(tmp_path) -> None:
    # the pipeline's group commit writes at once when FLUSH_BATCHES are queued
    store = Checkpoint.open(tmp_path / "ck")
    for i in range(FLUSH_BATCHES):
        store.add(f"k{i}", pa.array([i]), pa.nulls(1, pa.string()))
    assert store.pending_batches == FLUSH_BATCHES and store.has_pending
    assert [key for key, _, _ in store.take_pending()] == [f"k{i}" for i in range(FLUSH_BATCHES)]
    assert store.pending_batches == 0 and not store.has_pending


def test_a_directory_removed_mid_run_is_a_storage_error_naming_it(tmp_path) -> None:
    import shutil

    import pytest

    from engine.errors import StorageError

    store = Checkpoint.open(tmp_path / "ck")
    store.add("k1", pa.array([1.0]), pa.nulls(1, pa.string()))
    store.write(store.take_pending())
    shutil.rmtree(tmp_path / "ck")
    store.add("k2", pa.array([2.0]), pa.nulls(1, pa.string()))
    with pytest.raises(StorageError) as info:
        store.write(store.take_pending())
    assert str(info.value).startswith(
        f"cannot write the checkpoint in {tmp_path / 'ck'}: No such file or directory (ENOENT); "
        "the directory was removed during the run"
    )
    assert store.get("k2") is None  # never recorded as persisted


def test_an_append_after_a_torn_line_starts_on_a_fresh_line(tmp_path) -> None:
    store = Checkpoint.open(tmp_path / "ck")
    store.add("k1", pa.array([1.0]), pa.nulls(1, pa.string()))
    store.write(store.take_pending())
    with open(tmp_path / "ck" / MANIFEST, "ab") as manifest:
        manifest.write(b'{"key": "torn", "par')  # a kill (or a full disk) mid-append
    again = Checkpoint.open(tmp_path / "ck")
    again.add("k2", pa.array([2.0]), pa.nulls(1, pa.string()))
    again.write(again.take_pending())
    assert len(Checkpoint.open(tmp_path / "ck")) == 2  # k2 was not glued to the torn line
