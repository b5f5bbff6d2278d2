"""``import engine`` makes Arrow take its buffers from jemalloc unless someone chose first,
and leaves no trace in the environment that child processes would inherit."""

from __future__ import annotations

import pytest

from engine.allocator import has_jemalloc_wheels
from tests.helpers import in_fresh_interpreter

_PROBE = """
import json, os
if {chosen!r}:
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = {chosen!r}
if {pyarrow_first!r}:
    import pyarrow
import engine
import pyarrow as pa
print(json.dumps([pa.default_memory_pool().backend_name,
                  os.environ.get("ARROW_DEFAULT_MEMORY_POOL")]))
"""

jemalloc_wheels = pytest.mark.skipif(
    not has_jemalloc_wheels(), reason="pyarrow's wheels here are built without jemalloc"
)


@jemalloc_wheels
def test_importing_the_engine_first_chooses_jemalloc_and_leaves_no_variable_behind() -> None:
    assert in_fresh_interpreter(_PROBE.format(chosen="", pyarrow_first=False)) == [
        "jemalloc",
        None,
    ]


def test_a_pool_the_user_chose_is_kept() -> None:
    assert in_fresh_interpreter(_PROBE.format(chosen="system", pyarrow_first=False)) == [
        "system",
        "system",
    ]


def test_a_process_that_imported_pyarrow_first_keeps_its_pool_and_environment() -> None:
    backend, variable = in_fresh_interpreter(_PROBE.format(chosen="", pyarrow_first=True))
    assert backend != "jemalloc"
    assert variable is None
