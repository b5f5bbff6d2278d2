"""The engine against the alternatives, side by side, on the same data and batch size.

    pip install -e '.[bench]'
    python benchmarks/run.py                 # every scenario (about 9 minutes on 2 cores)
    python benchmarks/run.py --quick         # smaller inputs and budgets (about 2 minutes)
    python benchmarks/run.py --only zero,limited --clients engine,raw

For each scenario and client, a fresh ``engine emulate`` process serves ``demo-regressor``
with the scenario's faults, and the client runs as its own process (so its CPU time and peak
RSS are its own, read with ``wait4``). The emulator's ``/debug/accounting`` is polled every
0.25 s: requests accepted and answered 429 are counted at the server, the same way for every
client, and give the accepted rate over time (how soon a client reaches 0.9 of the limit).

Clients (benchmarks/peers.py has the others, written as a user would):

* ``engine``: ``engine score INPUT -o OUT.arrow`` with defaults: reads, checkpoints, writes;
* ``engine-tuned``: the same with the flags a user who knows the endpoint would add;
* ``raw``: the ceiling, pre-encoded bodies from a hand-tuned aiohttp client;
* ``sdk``: databricks-sdk ``serving_endpoints_data_plane.query`` in a ThreadPoolExecutor;
* ``aiometer``: aiohttp + aiometer (16 at once) + tenacity (429/503, exponential backoff);
* ``naive``: a ``requests`` loop, one row per request.

Slow clients get a time budget and are measured over what they did in it. CPU is the whole
client process's (interpreter start-up included; for ``raw``, pre-encoding too); server CPU
is the emulator's over the same run. Results go to
``benchmarks/results/run.json``, ``run.md`` (the table) and ``run.png`` (the chart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ENDPOINT, ChildUsage, EmulatorProcess, run_child, write_input

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = Path(__file__).resolve().parent / "peers.py"
BATCH_ROWS = 1000
LIMIT_QPS = 100.0  # the endpoint's rate limit in the endpoint-bound scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    emulator_flags: tuple[str, ...]
    rows: int
    limit_qps: float | None  # None: client-bound, compared with the raw ceiling
    clients: tuple[str, ...]
    tuned_flags: tuple[str, ...]
    raw_concurrency: int = 16  # the ceiling's hand-tuned requests in flight


def scenarios(quick: bool) -> list[Scenario]:
    scale = 0.25 if quick else 1.0
    limited = ("--latency-ms", "50", "--qps", f"{LIMIT_QPS:g}", "--retry-after", "seconds")
    every = ("engine", "engine-tuned", "sdk", "aiometer", "naive")
    return [
        Scenario(
            "zero", "zero latency, no limit (client-bound)", (), int(3_000_000 * scale), None,
            ("raw", *every), ("--concurrency", "32"),
        ),
        Scenario(
            "latency", "50 ms latency, no limit", ("--latency-ms", "50"), int(3_000_000 * scale),
            None, ("raw", *every), ("--concurrency", "64"), raw_concurrency=64,
        ),
        Scenario(
            "limited", f"50 ms latency, unknown limit of {LIMIT_QPS:g} req/s", limited,
            int(1_500_000 * scale), LIMIT_QPS, every, ("--qps", f"{LIMIT_QPS:g}"),
        ),
        Scenario(
            "faults", "as limited, plus 5% 503s", (*limited, "--error-503-rate", "0.05"),
            int(1_000_000 * scale), LIMIT_QPS, every, ("--qps", f"{LIMIT_QPS:g}"),
        ),
        Scenario(
            "tokens", "as limited, with 45 s tokens", (*limited, "--token-ttl", "45"),
            int(3_000_000 * scale), LIMIT_QPS, every, ("--qps", f"{LIMIT_QPS:g}"),
        ),
    ]


@dataclass
class Result:
    scenario: str
    client: str
    rows: int
    seconds: float
    rows_per_s: float
    requests_ok: int
    requests_429: int
    other_errors: int
    failed_batches: int
    peak_rss_mib: float
    cpu_s: float
    cpu_us_per_row: float
    server_cpu_us_per_row: float  # the emulator's, over the same run
    exit_code: int
    ratio: float | None = None  # to the raw ceiling (client-bound) or to the limit
    seconds_to_90pct: float | None = None  # of the limit, from the first accepted request
    accepted_per_s: list[tuple[float, float]] = field(default_factory=list, repr=False)


class Poller(threading.Thread):
    """Samples the emulator's accepted-request count every 0.25 s."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        super().__init__(daemon=True)
        self.emulator = emulator
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            try:
                ok = self.emulator.accounting()["requests_by_status"].get("200", 0)
            except OSError:
                continue
            self.samples.append((time.monotonic(), int(ok)))


