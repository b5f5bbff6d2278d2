"""What do metrics cost? `engine score` with and without OpenTelemetry + Pushgateway export.

    python benchmarks/metrics_overhead.py                      # 300k rows, 5 pairs
    python benchmarks/metrics_overhead.py --rows 300000 --pairs 5 --batch-rows 100

Starts `engine emulate --json --no-row-accounting` and `prometheus-pushgateway` as child
processes and an OTLP/HTTP sink in this process (it answers 200 to every export), writes one
Parquet input, then runs the same `engine score` as a whole child process in alternated pairs
(plain, metered; then metered, plain; ...). "Metered" sets OTEL_EXPORTER_OTLP_ENDPOINT with
OTEL_METRIC_EXPORT_INTERVAL=1000 (an export every second, 60 x the SDK's default) and passes
--pushgateway. Reports the median of the run's own rows/s (from --summary) and of the child's
wall time (start-up, imports and the exit flush included), and the throughput cost. Writes
benchmarks/results/metrics_overhead-<rows>rows-batch<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ENDPOINT, EmulatorProcess, run_child, write_input

ROOT = Path(__file__).resolve().parent


class _Sink(BaseHTTPRequestHandler):
    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pushgateway(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
    port = _free_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}",
         f"--persistence.file={directory / 'pushgateway.data'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit("prometheus-pushgateway did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=1000)
    args = parser.parse_args()

    emulator = EmulatorProcess.start()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gateway, gateway_url = _pushgateway(work)
        try:
            otlp_url = f"http://127.0.0.1:{sink.server_address[1]}"
            results = _measure(args, emulator, work, gateway_url, sink.server_address[1])
            results["micro"] = _micro(otlp_url, gateway_url, results)
            results["accounted"] = accounted(results)
        finally:
            gateway.terminate()
            gateway.wait(timeout=10)
            emulator.stop()
            sink.shutdown()
    results["otlp_exports_received"] = _Sink.exports
    out = ROOT / "results" / f"metrics_overhead-{args.rows}rows-batch{args.batch_rows}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    _print(results)


def _measure(
    args: argparse.Namespace, emulator: EmulatorProcess, work: Path, gateway: str, otlp_port: int
) -> dict[str, Any]:
    source = write_input(work / "in.parquet", args.rows)
    plain_env = {k: v for k, v in emulator.env.items() if not k.startswith("OTEL_")}
    metered_env = {
        **plain_env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_SERVICE_NAME": "metrics-overhead-benchmark",
    }
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "metered": []}
    for pair in range(args.pairs):
        order = ("plain", "metered") if pair % 2 == 0 else ("metered", "plain")
        for kind in order:
            summary_path = work / f"{kind}-{pair}.json"
            cmd = [
                sys.executable, "-m", "engine", "score", str(source), "--endpoint", ENDPOINT,
                "--output", str(work / "out.arrow"), "--overwrite", "--progress", "log",
                "--batch-rows", str(args.batch_rows), "--summary", str(summary_path),
            ]
            if kind == "metered":
                cmd += ["--pushgateway", gateway, "--pushgateway-job", "overhead_benchmark"]
            usage = run_child(cmd, metered_env if kind == "metered" else plain_env)
            if usage.exit_code != 0:
                raise SystemExit(f"{kind} run failed ({usage.exit_code}):\n{usage.stderr[-3000:]}")
            summary = json.loads(summary_path.read_text())
            runs[kind].append(
                {"rows_per_s": summary["rows_per_s"], "wall_s": round(usage.wall_s, 3),
                 "cpu_s": round(usage.cpu_s, 3), "requests": summary["requests"]}
            )
            print(f"pair {pair} {kind:8} {summary['rows_per_s']:>10,.0f} rows/s  "
                  f"wall {usage.wall_s:6.2f} s  cpu {usage.cpu_s:6.2f} s", file=sys.stderr)
    medians = {
        kind: {key: statistics.median(run[key] for run in kinds) for key in kinds[0]}
        for kind, kinds in runs.items()
    }
    plain, metered = medians["plain"], medians["metered"]
    return {
        "rows": args.rows,
        "batch_rows": args.batch_rows,
        "pairs": args.pairs,
        "cpus": os.cpu_count(),
        "runs": runs,
        "median": medians,
        "throughput_cost_pct": round(100 * (1 - metered["rows_per_s"] / plain["rows_per_s"]), 2),
        # each pair's own cost, then the median: less exposed to load that shifts between pairs
        "pair_throughput_cost_pct_median": round(100 * statistics.median(
            1 - m["rows_per_s"] / p["rows_per_s"]
            for p, m in zip(runs["plain"], runs["metered"], strict=True)
        ), 2),
        "wall_cost_pct": round(100 * (metered["wall_s"] / plain["wall_s"] - 1), 2),
        "cpu_cost_pct": round(100 * (metered["cpu_s"] / plain["cpu_s"] - 1), 2),
        "note": "shared 2-core machine (other engineers' jobs ran meanwhile); alternated pairs",
    }


def _micro(otlp_url: str, gateway: str, results: dict[str, Any]) -> dict[str, Any]:
    """CPU cost of each piece, measured in this process (not disturbed by other processes
    as wall time is): imports, the per-request hook, one OTLP export, one push; and what they
    add up to at the plain runs' median request rate."""
    return asyncio.run(_micro_async(otlp_url, gateway, results))


