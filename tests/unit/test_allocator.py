"""``import engine`` makes Arrow take its buffers from jemalloc unless someone chose first."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import in_fresh_interpreter

_PROBE = """
import json, os
if {chosen!r}:
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = {chosen!r}
if {pyarrow_first!r}:
    import pyarrow
import engine
import pyarrow as pa
print(json.dumps(pa.default_memory_pool().backend_name))
"""

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="jemalloc: Linux wheels")


@linux
def test_importing_the_engine_first_chooses_jemalloc() -> None:
    assert in_fresh_interpreter(_PROBE.format(chosen="", pyarrow_first=False)) == "jemalloc"


def test_a_pool_the_user_chose_is_kept() -> None:
    assert in_fresh_interpreter(_PROBE.format(chosen="system", pyarrow_first=False)) == "system"


@linux
def test_a_process_that_imported_pyarrow_first_keeps_its_pool() -> None:
    backend = in_fresh_interpreter(_PROBE.format(chosen="", pyarrow_first=True))
    assert backend != "jemalloc"
