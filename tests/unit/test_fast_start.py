"""``engine score`` imports only what a run needs before its first request.

Every module here costs start-up time that a user pays before the first row is sent (issue 12:
the first request within ~0.3 s of interpreter start). Each is imported where it is used.
"""

from __future__ import annotations

import json

from tests.helpers import in_fresh_interpreter

#: module -> where it belongs instead
HEAVY = {
    "pyarrow.compute": "first use (engine.lazy.pc): ~30 ms of kernel wrappers",
    "aiolimiter": "--qps only: importlib.metadata makes it ~12 ms",
    "multiprocessing": "--encoders N only",
    "concurrent.futures.process": "--encoders N only",
    "pandas": "pandas input only",
    "polars": "Delta --where only",
    "deltalake": "Delta input or output only",
    "rich": "a progress display on a terminal only",
    "databricks.sdk": "--auth sdk only",
    "airflow": "the Airflow operator only",
    "pyspark": "the Spark integration only",
    "engine.emulator": "engine emulate only",
    "engine.report": "--report or --mlflow-experiment only (10-13 ms with engine.tracking)",
    "engine.tracking": "--report or --mlflow-experiment only (with mlflow_artifacts)",
    "aiohttp.web": "the emulator only",
}

_PROBE = """
import json, sys
from engine.cli import build_parser
import engine.api, engine.pipeline  # everything `score` runs before its first request
args = build_parser("score").parse_args(["score", "in.parquet", "--endpoint", "e", "--output", "o.arrow"])
print(json.dumps(sorted(m for m in sys.modules)))
"""


def test_score_imports_no_heavy_module() -> None:
    loaded = set(in_fresh_interpreter(_PROBE))
    imported = {name: why for name, why in HEAVY.items() if name in loaded}
    assert not imported, f"imported by `engine score` before any request: {imported}"


def test_lazy_module_imports_on_first_use_and_keeps_what_it_read() -> None:
    from engine.lazy import LazyModule

    lazy = LazyModule("json.decoder")
    assert "JSONDecodeError" not in vars(lazy)
    assert lazy.JSONDecodeError is json.JSONDecodeError
    assert vars(lazy)["JSONDecodeError"] is json.JSONDecodeError  # later reads skip the import


_CHECKPOINT_PROBE = """
import json, sys, tempfile
import pyarrow as pa
from engine.checkpoint import Checkpoint
# arrays built as a run builds them (pa.array() of Python values imports pyarrow.compute itself)
offsets = pa.py_buffer(bytes(4) + (7).to_bytes(4, "little"))
bad_row = pa.StringArray.from_buffers(1, offsets, pa.py_buffer(b"bad row"))
store = Checkpoint.open(tempfile.mkdtemp())
store.add("k1", pa.nulls(2, pa.float64()), pa.nulls(2, pa.string()))
store.add("k2", pa.nulls(1, pa.float64()), bad_row)
before = "pyarrow.compute" in sys.modules
store.write(store.take_pending())
print(json.dumps([before, "pyarrow.compute" in sys.modules]))
"""


def test_checkpoint_write_of_string_errors_does_not_import_pyarrow_compute() -> None:
    # the first checkpoint write comes mid-run; a cast there imported pyarrow.compute on a
    # worker thread (35-45 ms of import, holding the GIL) while the loop had requests to send
    assert in_fresh_interpreter(_CHECKPOINT_PROBE) == [False, False]


_EXIT_PROBE = """
import gc, json, sys
sys.argv = ["engine", "score", "missing.parquet", "--endpoint", "e", "--output", "o.arrow"]
from engine.cli import command
code = command()
print(json.dumps([code, gc.get_freeze_count()]))
"""


def test_the_command_leaves_the_heap_to_the_os_once_main_has_returned() -> None:
    """The interpreter's final collection over every imported object cost ~40 ms per run;
    ``engine`` freezes the heap once its work is done (an error exit too)."""
    code, frozen = in_fresh_interpreter(_EXIT_PROBE)
    assert code != 0
    assert frozen > 10_000  # everything the imports made (about 45,000 objects)


_GC_PROBE = """
import gc, json, sys
collections = []
gc.callbacks.append(lambda phase, info: phase == "stop" and collections.append(info["generation"]))
MODE
import engine
print(json.dumps({
    "young": sum(1 for g in collections if g < 2),
    "enabled": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
}))
"""


def _import_engine(mode: str = "") -> dict[str, int]:
    return dict(in_fresh_interpreter(_GC_PROBE.replace("MODE", mode)))


def test_importing_the_engine_starts_no_walk_over_what_it_imports() -> None:
    # The imports make some 100k long-lived objects and no garbage; they started ~100 young
    # collections (22 ms of the import here). A few may still run on what is made after.
    seen = _import_engine()
    assert seen["young"] <= 5, seen
    assert seen["enabled"] is True
    assert seen["frozen"] == 0  # moved to the oldest generation, not left frozen


def test_importing_the_engine_leaves_the_hosts_collector_as_it_was() -> None:
    assert _import_engine("gc.disable()")["enabled"] is False
    host = _import_engine("gc.freeze()")  # a pre-fork server froze its objects
    assert host["frozen"] > 0
    assert host["enabled"] is True


def test_the_hosts_young_garbage_is_still_collected_by_the_import() -> None:
    # Moving what the imports made to the oldest generation must not take the host's young
    # garbage along: a cycle left just before `import engine` would then outlive it until a
    # full collection (in a long-lived Airflow or Spark process, a long time).
    seen = in_fresh_interpreter(
        """
import gc, json, weakref
class Node: pass
node = Node(); node.me = node; alive = weakref.ref(node)
gc.collect(0)  # still referenced: it moves on to the middle generation
del node  # garbage now, where young collections do not look
import engine
print(json.dumps({"garbage_alive": alive() is not None}))
"""
    )
    assert seen == {"garbage_alive": False}
