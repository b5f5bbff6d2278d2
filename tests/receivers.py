"""Real metric receivers for tests, on loopback: an OTLP/HTTP endpoint that decodes what
exporters send, and Debian's Prometheus Pushgateway binary."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from prometheus_client.parser import text_string_to_metric_families

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OtlpReceiver:
    """Decodes what OTLP/HTTP exporters POST to /v1/metrics and /v1/traces."""

    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.url = ""

    def receive(self, path: str, content_type: str, body: bytes) -> int:
        assert content_type == "application/x-protobuf", content_type
        if path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
            self.metrics.append(metrics)
        elif path == "/v1/traces":
            traces = ExportTraceServiceRequest()
            traces.ParseFromString(body)
            self.traces.append(traces)
        else:
            return 404
        return 200

    def last_points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's data points, the last exported of each attribute set (cumulative
        temporality: the last is the total)."""
        points: dict[str, dict[tuple[Any, ...], tuple[dict[str, Any], Any]]] = {}
        for export in self.metrics:
            for resource_metrics in export.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            labels = attrs(point.attributes)
                            key = tuple(sorted(labels.items()))
                            points.setdefault(metric.name, {})[key] = (labels, point)
        return {name: list(by_labels.values()) for name, by_labels in points.items()}

    def resource(self) -> dict[str, Any]:
        return attrs(self.metrics[-1].resource_metrics[0].resource.attributes)

    def spans(self) -> list[Any]:
        return [
            span for export in self.traces for spans in export.resource_spans
            for scope in spans.scope_spans for span in scope.spans
        ]


def attrs(attributes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in attributes:
        assert isinstance(kv, KeyValue)
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def point_value(points: list[tuple[dict[str, Any], Any]], **wanted: Any) -> float:
    """The value of the one data point whose attributes include ``wanted``."""
    matching = [p for a, p in points if all(a.get(k) == v for k, v in wanted.items())]
    assert len(matching) == 1, (wanted, [a for a, _ in points])
    point = matching[0]
    return float(point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on a free 127.0.0.1 port (its own thread), stopped after."""
    receiver = OtlpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = receiver.receive(self.path, self.headers.get("Content-Type", ""), body)
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Pushgateway:
    def __init__(self, url: str) -> None:
        self.url = url

    def scrape(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        families: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                families[sample.name].append((dict(sample.labels), sample.value))
        return families


@contextlib.contextmanager
def running_pushgateway(directory: Path) -> Iterator[Pushgateway]:
    """Debian's prometheus-pushgateway on a free loopback port, stopped after.

    Missing binary: skipped locally, a failure in CI (``CI=true``), where it must be installed.
    """
    if not os.path.exists(PUSHGATEWAY):
        message = "prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    proc = subprocess.Popen(
        [
            PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={directory / 'pushgateway.data'}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield Pushgateway(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30  # start-up only; no assertion depends on speed
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pushgateway exited at start-up"
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise AssertionError("the pushgateway never became ready")


def sample_value(families: dict[str, list[tuple[dict[str, str], float]]], name: str,
                 **labels: str) -> float:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    matching = [v for ls, v in families[name] if all(ls.get(k) == x for k, x in labels.items())]
    assert len(matching) == 1, (name, labels, families.get(name))
    return matching[0]
