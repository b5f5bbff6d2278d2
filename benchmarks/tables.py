"""`engine score` as a user runs it, beside a raw aiohttp client, on five kinds of table.

    python benchmarks/tables.py                      # all five tables, 3 alternated pairs
    python benchmarks/tables.py --tables narrow text --pairs 5 --scale 0.2
    python benchmarks/tables.py --encoders 1 2       # the engine at pinned encoder counts
    python benchmarks/tables.py --server-parser count  # a server that costs the clients nothing

Tables (rows at ``--scale 1``):

* ``narrow``: 2 double, 1 int64, 1 short string; 2,000,000 rows
* ``wide``: 30 double, 10 int64, 10 short strings; 500,000 rows
* ``text``: 5 strings of 200 characters; 300,000 rows
* ``embeddings``: one list<float32>[384]; 60,000 rows
* ``small-batches``: ``narrow``'s columns in 100-row requests, 200,000 rows, against a
  server that parses with the standard ``json`` module

The server is this file's ``serve`` command in its own process: a minimal workspace (OAuth
token, endpoint, no OpenAPI document) whose invocations route parses each body with orjson
(or ``json``) and answers one float per row, so the ceiling is not the server. It counts
request bytes and rows, and the time of the first request and the last answer. On this
machine the server shares the cores with the client it serves; ``--server-parser count``
makes it count each body's rows without parsing them (``body.count(b"],[") + 1``), a stand-in
for an endpoint on another machine, so what each client itself can send shows.

The engine is timed as a whole process (``python -m engine score``, start-up included, output
written as Arrow IPC), from bytecode compiled before the first run, as ``pip install`` leaves
it (with ``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__``, every run would compile the
engine's source first). The raw client is the ceiling: it encodes every body before its clock
starts (orjson over Python rows, float32 lists as numpy rows, which orjson writes in their
shortest float32 form: the shortest exact form) and then posts them at a fixed concurrency.
The plain client (``plain``) does the engine's whole job the way a user would write it in a
page, with none of the engine's guarantees (no checkpoint, retry, validation or capacity
finding): it reads, encodes as the raw client does, posts at the same fixed concurrency and
writes the input and the predictions as Arrow IPC in order, timed as a whole process like
the engine. The raw client's clock leaves out work the engine must do; the plain client's
does not. The floor client (``floor``) does only the I/O of a whole job: it reads the input
and writes it back with a prediction column, no encoding and no network, as a whole process
(start-up included) with Arrow's jemalloc pool. Raw wall / floor wall bounds engine/raw for
a client that reads and writes (an estimate: a client could overlap reading and writing).
Each round runs all four, rotating which goes first; figures are medians over rounds.
Reported per table:

* rows/s ratio engine / raw, whole process (start-up included) and from the first request
  to the last answer (without start-up);
* CPU µs per row of each client (the engine: the whole process; raw: its sending phase);
* request bytes per row, as the server counted them;
* cores used: CPU time / wall time;
* the plain client's wall time over the engine's (above 1: the engine is faster), and its
  CPU µs per row (whole process);
* raw wall / floor wall (the bound above), and the engine's and the floor's wall times.

The machine is shared: expect noise, compare medians, rerun before believing a 10% change.
Writes benchmarks/results/tables.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ChildUsage, run_child

ROOT = Path(__file__).resolve().parent
ENDPOINT = "bench"
RAW_CONCURRENCY = 16

#: name -> (rows at scale 1, rows per request, server parser)
TABLES: dict[str, tuple[int, int, str]] = {
    "narrow": (2_000_000, 1000, "orjson"),
    "wide": (500_000, 1000, "orjson"),
    "text": (300_000, 1000, "orjson"),
    "embeddings": (60_000, 1000, "orjson"),
    "small-batches": (200_000, 100, "json"),
}


# --- inputs -------------------------------------------------------------------------------


def _words(rng: np.random.Generator, n: int, length: int) -> pa.Array:
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ0123456789", dtype=np.uint8)
    chars = alphabet[rng.integers(0, len(alphabet), size=n * length)]
    offsets = np.arange(0, (n + 1) * length, length, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def _short_strings(rng: np.random.Generator, n: int) -> pa.Array:
    pool = pa.array([f"cat-{i:03d}" for i in range(500)])
    return pool.take(pa.array(rng.integers(0, 500, size=n)))


def _piece(table: str, rng: np.random.Generator, n: int) -> pa.Table:
    if table in ("narrow", "small-batches"):
        return pa.table(
            {
                "x": rng.normal(size=n),
                "y": rng.random(n) * 1000,
                "count": rng.integers(-(2**40), 2**40, size=n),
                "label": _short_strings(rng, n),
            }
        )
    if table == "wide":
        cols: dict[str, Any] = {f"d{i}": rng.normal(size=n) for i in range(30)}
        cols.update({f"i{i}": rng.integers(-(10**12), 10**12, size=n) for i in range(10)})
        cols.update({f"s{i}": _short_strings(rng, n) for i in range(10)})
        return pa.table(cols)
    if table == "text":
        return pa.table({f"t{i}": _words(rng, n, 200) for i in range(5)})
    if table == "embeddings":
        values = pa.array(rng.normal(size=n * 384).astype(np.float32))
        return pa.table({"embedding": pa.FixedSizeListArray.from_arrays(values, 384)})
    raise ValueError(table)


def write_table(table: str, rows: int, path: Path) -> Path:
    rng = np.random.default_rng(0)
    first = _piece(table, rng, 1)
    with pq.ParquetWriter(path, first.schema) as writer:
        for start in range(0, rows, 50_000):
            writer.write_table(_piece(table, rng, min(50_000, rows - start)))
    return path


# --- server -------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """A minimal workspace and route-optimized endpoint; prints its URL, then serves."""
    from aiohttp import web

    loads = orjson.loads if args.parser == "orjson" else json.loads
    counts: dict[str, float] = {}

    def reset() -> None:
        counts.update(requests=0, rows=0, bytes=0, first=0.0, last=0.0)

    reset()

    async def token(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"access_token": "t", "token_type": "Bearer", "expires_in": 3600})

    async def endpoint(request: web.Request) -> web.Response:
        host = f"http://{request.host}"
        return web.json_response(
            {
                "name": ENDPOINT,
                "id": "bench-id",
                "route_optimized": True,
                "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
                "config": {
                    "served_entities": [{"name": "m", "entity_name": "m", "entity_version": "1"}]
                },
                "data_plane_info": {
                    "query_info": {
                        "endpoint_url": f"{host}/serving-endpoints/{ENDPOINT}/invocations",
                        "authorization_details": "[]",
                    }
                },
            }
        )

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response({"error_code": "NOT_FOUND", "message": "no signature"}, status=404)

    async def invocations(request: web.Request) -> web.Response:
        body = await request.read()
        if not counts["first"]:
            counts["first"] = time.time()
        if args.parser == "count":  # rows of the tables above hold no "],[" of their own
            rows = body.count(b"],[") + 1
        else:
            rows = len(loads(body)["dataframe_split"]["data"])
        counts["requests"] += 1
        counts["rows"] += rows
        counts["bytes"] += len(body)
        answer = orjson.dumps({"predictions": [0.5] * rows})
        counts["last"] = time.time()
        return web.Response(body=answer, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        answer = dict(counts)
        if request.method == "POST":
            reset()
        return web.json_response(answer)

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/oidc/v1/token", token)
    app.router.add_get(f"/api/2.0/serving-endpoints/{ENDPOINT}", endpoint)
    app.router.add_get(f"/api/2.0/serving-endpoints/{ENDPOINT}/openapi", openapi)
    app.router.add_post(f"/serving-endpoints/{ENDPOINT}/invocations", invocations)
    app.router.add_route("*", "/stats", stats)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class Server:
    def __init__(self, parser: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "serve", "--parser", parser],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def take_stats(self) -> dict[str, float]:
        import urllib.request

        request = urllib.request.Request(self.url + "/stats", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- raw client ---------------------------------------------------------------------------


def _reference_rows(batch: pa.RecordBatch) -> list[Any]:
    columns: list[Any] = []
    for column in batch.columns:
        kind = column.type
        if pa.types.is_fixed_size_list(kind) and pa.types.is_float32(kind.value_type):
            flat = column.flatten().to_numpy()
            columns.append(list(flat.reshape(len(column), kind.list_size)))
        else:
            columns.append(column.to_pylist())
    return list(zip(*columns, strict=True))


def _body(batch: pa.RecordBatch) -> bytes:
    """``batch`` as a ``dataframe_split`` body, the reference way (what both clients send)."""
    document = {"dataframe_split": {"columns": batch.schema.names, "data": _reference_rows(batch)}}
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def _bodies(path: str, batch_rows: int) -> Iterator[tuple[int, bytes]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield batch.num_rows, _body(batch)


def raw(args: argparse.Namespace) -> None:
    """Pre-encode, then post every body; print wall and CPU of the sending phase."""
    import aiohttp

    bodies = list(_bodies(args.input, args.batch_rows))
    url = f"{args.url}/serving-endpoints/{ENDPOINT}/invocations"
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}

    async def send() -> int:
        pending = iter(bodies)
        scored = 0
        connector = aiohttp.TCPConnector(limit=RAW_CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                nonlocal scored
                for rows, body in pending:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        assert response.status == 200, response.status
                        scored += rows

            await asyncio.gather(*(worker() for _ in range(RAW_CONCURRENCY)))
        return scored

    cpu0, wall0 = _cpu(), time.monotonic()
    scored = asyncio.run(send())
    print(json.dumps({"rows": scored, "wall_s": time.monotonic() - wall0, "cpu_s": _cpu() - cpu0}))


def plain(args: argparse.Namespace) -> None:
    """The engine's job written the plain way, with none of its guarantees (no checkpoint,
    retry, validation or capacity finding): read, encode as the raw client does, post at a
    fixed concurrency, write the input and the predictions as Arrow IPC in input order.
    Timed by the caller as a whole process, as the engine is."""
    import aiohttp
    import pyarrow.ipc as ipc

    url = f"{args.url}/serving-endpoints/{ENDPOINT}/invocations"
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    batches = enumerate(pq.ParquetFile(args.input).iter_batches(batch_size=args.batch_rows))
    done: dict[int, tuple[pa.RecordBatch, pa.Array]] = {}
    writer: Any = None
    written = 0

    def write_ready() -> None:
        nonlocal writer, written
        while written in done:
            batch, predictions = done.pop(written)
            out = pa.RecordBatch.from_arrays(
                [*batch.columns, predictions], names=[*batch.schema.names, "prediction"]
            )
            if writer is None:
                writer = ipc.new_file(args.output, out.schema)
            writer.write_batch(out)
            written += 1

    async def send() -> None:
        connector = aiohttp.TCPConnector(limit=RAW_CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for index, batch in batches:
                    body = _body(batch)
                    async with session.post(url, data=body, headers=headers) as response:
                        answer = await response.read()
                        assert response.status == 200, response.status
                    predictions = pa.array(orjson.loads(answer)["predictions"], pa.float64())
                    done[index] = (batch, predictions)
                    write_ready()

            await asyncio.gather(*(worker() for _ in range(RAW_CONCURRENCY)))

    asyncio.run(send())
    if writer is not None:
        writer.close()


def floor(args: argparse.Namespace) -> None:
    """Only the I/O any whole job does, with no network and no encoding: read the Parquet
    input and write it back with a prediction column (zeros) as Arrow IPC. Timed by the caller
    as a whole process. Its wall time bounds what any client that reads and writes can reach:
    raw / floor is the most engine/raw could be, were sending free."""
    import pyarrow.ipc as ipc

    writer: Any = None
    for batch in pq.ParquetFile(args.input).iter_batches(batch_size=16 * args.batch_rows):
        zeros = pa.array(np.zeros(batch.num_rows))
        out = pa.RecordBatch.from_arrays(
            [*batch.columns, zeros], names=[*batch.schema.names, "prediction"]
        )
        if writer is None:
            writer = ipc.new_file(args.output, out.schema)
        writer.write_batch(out)
    if writer is not None:
        writer.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the comparison -----------------------------------------------------------------------


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(
        DATABRICKS_HOST=url,
        DATABRICKS_CLIENT_ID="bench",
        DATABRICKS_CLIENT_SECRET="s",
        DATABRICKS_CONFIG_FILE=os.devnull,
    )
    return env


def run_engine(
    server: Server, src: Path, out: Path, batch_rows: int, encoders: int | None
) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "score",
        str(src),
        "--endpoint",
        ENDPOINT,
        "--output",
        str(out),
        "--overwrite",
        "--progress",
        "off",
        "--quiet",
        "--batch-rows",
        str(batch_rows),
    ]
    if encoders is not None:
        cmd += ["--encoders", str(encoders)]
    server.take_stats()
    started = time.time()
    usage = run_child(cmd, _env(server.url))
    if usage.exit_code != 0:
        raise SystemExit(f"engine failed ({usage.exit_code}):\n{usage.stderr[-3000:]}")
    seen = server.take_stats()
    return {
        "wall_s": usage.wall_s,
        "cpu_s": usage.cpu_s,
        "rows": seen["rows"],
        "bytes": seen["bytes"],
        "active_s": seen["last"] - seen["first"],
        "first_request_s": seen["first"] - started,
        "peak_rss_mib": usage.peak_rss_mib,
    }


def _this_file(env: dict[str, str], command: str, *args: str) -> ChildUsage:
    """This file's ``command`` run as its own process; stops the benchmark if it fails."""
    usage = run_child([sys.executable, __file__, command, *args], env)
    if usage.exit_code != 0:
        raise SystemExit(f"{command} client failed:\n{usage.stderr[-3000:]}")
    return usage


