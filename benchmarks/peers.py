"""The other ways to score a dataset, each as a user would write it, for benchmarks/run.py.

    python benchmarks/peers.py CLIENT INPUT [--budget-s S] [--concurrency N] [--batch-rows N]

CLIENT is one of:

* ``raw``: the ceiling. A hand-tuned aiohttp client sending pre-encoded 1000-row bodies at a
  fixed concurrency: no reading, encoding or writing while the clock runs, no retries.
* ``sdk``: databricks-sdk's ``serving_endpoints_data_plane.query`` (the official path) from a
  ``ThreadPoolExecutor`` at its default size, one ``dataframe_split`` batch per call.
* ``naive``: a ``requests`` loop posting one row at a time (what users write first).
* ``aiometer``: the usual do-it-yourself async stack: aiohttp, ``aiometer.run_on_each`` with
  16 at once, and tenacity retrying 429/503 and connection errors with exponential backoff
  (8 attempts); one token, fetched at the start.

Credentials come from DATABRICKS_HOST / DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET.
Every client keeps its predictions in memory (none writes an output file). Each prints one
JSON line: rows scored, requests sent, HTTP statuses seen, failed batches, seconds.
Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow.parquet as pq

ENDPOINT = "demo-regressor"


def _rows(path: str, batch_rows: int) -> Iterator[tuple[list[str], list[list[Any]]]]:
    """The input as (columns, rows) batches, read the way a user would."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        columns = batch.schema.names
        data = [list(r) for r in zip(*(c.to_pylist() for c in batch.columns), strict=True)]
        yield columns, data


def _oauth(session_post: Any, host: str, form: dict[str, str]) -> dict[str, Any]:
    pair = f"{os.environ['DATABRICKS_CLIENT_ID']}:{os.environ['DATABRICKS_CLIENT_SECRET']}"
    headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return dict(session_post(host + "/oidc/v1/token", data=form, headers=headers).json())


def _endpoint_and_token() -> tuple[str, str]:
    """Route-optimized URL and an endpoint-scoped token, the two calls the docs show."""
    import requests

    host = os.environ["DATABRICKS_HOST"]
    form = {"grant_type": "client_credentials", "scope": "all-apis"}
    workspace = _oauth(requests.post, host, form)
    detail = requests.get(
        f"{host}/api/2.0/serving-endpoints/{ENDPOINT}",
        headers={"Authorization": f"Bearer {workspace['access_token']}"},
        timeout=30,
    ).json()
    query_info = detail["data_plane_info"]["query_info"]
    token = _oauth(
        requests.post,
        host,
        {
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "authorization_details": query_info["authorization_details"],
        },
    )
    return str(query_info["endpoint_url"]), str(token["access_token"])


class Tally:
    def __init__(self) -> None:
        self.rows = 0
        self.requests = 0
        self.failed_batches = 0
        self.status: collections.Counter[int] = collections.Counter()
        self.started = time.monotonic()

    def report(self) -> None:
        print(
            json.dumps(
                {
                    "rows": self.rows,
                    "requests": self.requests,
                    "failed_batches": self.failed_batches,
                    "status": dict(self.status),
                    "elapsed_s": round(time.monotonic() - self.started, 3),
                }
            )
        )


# --- raw: the ceiling ---------------------------------------------------------------------


async def raw(args: argparse.Namespace) -> None:
    import aiohttp

    url, token = _endpoint_and_token()
    bodies = [
        (len(data), orjson.dumps({"dataframe_split": {"columns": columns, "data": data}}))
        for columns, data in _rows(args.input, args.batch_rows)
    ]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    tally = Tally()
    pending = iter(bodies)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for rows, body in pending:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    tally.requests += 1
                    tally.status[response.status] += 1
                    if response.status == 200:
                        tally.rows += rows
                    else:
                        tally.failed_batches += 1

        tally.started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    tally.report()


# --- databricks-sdk with threads ----------------------------------------------------------


