"""How fast is the emulator's data plane? (It must never be the engine's bottleneck.)

Starts ``engine emulate --json`` in a subprocess, gets a data-plane token, then drives
``demo-regressor`` with pre-encoded 1000-row x 10-column ``dataframe_split`` bodies from a
raw aiohttp client at a fixed concurrency, and prints requests/s, rows/s and the emulator
process's CPU time per request (read from /proc, so other load on the machine does not
inflate it).

    .venv/bin/python benchmarks/emulator_throughput.py [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

ENDPOINT = "demo-regressor"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def _token(session: aiohttp.ClientSession, info: dict[str, str]) -> tuple[str, str]:
    basic = base64.b64encode(f"{info['client_id']}:{info['client_secret']}".encode()).decode()
    async with session.post(
        info["host"] + "/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        headers={"Authorization": f"Basic {basic}"},
    ) as r:
        workspace = (await r.json())["access_token"]
    async with session.get(
        f"{info['host']}/api/2.0/serving-endpoints/{ENDPOINT}",
        headers={"Authorization": f"Bearer {workspace}"},
    ) as r:
        query_info = (await r.json())["data_plane_info"]["query_info"]
    async with session.post(
        info["host"] + "/oidc/v1/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": workspace,
            "authorization_details": query_info["authorization_details"],
        },
    ) as r:
        return query_info["endpoint_url"], (await r.json())["access_token"]


def _bodies(rows: int, count: int) -> list[bytes]:
    from engine.emulator.models import BUILTIN_MODELS

    model = BUILTIN_MODELS[ENDPOINT]
    bodies = []
    for seed in range(count):
        table = model.sample(rows, seed=seed)
        columns = table.column_names
        data = [
            list(row) for row in zip(*(table.column(c).to_pylist() for c in columns), strict=True)
        ]
        bodies.append(orjson.dumps({"dataframe_split": {"columns": columns, "data": data}}))
    return bodies


async def _drive(info: dict[str, str], pid: int, args: argparse.Namespace) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        url, token = await _token(session, info)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        bodies = _bodies(args.rows, 16)
        remaining = iter(range(args.requests))
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for n in remaining:
                async with session.post(url, data=bodies[n % len(bodies)], headers=headers) as r:
                    await r.read()
                    failures += r.status != 200

        for n in range(args.concurrency):  # warm up connections and code paths
            async with session.post(url, data=bodies[n % len(bodies)], headers=headers) as r:
                await r.read()
        cpu_before, started = _cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds(pid) - cpu_before
    return {
        "requests": args.requests,
        "failures": failures,
        "rows_per_request": args.rows,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(args.requests / elapsed, 1),
        "rows_per_s": round(args.requests * args.rows / elapsed),
        "emulator_cpu_ms_per_request": round(1000 * cpu / args.requests, 3),
        "request_bytes": len(bodies[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulate", "--json"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        result = asyncio.run(_drive(info, process.pid, args))
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(json.dumps(result, indent=2))
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