def _run_client(server: Server, command: str, *args: str) -> tuple[ChildUsage, dict[str, float]]:
    """This file's ``command`` client against ``server``: its usage, and what the server saw."""
    server.take_stats()
    usage = _this_file(_env(server.url), command, *args, "--url", server.url)
    return usage, server.take_stats()


def run_raw(server: Server, src: Path, batch_rows: int) -> dict[str, float]:
    usage, seen = _run_client(server, "raw", str(src), "--batch-rows", str(batch_rows))
    mine = json.loads(usage.stdout.strip().splitlines()[-1])
    return {
        "wall_s": mine["wall_s"],
        "cpu_s": mine["cpu_s"],
        "rows": seen["rows"],
        "bytes": seen["bytes"],
        "active_s": seen["last"] - seen["first"],
    }


def run_plain(server: Server, src: Path, out: Path, batch_rows: int) -> dict[str, float]:
    usage, seen = _run_client(
        server, "plain", str(src), "--output", str(out), "--batch-rows", str(batch_rows)
    )
    return {"wall_s": usage.wall_s, "cpu_s": usage.cpu_s, "rows": seen["rows"]}


def run_floor(src: Path, out: Path, batch_rows: int) -> dict[str, float]:
    # Arrow's jemalloc pool, as the engine has it: the floor is the best a client could do.
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
    args = (str(src), "--output", str(out), "--batch-rows", str(batch_rows))
    usage = _this_file(env, "floor", *args)
    return {"wall_s": usage.wall_s, "cpu_s": usage.cpu_s}


