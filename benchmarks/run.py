"""The engine against the alternatives, side by side, on the same data and batch size.

    pip install -e '.[bench]'
    python benchmarks/run.py                 # every scenario (about 9 minutes on 2 cores)
    python benchmarks/run.py --quick         # smaller inputs and budgets (about 2 minutes)
    python benchmarks/run.py --only zero,limited --clients engine,raw
    python benchmarks/run.py --suite strict  # the strict emulator's scenarios (strict.md)

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

The ``strict`` suite runs the emulator as strictly as real endpoints (small bursts, 429s
without ``Retry-After``, concurrency caps, limits that step, random 429s, hanging requests)
against the engine, databricks-sdk and aiometer. Each scenario has a capacity (requests/s
the endpoint allows, possibly changing over time); per client it reports the fraction of
that capacity used over the client's whole run, start-up included, the share of requests
answered 429, and for the steps, the seconds from a step up until the accepted rate reaches
0.9 of the new limit and from a step down until the 429 share stays under 5% (trailing 1 s
windows of the polled server-side counts). A scenario may give every client a hard wall-time
budget: a client still running then is killed and recorded as stalled.

Slow clients get a time budget and are measured over what they did in it. CPU is the whole
client process's (interpreter start-up included; for ``raw``, pre-encoding too); server CPU
is the emulator's over the same run. Results go to
``benchmarks/results/run.json``, ``run.md`` (the table) and ``run.png`` (the chart); the
strict suite's to ``strict.json`` and ``strict.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ENDPOINT, ChildUsage, EmulatorProcess, run_child, write_input
from series import (
    Sample,
    capacity_requests,
    rate_series,
    seconds_to_reach,
    seconds_to_settle,
    share_between,
    share_series,
)

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
    suite: str = "classic"
    batch_rows: int = BATCH_ROWS
    #: the capacity in requests/s over time: (seconds from the schedule's start, req/s)
    capacity: tuple[tuple[float, float], ...] = ()
    baseline: str | None = None  # compare rows/s with this scenario's run of the same client
    budget_s: float | None = None  # every client's hard wall-time budget (None: 600 s)


STRICT_CLIENTS = ("engine", "sdk", "aiometer")


def strict_scenarios(quick: bool) -> list[Scenario]:
    """The strict emulator's scenarios: 100-row batches unless said otherwise."""
    scale = 0.25 if quick else 1.0

    def bucket(name: str, seconds: float) -> Scenario:
        flags = ("--qps", "40", "--qps-burst", "4", "--latency-ms", "30", "--retry-after", "none")
        return Scenario(
            name, f"bucket 40/s burst 4, 30 ms, no Retry-After, {seconds:g} s at capacity", flags,
            int(40 * 100 * seconds * scale), None, STRICT_CLIENTS, (), suite="strict",
            batch_rows=100, capacity=((0.0, 40.0),),
        )

    def concurrency(name: str, mode: str) -> Scenario:
        flags = ("--max-concurrency", "8", "--concurrency-mode", mode, "--latency-ms", "50",
                 "--retry-after", "none")
        return Scenario(
            name, f"concurrency 8 ({mode} mode), 50 ms", flags, int(160 * 100 * 15 * scale), None,
            ("raw", *STRICT_CLIENTS), (), raw_concurrency=8, suite="strict", batch_rows=100,
            capacity=((0.0, 160.0),),
        )

    def step(name: str, before: float, after: float) -> Scenario:
        flags = ("--limit-schedule", f"0:{before:g},8:{after:g}", "--latency-ms", "30",
                 "--retry-after", "none")
        rows = int((8 * before + 12 * after) * 100 * scale)
        return Scenario(
            name, f"{before:g} req/s for 8 s, then {after:g}", flags, rows, None, STRICT_CLIENTS,
            (), suite="strict", batch_rows=100, capacity=((0.0, before), (8.0, after)),
        )

    def scaled_up() -> Scenario:
        flags = ("--concurrency-schedule", "0:4,8:8", "--concurrency-mode", "429",
                 "--latency-ms", "50", "--retry-after", "none")
        return Scenario(
            "concstep", "concurrency 4 for 8 s, then 8 (429 mode), 50 ms", flags,
            int((8 * 80 + 12 * 160) * 100 * scale), None, STRICT_CLIENTS, (), suite="strict",
            batch_rows=100, capacity=((0.0, 80.0), (8.0, 160.0)),
        )

    def small_burst(
        prefix: str, rate: float, burst: float, latency_ms: int, seconds: float
    ) -> Scenario:
        flags = ("--qps", f"{rate:g}", "--qps-burst", f"{burst:g}", "--latency-ms",
                 str(latency_ms), "--retry-after", "none")
        return Scenario(
            f"{prefix}{rate:g}", f"bucket {rate:g}/s burst {burst:g}, {latency_ms} ms", flags,
            int(rate * 100 * seconds * scale), None, (*STRICT_CLIENTS, "engine-tuned"),
            ("--qps", f"{rate:g}"), suite="strict",
            batch_rows=100, capacity=((0.0, rate),),
        )

    noisy = ("--throttle-rate", "0.05", "--error-503-rate", "0.03", "--reset-before-rate", "0.01")
    engines = ("engine", "engine-tuned", "sdk", "aiometer")
    return [
        bucket("bucket10", 10.0),
        bucket("bucket40", 40.0),
        concurrency("conc429", "429"),
        concurrency("concqueue", "queue"),
        step("stepup", 20.0, 60.0),
        step("stepdown", 60.0, 20.0),
        scaled_up(),
        Scenario(
            "quiet", "30 ms, no faults, no limit", ("--latency-ms", "30"), int(300_000 * scale),
            None, engines, ("--concurrency", "64"), suite="strict",
        ),
        Scenario(
            "noisy", "30 ms, 5% random 429s + 3% 503s + 1% resets, no limit",
            ("--latency-ms", "30", *noisy), int(300_000 * scale), None, engines,
            ("--concurrency", "64"), suite="strict", baseline="quiet",
        ),
        # The same, ten times longer: the 300-request runs above last about a second, so a
        # batch's 1 s Retry-After near the end decides their time; here the run's rate does.
        Scenario(
            "quietlong", "30 ms, no faults, no limit, 3M rows", ("--latency-ms", "30"),
            int(3_000_000 * scale), None, engines, ("--concurrency", "64"), suite="strict",
        ),
        Scenario(
            "noisylong", "30 ms, 5% random 429s + 3% 503s + 1% resets, no limit, 3M rows",
            ("--latency-ms", "30", *noisy), int(3_000_000 * scale), None, engines,
            ("--concurrency", "64"), suite="strict", baseline="quietlong",
        ),
        Scenario(
            "hang", "2 hung requests in 1000, 10 ms, 150 s budget",
            ("--latency-ms", "10", "--hang-every", "500"), 100_000, None, STRICT_CLIENTS, (),
            suite="strict", batch_rows=100, budget_s=150.0,
        ),
        # The same hang rate over a run ten times longer (10 hangs in 10,000 requests): what
        # each hang costs the whole run, once the reorder window has filled behind it, against
        # the same run without hangs.
        Scenario(
            "hangnone", "no hung requests, 10 ms, 1M rows", ("--latency-ms", "10"), 1_000_000,
            None, ("engine",), (), suite="strict", batch_rows=100,
        ),
        Scenario(
            "hanglong", "10 hung requests in 10,000, 10 ms, 1M rows, 900 s budget",
            ("--latency-ms", "10", "--hang-every", "1000"), 1_000_000,
            None, ("engine",), (), suite="strict", batch_rows=100, budget_s=900.0,
            baseline="hangnone",
        ),
        small_burst("tiny", 5.0, 1.0, 10, 10.0),
        small_burst("tiny", 200.0, 1.0, 10, 10.0),
        small_burst("tiny", 2000.0, 1.0, 10, 2.0),
        small_burst("slow", 100.0, 2.0, 100, 10.0),
    ]


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
    # the strict suite's measures (see the module docstring)
    wall_s: float = 0.0  # the client process's, start-up included
    complete: bool = False  # every input row came back
    rows_answered: int = 0  # rows in requests the server answered 200 (even if the client died)
    timed_out: bool = False  # killed at the scenario's budget: stalled
    capacity_rows_per_s: float | None = None  # averaged over the client's wall time
    fraction_of_capacity: float | None = None
    share_429: float = 0.0
    throttled_by_cause: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    step_reach_s: float | None = None  # step up: to 0.9 of the new limit
    step_settle_s: float | None = None  # step down: until the 429 share stays under 5%
    #: step down: the 429 share from 3 s after the fall to the end of the run
    step_share_after_3s: float | None = None
    vs_baseline: float | None = None  # rows/s over the same client's in the baseline scenario