def _rate_series(samples: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """(seconds since the first acceptance, accepted/s over the trailing second)."""
    start = next((t for t, ok in samples if ok > 0), None)
    if start is None:
        return []
    series = []
    for i, (t, ok) in enumerate(samples):
        back = next((j for j in range(i, -1, -1) if t - samples[j][0] >= 1.0), None)
        if back is not None and t >= start:
            series.append((round(t - start, 2), (ok - samples[back][1]) / (t - samples[back][0])))
    return series


def _command(client: str, scenario: Scenario, data: Path, out: Path, budget: float) -> list[str]:
    if client.startswith("engine"):
        cmd = [
            sys.executable, "-m", "engine", "score", str(data), "--endpoint", ENDPOINT,
            "--output", str(out), "--overwrite", "--no-resume", "--progress", "off", "--quiet",
            "--summary", str(out) + ".summary.json", "--batch-rows", str(BATCH_ROWS),
        ]
        return cmd + list(scenario.tuned_flags) if client == "engine-tuned" else cmd
    return [
        sys.executable, str(PEERS), client, str(data), "--budget-s", str(budget),
        "--batch-rows", str(BATCH_ROWS), "--concurrency", str(scenario.raw_concurrency),
    ]


def measure(
    client: str, scenario: Scenario, data: Path, work: Path, budget: float
) -> tuple[Result, ChildUsage]:
    emulator = EmulatorProcess.start(*scenario.emulator_flags)
    poller = Poller(emulator)
    out = work / f"{scenario.name}-{client}.arrow"
    try:
        poller.start()
        server_before = emulator.cpu_seconds()
        usage = run_child(_command(client, scenario, data, out, budget), emulator.env)
        server_cpu = emulator.cpu_seconds() - server_before
        poller.done.set()
        poller.join()
        counts = emulator.accounting()["requests_by_status"]
    finally:
        emulator.stop()
    if client.startswith("engine"):
        summary = json.loads(Path(str(out) + ".summary.json").read_text())
        rows, seconds, failed = summary["rows_scored"], summary["elapsed_s"], 0
    else:
        report = json.loads(usage.stdout.strip().splitlines()[-1])
        rows, seconds, failed = report["rows"], report["elapsed_s"], report["failed_batches"]
    ok, throttled = int(counts.get("200", 0)), int(counts.get("429", 0))
    series = _rate_series(poller.samples)
    result = Result(
        scenario=scenario.name,
        client=client,
        rows=rows,
        seconds=round(seconds, 2),
        rows_per_s=round(rows / seconds, 1) if seconds else 0.0,
        requests_ok=ok,
        requests_429=throttled,
        other_errors=sum(int(v) for k, v in counts.items() if k not in ("200", "429")),
        failed_batches=failed,
        peak_rss_mib=round(usage.peak_rss_mib, 1),
        cpu_s=round(usage.cpu_s, 2),
        cpu_us_per_row=round(usage.cpu_s / rows * 1e6, 2) if rows else 0.0,
        server_cpu_us_per_row=round(server_cpu / rows * 1e6, 2) if rows else 0.0,
        exit_code=usage.exit_code,
        accepted_per_s=[(t, round(r, 1)) for t, r in series],
    )
    if scenario.limit_qps:
        reached = next((t for t, r in series if r >= 0.9 * scenario.limit_qps), None)
        result.seconds_to_90pct = reached
        result.ratio = round(result.rows_per_s / (scenario.limit_qps * BATCH_ROWS), 3)
    return result, usage


def _budget(client: str, quick: bool) -> float:
    return {"naive": 10.0, "sdk": 30.0, "aiometer": 60.0}.get(client, 600.0) * (
        0.5 if quick else 1.0
    )


def table(results: list[Result], titles: dict[str, str], limited: set[str]) -> str:
    lines = [
        "| scenario | client | rows/s | ratio | s to 0.9·limit | 429s | other errors "
        "| failed batches | peak RSS | CPU | CPU/row | server CPU/row |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        reach = "" if r.seconds_to_90pct is None else f"{r.seconds_to_90pct:.1f}"
        if r.scenario in limited and r.seconds_to_90pct is None:
            reach = "never"
        lines.append(
            f"| {titles[r.scenario]} | {r.client} | {r.rows_per_s:,.0f} | {ratio} | {reach} "
            f"| {r.requests_429:,} ({r.requests_429 / max(1, r.requests_ok + r.requests_429):.1%})"
            f" | {r.other_errors:,} | {r.failed_batches:,} | {r.peak_rss_mib:.0f} MiB "
            f"| {r.cpu_s:.1f} s | {r.cpu_us_per_row:.2f} µs | {r.server_cpu_us_per_row:.2f} µs |"
        )
    return "\n".join(lines)


def chart(
    results: list[Result], titles: dict[str, str], limited: set[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.scenario for r in results))
    clients = list(dict.fromkeys(r.client for r in results))
    width = 0.8 / len(clients)
    fig, (ax, waste) = plt.subplots(
        2, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [3, 2]}, sharex=True
    )
    for i, client in enumerate(clients):
        xs, ys, shares = [], [], []
        for j, name in enumerate(names):
            match = [r for r in results if r.scenario == name and r.client == client]
            if match:
                r = match[0]
                xs.append(j + (i - (len(clients) - 1) / 2) * width)
                ys.append(max(r.rows_per_s, 1.0))
                shares.append(100 * r.requests_429 / max(1, r.requests_ok + r.requests_429))
        ax.bar(xs, ys, width, label=client)
        waste.bar(xs, shares, width, label=client)
    for j, name in enumerate(names):
        if name in limited:
            ax.hlines(LIMIT_QPS * BATCH_ROWS, j - 0.45, j + 0.45, colors="black", linestyles=":")
    ax.set_yscale("log")
    ax.set_ylabel("rows scored per second (log)")
    ax.set_title(f"Scoring demo-regressor on the emulator ({os.cpu_count()} cores); "
                 f"dotted: the endpoint's limit")
    ax.legend(fontsize=8, ncol=3)
    waste.set_ylabel("requests answered 429 (%)")
    waste.set_xticks(range(len(names)), [titles[n] for n in names], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs and budgets")
    parser.add_argument(
        "--only", help="scenarios, comma-separated (zero,latency,limited,faults,tokens)"
    )
    parser.add_argument("--clients", help="clients, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args()
    chosen = [s for s in scenarios(args.quick) if not args.only or s.name in args.only.split(",")]
    wanted = set(args.clients.split(",")) if args.clients else None
    titles = {s.name: s.title for s in chosen}
    results: list[Result] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for scenario in chosen:
            data = write_input(work / f"{scenario.name}.parquet", scenario.rows)
            for client in scenario.clients:
                if wanted and client not in wanted:
                    continue
                result, usage = measure(client, scenario, data, work, _budget(client, args.quick))
                if usage.exit_code not in (0, 3):
                    print(usage.stderr[-2000:], file=sys.stderr)
                results.append(result)
                print(
                    f"{scenario.name:8s} {client:13s} {result.rows_per_s:>11,.0f} rows/s  "
                    f"429s {result.requests_429:>5}  cpu {result.cpu_us_per_row:5.2f} µs/row  "
                    f"rss {result.peak_rss_mib:5.0f} MiB  exit {result.exit_code}",
                    flush=True,
                )
            ceiling = next((r for r in results if r.scenario == scenario.name
                            and r.client == "raw"), None)
            for r in results:
                if ceiling and r.scenario == scenario.name and scenario.limit_qps is None:
                    r.ratio = round(r.rows_per_s / ceiling.rows_per_s, 3)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "batch_rows": BATCH_ROWS,
        "limit_qps": LIMIT_QPS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    limited = {s.name for s in chosen if s.limit_qps}
    text = table(results, titles, limited)
    header = (f"Machine: {machine['cpus']} cores, Python {machine['python']}, "
              f"{machine['platform']}; {BATCH_ROWS}-row batches; run took {machine['seconds']} s.")
    (args.out / "run.md").write_text(header + "\n\n" + text + "\n")
    (args.out / "run.json").write_text(json.dumps(
        {"machine": machine, "results": [asdict(r) for r in results]}, indent=1))
    chart(results, titles, limited, args.out / "run.png")
    print()
    print(header)
    print()
    print(text)


if __name__ == "__main__":
    main()