def compare(
    table: str, rows: int, pairs: int, encoders: int | None, tmp: Path, parser: str | None = None
) -> dict[str, Any]:
    _, batch_rows, table_parser = TABLES[table]
    src = write_table(table, rows, tmp / f"{table}.parquet")
    server = Server(parser or table_parser)
    runs: dict[str, list[dict[str, float]]] = {"engine": [], "raw": [], "plain": [], "floor": []}
    clients = ("engine", "raw", "plain", "floor")
    try:
        for pair in range(pairs):
            for who in clients[pair % 4 :] + clients[: pair % 4]:  # each goes first in turn
                if who == "engine":
                    runs[who].append(
                        run_engine(server, src, tmp / "out.arrow", batch_rows, encoders)
                    )
                elif who == "raw":
                    runs[who].append(run_raw(server, src, batch_rows))
                elif who == "floor":
                    runs[who].append(run_floor(src, tmp / "floor.arrow", batch_rows))
                else:
                    runs[who].append(run_plain(server, src, tmp / "plain.arrow", batch_rows))
    finally:
        server.stop()
    result = _summary(
        table, rows, encoders, runs["engine"], runs["raw"], runs["plain"], runs["floor"]
    )
    result["server_parser"] = parser or table_parser
    return result


def _summary(
    table: str,
    rows: int,
    encoders: int | None,
    engine: list[dict[str, float]],
    raw: list[dict[str, float]],
    plain: list[dict[str, float]],
    floor: list[dict[str, float]],
) -> dict[str, Any]:
    def med(runs: list[dict[str, float]], f: Any) -> float:
        return float(statistics.median(f(r) for r in runs))

    def ratio(tops: list[dict[str, float]], bottoms: list[dict[str, float]], key: str) -> float:
        """Median over rounds of top[key] / bottom[key], each pair from the same round."""
        return float(
            statistics.median(t[key] / b[key] for t, b in zip(tops, bottoms, strict=True))
        )

    return {
        "table": table,
        "rows": rows,
        "encoders": "auto" if encoders is None else encoders,
        "pairs": len(engine),
        "ratio_whole": ratio(raw, engine, "wall_s"),
        "ratio_no_startup": ratio(raw, engine, "active_s"),
        "plain_over_engine_wall": ratio(plain, engine, "wall_s"),
        "plain_cpu_us_per_row": med(plain, lambda r: r["cpu_s"] / r["rows"] * 1e6),
        # the most engine/raw (whole) any client that reads and writes could reach here
        "raw_over_floor_wall": ratio(raw, floor, "wall_s"),
        "floor_wall_s": med(floor, lambda r: r["wall_s"]),
        "engine_wall_s": med(engine, lambda r: r["wall_s"]),
        "engine_rows_per_s": med(engine, lambda r: r["rows"] / r["wall_s"]),
        "raw_rows_per_s": med(raw, lambda r: r["rows"] / r["wall_s"]),
        "engine_cpu_us_per_row": med(engine, lambda r: r["cpu_s"] / r["rows"] * 1e6),
        "raw_cpu_us_per_row": med(raw, lambda r: r["cpu_s"] / r["rows"] * 1e6),
        "engine_bytes_per_row": med(engine, lambda r: r["bytes"] / r["rows"]),
        "raw_bytes_per_row": med(raw, lambda r: r["bytes"] / r["rows"]),
        "engine_cores": med(engine, lambda r: r["cpu_s"] / r["wall_s"]),
        "raw_cores": med(raw, lambda r: r["cpu_s"] / r["wall_s"]),
        "engine_first_request_s": med(engine, lambda r: r["first_request_s"]),
        "engine_peak_rss_mib": med(engine, lambda r: r["peak_rss_mib"]),
    }