async def _micro_async(otlp_url: str, gateway: str, results: dict[str, Any]) -> dict[str, Any]:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_url
    from engine.config import MetricsConfig, ScoreConfig
    from engine.stats import RunStats
    from engine.telemetry import Telemetry

    config = ScoreConfig(
        endpoint=ENDPOINT, metrics=MetricsConfig(pushgateway_url=gateway, pushgateway_job="micro")
    )
    started = time.process_time()
    telemetry = Telemetry.open(config)  # imports opentelemetry and prometheus_client
    import_cpu_s = time.process_time() - started
    stats = RunStats()
    scorer = SimpleNamespace(
        config=config, model_version="demo_regressor@1", stats=stats,
        tokens=SimpleNamespace(fetches=1), invocation_url="http://127.0.0.1:9/invocations",
    )
    telemetry.start(scorer)  # type: ignore[arg-type]
    calls = 200_000
    bare = RunStats()
    started = time.process_time()
    for i in range(calls):
        bare.record_request(200 if i % 10 else 429, 0.05)
    bare_s = time.process_time() - started
    started = time.process_time()
    for i in range(calls):
        stats.record_request(200 if i % 10 else 429, 0.05)
    hooked_s = time.process_time() - started
    otel, push = telemetry.exporters
    started = time.process_time()
    for _ in range(20):
        otel.meters.force_flush()  # type: ignore[attr-defined]
    export_s = (time.process_time() - started) / 20
    started = time.process_time()
    for _ in range(20):
        push.push()
    push_s = (time.process_time() - started) / 20
    telemetry.finish(stats.summary(endpoint=ENDPOINT, output=None, token_refreshes=1,
                                   exit_code=0))
    per_request_us = (hooked_s - bare_s) / calls * 1e6
    plain = results["median"]["plain"]
    requests_per_s = plain["rows_per_s"] / results["batch_rows"]
    # a core's share: the hook per request, an OTLP export every 60 s (the SDK's default)
    # and a push every 10 s (the CLI's progress interval)
    share = requests_per_s * per_request_us / 1e6 + export_s / 60 + push_s / 10
    return {
        "import_and_setup_cpu_s": round(import_cpu_s, 3),
        "per_request_hook_us": round(per_request_us, 2),
        "otlp_export_cpu_ms": round(export_s * 1000, 2),
        "pushgateway_push_cpu_ms": round(push_s * 1000, 2),
        "requests_per_s_at_plain_median": round(requests_per_s, 1),
        "steady_cpu_share_pct": round(100 * share, 3),
    }


def accounted(results: dict[str, Any]) -> dict[str, float]:
    """The metered runs' extra CPU, added up from the pieces' measured costs, as a share of
    a plain run's CPU: the throughput a CPU-bound engine would lose. Steady (per request and
    per export, growing with the run) apart from fixed (imports and set-up, once a process)."""
    micro, plain = results["micro"], results["median"]["plain"]
    requests = statistics.median(run["requests"] for run in results["runs"]["plain"])
    steady_s = (
        requests * micro["per_request_hook_us"] / 1e6
        + plain["wall_s"] * micro["otlp_export_cpu_ms"] / 1000 / 1.0  # an export a second
        + plain["wall_s"] * micro["pushgateway_push_cpu_ms"] / 1000 / 10.0  # a push in 10 s
    )
    return {
        "steady_cpu_s": round(steady_s, 4),
        "steady_cost_pct": round(100 * steady_s / plain["cpu_s"], 2),
        "fixed_cpu_s": micro["import_and_setup_cpu_s"],
        "total_cost_pct": round(
            100 * (steady_s + micro["import_and_setup_cpu_s"]) / plain["cpu_s"], 2
        ),
    }


def _print(results: dict[str, Any]) -> None:
    plain, metered = results["median"]["plain"], results["median"]["metered"]
    print(f"| {results['rows']:,} rows, --batch-rows {results['batch_rows']}, median of "
          f"{results['pairs']} | rows/s (in run) | wall s (process) | CPU s |")
    print("|---|---:|---:|---:|")
    print(f"| no metrics | {plain['rows_per_s']:,.0f} | {plain['wall_s']:.2f} | "
          f"{plain['cpu_s']:.2f} |")
    print(f"| OTel (1 s export) + Pushgateway | {metered['rows_per_s']:,.0f} | "
          f"{metered['wall_s']:.2f} | {metered['cpu_s']:.2f} |")
    print(f"| cost | {results['throughput_cost_pct']:+.1f} % | {results['wall_cost_pct']:+.1f} % "
          f"| {results['cpu_cost_pct']:+.1f} % |")
    print(f"median of the pairs' own throughput cost: "
          f"{results['pair_throughput_cost_pct_median']:+.1f} %")
    print(json.dumps({**results["micro"], **results["accounted"]}, indent=2))


if __name__ == "__main__":
    main()