class Poller(threading.Thread):
    """Samples the emulator's counters every 0.25 s (server-side, the same for every client)."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        super().__init__(daemon=True)
        self.emulator = emulator
        self.samples: list[tuple[float, int]] = []
        self.counts: list[Sample] = []
        #: local monotonic seconds at the limit schedule's start (None: not started)
        self.schedule_origin: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            try:
                snapshot = self.emulator.accounting()
            except OSError:
                continue
            self.record(time.monotonic(), snapshot)

    def record(self, now: float, snapshot: dict[str, Any]) -> None:
        by_status = snapshot["requests_by_status"]
        ok = int(by_status.get("200", 0))
        self.samples.append((now, ok))
        throttled = int(by_status.get("429", 0))
        self.counts.append(Sample(now, ok, throttled, int(snapshot["requests_total"])))
        started = snapshot.get("limits", {}).get("schedule_started_s")
        if started is not None and self.schedule_origin is None:
            self.schedule_origin = now - (snapshot["clock_s"] - started)


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
            "--summary", str(out) + ".summary.json", "--batch-rows", str(scenario.batch_rows),
        ]
        return cmd + list(scenario.tuned_flags) if client == "engine-tuned" else cmd
    return [
        sys.executable, str(PEERS), client, str(data), "--budget-s", str(budget),
        "--batch-rows", str(scenario.batch_rows), "--concurrency", str(scenario.raw_concurrency),
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
        started = time.monotonic()
        usage = run_child(
            _command(client, scenario, data, out, budget), emulator.env,
            timeout_s=scenario.budget_s or 600.0,
        )
        server_cpu = emulator.cpu_seconds() - server_before
        poller.done.set()
        poller.join()
        final = emulator.accounting()
        poller.record(time.monotonic(), final)
    finally:
        emulator.stop()
    counts = final["requests_by_status"]
    rows, seconds, failed = _client_report(client, out, usage)
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
    if scenario.suite == "strict":
        _strict_measures(result, scenario, poller, final, started, usage)
    return result, usage


def _client_report(client: str, out: Path, usage: ChildUsage) -> tuple[int, float, int]:
    """(rows scored, the client's own elapsed seconds, failed batches); a client killed at
    its budget reported nothing, so it counts as no rows over its wall time."""
    summary_path = Path(str(out) + ".summary.json")
    if client.startswith("engine"):
        if not summary_path.exists():
            return 0, usage.wall_s, 0
        summary = json.loads(summary_path.read_text())
        return int(summary["rows_scored"]), float(summary["elapsed_s"]), 0
    lines = usage.stdout.strip().splitlines()
    if not lines:
        return 0, usage.wall_s, 0
    report = json.loads(lines[-1])
    return int(report["rows"]), float(report["elapsed_s"]), int(report["failed_batches"])


def _strict_measures(
    result: Result, scenario: Scenario, poller: Poller, final: dict[str, Any], started: float,
    usage: ChildUsage,
) -> None:
    """Fill the strict suite's columns from the server-side samples (see the docstring)."""
    result.wall_s = round(usage.wall_s, 2)
    result.timed_out = usage.timed_out
    result.complete = usage.exit_code == 0 and result.rows == scenario.rows
    result.rows_answered = result.requests_ok * scenario.batch_rows
    total = int(final["requests_total"])
    result.share_429 = round(result.requests_429 / total, 4) if total else 0.0
    result.throttled_by_cause = {
        cause: int(final.get(f"throttled_{cause}", 0))
        for cause in ("rate", "concurrency", "random")
    }
    result.hung = int(final.get("hung", 0))
    if not scenario.capacity:
        return
    schedule = list(scenario.capacity)
    allowed = capacity_requests(schedule, poller.schedule_origin, started, started + usage.wall_s)
    result.capacity_rows_per_s = round(allowed * scenario.batch_rows / usage.wall_s, 1)
    result.fraction_of_capacity = round(result.rows / (allowed * scenario.batch_rows), 3)
    if len(schedule) < 2 or poller.schedule_origin is None:
        return
    (_, before), (at_s, after) = schedule[0], schedule[1]
    step = poller.schedule_origin + at_s
    if after > before:
        reach = seconds_to_reach(rate_series(poller.counts), step, 0.9 * after)
        result.step_reach_s = None if reach is None else round(reach, 2)
    else:
        settle = seconds_to_settle(share_series(poller.counts), step, 0.05)
        result.step_settle_s = None if settle is None else round(settle, 2)
        after = share_between(poller.counts, step + 3.0, math.inf)
        result.step_share_after_3s = None if after is None else round(after, 4)


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


def strict_table(results: list[Result], titles: dict[str, str]) -> str:
    lines = [
        "| scenario | client | rows | all rows back | rows answered 200 (server) "
        "| wall s (start-up incl.) | rows/s over wall "
        "| capacity rows/s | fraction of capacity | 429 share (rate/conc/random) "
        "| step up: s to 0.9·new | step down: s until every 1 s window < 5% 429s; share from "
        "3 s on | vs no faults | other errors "
        "| hung | exit |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: "
        "| ---: | ---: | --- |",
    ]
    for r in results:
        causes = "/".join(str(r.throttled_by_cause.get(c, 0)) for c in ("rate", "concurrency",
                                                                          "random"))
        step_up = _seconds(r.step_reach_s) if r.scenario in ("stepup", "concstep") else ""
        step_down = ""
        if r.scenario == "stepdown":
            after = "-" if r.step_share_after_3s is None else f"{r.step_share_after_3s:.1%}"
            step_down = f"{_seconds(r.step_settle_s)}; {after}"
        exit_text = "stalled (killed)" if r.timed_out else str(r.exit_code)
        lines.append(
            f"| {titles[r.scenario]} | {r.client} | {r.rows:,} | {'yes' if r.complete else 'NO'} "
            f"| {r.rows_answered:,} "
            f"| {r.wall_s:.1f} | {r.rows / r.wall_s if r.wall_s else 0:,.0f} "
            f"| {_number(r.capacity_rows_per_s, ',.0f')} "
            f"| {_number(r.fraction_of_capacity, '.2f')} "
            f"| {r.share_429:.1%} ({causes}) | {step_up} | {step_down} "
            f"| {_number(r.vs_baseline, '.2f')} | {r.other_errors:,} | {r.hung} | {exit_text} |"
        )
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


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


def _choose(args: argparse.Namespace) -> list[Scenario]:
    every = scenarios(args.quick) + strict_scenarios(args.quick)
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {s.name for s in every}
        if unknown:
            raise SystemExit(f"--only: no scenario {', '.join(sorted(unknown))}")
        return [s for s in every if s.name in names]
    return [s for s in every if args.suite in ("all", s.suite)]


def _run_all(
    chosen: list[Scenario], wanted: set[str] | None, quick: bool, work: Path
) -> list[Result]:
    results: list[Result] = []
    for scenario in chosen:
        data = write_input(work / f"{scenario.name}.parquet", scenario.rows)
        for client in scenario.clients:
            if wanted and client not in wanted:
                continue
            result, usage = measure(client, scenario, data, work, _budget(client, quick))
            if usage.exit_code not in (0, 3):
                print(usage.stderr[-2000:], file=sys.stderr)
            results.append(result)
            print(
                f"{scenario.name:9s} {client:13s} {result.rows_per_s:>11,.0f} rows/s  "
                f"429s {result.requests_429:>5}  cpu {result.cpu_us_per_row:5.2f} µs/row  "
                f"rss {result.peak_rss_mib:5.0f} MiB  exit {result.exit_code}"
                f"{'  (stalled: killed at its budget)' if usage.timed_out else ''}",
                flush=True,
            )
        ceiling = next((r for r in results if r.scenario == scenario.name
                        and r.client == "raw"), None)
        for r in results:
            if ceiling and r.scenario == scenario.name and scenario.limit_qps is None:
                r.ratio = round(r.rows_per_s / ceiling.rows_per_s, 3)
    _compare_with_baselines(chosen, results)
    return results


def _compare_with_baselines(chosen: list[Scenario], results: list[Result]) -> None:
    by_key = {(r.scenario, r.client): r for r in results}
    for scenario in chosen:
        for r in results:
            base = by_key.get((scenario.baseline or "", r.client))
            if r.scenario == scenario.name and base and base.wall_s and r.wall_s and base.rows:
                r.vs_baseline = round((r.rows / r.wall_s) / (base.rows / base.wall_s), 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs and budgets")
    parser.add_argument(
        "--suite", choices=["classic", "strict", "all"], default="classic",
        help="which scenarios without --only (default classic: zero ... tokens)",
    )
    parser.add_argument(
        "--only", help="scenarios, comma-separated (zero,latency,limited,faults,tokens; strict: "
        "bucket10,bucket40,conc429,concqueue,stepup,stepdown,concstep,quiet,noisy,quietlong,"
        "noisylong,hang,hangnone,hanglong,tiny5,tiny200,tiny2000,slow100)"
    )
    parser.add_argument("--clients", help="clients, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args()
    chosen = _choose(args)
    wanted = set(args.clients.split(",")) if args.clients else None
    titles = {s.name: s.title for s in chosen}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        results = _run_all(chosen, wanted, args.quick, Path(tmp))
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
    suite_of = {s.name: s.suite for s in chosen}
    classic = [r for r in results if suite_of[r.scenario] == "classic"]
    strict = [r for r in results if suite_of[r.scenario] == "strict"]
    header = (f"Machine: {machine['cpus']} cores, Python {machine['python']}, "
              f"{machine['platform']}; run took {machine['seconds']} s.")
    if classic:
        limited = {s.name for s in chosen if s.limit_qps}
        text = table(classic, titles, limited)
        (args.out / "run.md").write_text(
            f"{header} {BATCH_ROWS}-row batches.\n\n{text}\n")
        (args.out / "run.json").write_text(json.dumps(
            {"machine": machine, "results": [asdict(r) for r in classic]}, indent=1))
        chart(classic, titles, limited, args.out / "run.png")
        print(f"\n{header}\n\n{text}")
    if strict:
        text = strict_table(strict, titles)
        (args.out / "strict.md").write_text(f"{header}\n\n{text}\n")
        (args.out / "strict.json").write_text(json.dumps(
            {"machine": machine, "results": [asdict(r) for r in strict]}, indent=1))
        print(f"\n{header}\n\n{text}")


if __name__ == "__main__":
    main()