def _markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| table | rows | encoders | engine/raw rows/s (whole) | (no start-up) | CPU µs/row "
        "engine / raw | bytes/row engine / raw | cores engine / raw | first request | RSS "
        "| plain / engine wall | plain CPU µs/row | raw / floor wall (bound) "
        "| wall engine / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['table']} | {r['rows']:,} | {r['encoders']} | {r['ratio_whole']:.2f} | "
            f"{r['ratio_no_startup']:.2f} | {r['engine_cpu_us_per_row']:.2f} / "
            f"{r['raw_cpu_us_per_row']:.2f} | {r['engine_bytes_per_row']:.0f} / "
            f"{r['raw_bytes_per_row']:.0f} | {r['engine_cores']:.2f} / {r['raw_cores']:.2f} | "
            f"{r['engine_first_request_s']:.2f} s | {r['engine_peak_rss_mib']:.0f} MiB | "
            f"{r['plain_over_engine_wall']:.2f} | {r['plain_cpu_us_per_row']:.2f} | "
            f"{r['raw_over_floor_wall']:.2f} | "
            f"{r['engine_wall_s']:.2f} / {r['floor_wall_s']:.2f} s |"
        )
    return "\n".join(lines)


def _compile_engine() -> None:
    """Bytecode for the engine the runs will import, as an installed package has it."""
    where = subprocess.run(
        [sys.executable, "-c", "import engine, os; print(os.path.dirname(engine.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([sys.executable, "-m", "compileall", "-q", where], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")
    server = commands.add_parser("serve")
    server.add_argument("--parser", choices=["orjson", "json", "count"], default="orjson")
    clients = {name: commands.add_parser(name) for name in ("raw", "plain")}
    for client in clients.values():
        client.add_argument("input")
        client.add_argument("--url", required=True)
        client.add_argument("--batch-rows", type=int, default=1000)
    clients["plain"].add_argument("--output", required=True)
    io_only = commands.add_parser("floor")
    io_only.add_argument("input")
    io_only.add_argument("--output", required=True)
    io_only.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--tables", nargs="+", choices=list(TABLES), default=list(TABLES))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each table's rows")
    parser.add_argument(
        "--encoders",
        type=int,
        nargs="+",
        default=[-1],
        help="engine --encoders values to run (-1: leave it to the engine)",
    )
    parser.add_argument(
        "--server-parser",
        choices=["orjson", "json", "count"],
        help="how the server reads every table's bodies (default: the table's own); count: "
        "it counts rows without parsing, a stand-in for an endpoint on another machine that "
        "costs this one nothing, so the clients' own ceilings show",
    )
    parser.add_argument("--output", default=str(ROOT / "results" / "tables.json"))
    args = parser.parse_args()
    if args.command == "serve":
        return serve(args)
    if args.command == "raw":
        return raw(args)
    if args.command == "plain":
        return plain(args)
    if args.command == "floor":
        return floor(args)
    _compile_engine()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for table in args.tables:
            rows = max(1000, int(TABLES[table][0] * args.scale))
            for encoders in args.encoders:
                pinned = None if encoders < 0 else encoders
                results.append(
                    compare(table, rows, args.pairs, pinned, Path(tmp), args.server_parser)
                )
                print(_markdown(results[-1:]).splitlines()[-1], flush=True)
    print(_markdown(results))
    Path(args.output).parent.mkdir(exist_ok=True)
    Path(args.output).write_text(
        json.dumps(
            {"results": results, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}, indent=2
        )
    )


if __name__ == "__main__":
    main()