def sdk(args: argparse.Namespace) -> None:
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import DataframeSplitInput

    client = WorkspaceClient()  # host and service principal from the environment
    tally = Tally()

    def query(columns: list[str], data: list[list[Any]]) -> int:
        response = client.serving_endpoints_data_plane.query(
            ENDPOINT, dataframe_split=DataframeSplitInput(columns=columns, data=data)
        )
        assert response.predictions is not None and len(response.predictions) == len(data)
        return len(data)

    deadline = tally.started + args.budget_s
    with ThreadPoolExecutor() as pool:  # default size: min(32, CPUs + 4)
        in_flight: set[Future[int]] = set()
        batches = _rows(args.input, args.batch_rows)
        while True:
            while len(in_flight) < 2 * (pool._max_workers) and time.monotonic() < deadline:
                item = next(batches, None)
                if item is None:
                    break
                in_flight.add(pool.submit(query, *item))
            if not in_flight:
                break
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                tally.requests += 1
                try:
                    tally.rows += future.result()
                    tally.status[200] += 1
                except Exception as exc:  # the SDK raises on a status it gave up on
                    tally.failed_batches += 1
                    tally.status[getattr(exc, "status_code", 0) or 0] += 1
    tally.report()


# --- naive: one row at a time with requests -----------------------------------------------


def naive(args: argparse.Namespace) -> None:
    import requests

    url, token = _endpoint_and_token()
    headers = {"Authorization": f"Bearer {token}"}
    tally = Tally()
    deadline = tally.started + args.budget_s
    with requests.Session() as session:
        for columns, data in _rows(args.input, 1000):
            for row in data:
                if time.monotonic() >= deadline:
                    tally.report()
                    return
                response = session.post(
                    url, json={"dataframe_split": {"columns": columns, "data": [row]}},
                    headers=headers,
                )
                tally.requests += 1
                tally.status[response.status_code] += 1
                if response.ok:
                    tally.rows += 1
                else:
                    tally.failed_batches += 1
    tally.report()


# --- aiometer + tenacity: the usual DIY stack ---------------------------------------------


async def diy(args: argparse.Namespace) -> None:
    import aiohttp
    import aiometer
    import tenacity

    url, token = _endpoint_and_token()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    tally = Tally()

    class Retryable(Exception):
        pass

    async with aiohttp.ClientSession() as session:

        @tenacity.retry(
            retry=tenacity.retry_if_exception_type(
                (Retryable, aiohttp.ClientConnectionError, asyncio.TimeoutError)
            ),
            wait=tenacity.wait_exponential(multiplier=0.5, max=8),
            stop=tenacity.stop_after_attempt(8),
            reraise=True,
        )
        async def post(body: bytes) -> bytes:
            async with session.post(url, data=body, headers=headers) as response:
                tally.requests += 1
                tally.status[response.status] += 1
                payload = await response.read()
                if response.status in (429, 503):
                    raise Retryable(response.status)
                response.raise_for_status()
                return payload

        deadline = tally.started + args.budget_s

        async def score(batch: tuple[list[str], list[list[Any]]]) -> None:
            if time.monotonic() >= deadline:
                return
            columns, data = batch
            body = orjson.dumps({"dataframe_split": {"columns": columns, "data": data}})
            try:
                predictions = orjson.loads(await post(body))["predictions"]
                tally.rows += len(predictions)
            except (Retryable, aiohttp.ClientError):
                tally.failed_batches += 1

        await aiometer.run_on_each(score, _rows(args.input, args.batch_rows), max_at_once=16)
    tally.report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("client", choices=["raw", "sdk", "naive", "aiometer"])
    parser.add_argument("input")
    parser.add_argument("--budget-s", type=float, default=30.0, help="stop sending after this")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-rows", type=int, default=1000)
    args = parser.parse_args()
    if args.client == "raw":
        asyncio.run(raw(args))
    elif args.client == "aiometer":
        asyncio.run(diy(args))
    elif args.client == "sdk":
        sdk(args)
    else:
        naive(args)


if __name__ == "__main__":
    main()
