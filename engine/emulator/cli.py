"""``engine emulate``: flags -> :class:`EmulatorConfig` -> serve until SIGINT/SIGTERM.

With ``--json`` the first stdout line is one JSON object (``host``, ``data_plane_host``,
``workspace_id``, ``client_id``, ``client_secret``, ``endpoints``) so scripts can read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from engine.emulator.config import (
    DEFAULT_START_DURATION_S,
    DEFAULT_TOKEN_TTL_S,
    DEFAULT_WORKSPACE_ID,
    EmulatorConfig,
    EndpointConfig,
    Faults,
    LimitStep,
    ServicePrincipal,
    TokenFaults,
)
from engine.emulator.models import BUILTIN_MODELS, Model, load_callable
from engine.emulator.server import Emulator
from engine.errors import UsageError

__all__ = ["add_arguments", "build_config", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``engine emulate``'s flags to ``parser``; a bad flag is one line on stderr, exit 2."""
    setattr(parser, "print_usage", _no_usage)  # noqa: B010 - argparse prints usage before errors
    net = parser.add_argument_group("network")
    net.add_argument(
        "--port",
        "--host-port",
        dest="port",
        type=int,
        default=0,
        metavar="PORT",
        help="control-plane (workspace) port (default: a free one)",
    )
    net.add_argument(
        "--data-plane-port",
        type=int,
        default=0,
        metavar="PORT",
        help="data-plane port (default: a free one)",
    )
    net.add_argument(
        "--control-latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="added to every workspace REST call: endpoint lookups, the OpenAPI schema, the "
        "Files API (default 0; a real control plane takes tens to hundreds of ms)",
    )
    auth = parser.add_argument_group("auth")
    auth.add_argument(
        "--token-ttl",
        type=float,
        default=DEFAULT_TOKEN_TTL_S,
        metavar="SECONDS",
        help=f"token lifetime (default {DEFAULT_TOKEN_TTL_S:g})",
    )
    auth.add_argument("--token-latency-ms", type=float, default=0.0, metavar="MS")
    auth.add_argument(
        "--token-error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a 503 from the token endpoint",
    )
    auth.add_argument(
        "--token-timeout-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability a token request hangs, then is dropped",
    )
    _add_fault_flags(parser)
    models = parser.add_argument_group("endpoints")
    models.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]MODULE:CALLABLE",
        help="serve a user model (repeatable); endpoint named NAME or the callable",
    )
    models.add_argument(
        "--start-stopped", action="store_true", help="every endpoint starts stopped"
    )
    models.add_argument(
        "--start-duration",
        type=float,
        default=DEFAULT_START_DURATION_S,
        metavar="SECONDS",
        help="how long config:start takes",
    )
    models.add_argument("--config", metavar="FILE", help="JSON file of extra settings (see docs)")
    parser.add_argument(
        "--volumes-root",
        metavar="DIR",
        help="serve DIR as /Volumes through the Files API (/api/2.0/fs/...): "
        "DIR/<catalog>/<schema>/<volume>/... (default: no Volumes, 404)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line, then serve")
    parser.add_argument(
        "--no-row-accounting",
        action="store_true",
        help="skip per-row counters (for long benchmark runs; memory grows with distinct rows)",
    )


def _no_usage(file: object = None) -> None:
    """Errors name the flag; ``--help`` still shows the usage."""


def _add_fault_flags(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group("faults (every endpoint; seeded, so runs repeat)")
    faults.add_argument("--seed", type=int, default=0)
    faults.add_argument("--qps", type=float, metavar="RATE", help="requests/s before 429s")
    faults.add_argument(
        "--qps-burst",
        type=float,
        metavar="N",
        help="the QPS bucket's size in requests (default: 0.1 s of the limit, at least 1)",
    )
    faults.add_argument(
        "--limit-schedule",
        metavar="S:QPS,...",
        help="QPS limit over time, e.g. 0:20,8:60 (QPS may be 'none'); seconds count from "
        "the first data-plane request",
    )
    faults.add_argument(
        "--concurrency-schedule",
        metavar="S:N,...",
        help="concurrency cap over time, e.g. 0:8,10:4 (N may be 'none'); same clock",
    )
    faults.add_argument(
        "--retry-after",
        choices=["none", "seconds", "date"],
        default="seconds",
        help="Retry-After header form on 429s (default seconds)",
    )
    faults.add_argument("--max-concurrency", type=int, metavar="N", help="requests served at once")
    faults.add_argument("--concurrency-mode", choices=["queue", "429"], default="queue")
    for flag in ("latency-ms", "jitter-ms", "tail-ms"):
        faults.add_argument(f"--{flag}", type=float, default=0.0, metavar="MS")
    for flag in (
        "tail-prob",
        "error-500-rate",
        "error-503-rate",
        "reset-before-rate",
        "reset-after-rate",
        "throttle-rate",
        "hang-rate",
    ):
        faults.add_argument(f"--{flag}", type=float, default=0.0, metavar="P")
    faults.add_argument(
        "--hang-every",
        type=int,
        metavar="N",
        help="also leave every N-th admitted request unanswered (500: 2 in 1000)",
    )
    faults.add_argument("--no-poison", action="store_true", help="score poison rows like others")


def _faults(args: argparse.Namespace) -> Faults:
    return Faults(
        seed=args.seed,
        qps_limit=args.qps,
        qps_burst=args.qps_burst,
        schedule=_schedule(args.limit_schedule, args.concurrency_schedule),
        throttle_rate=args.throttle_rate,
        hang_rate=args.hang_rate,
        hang_every=args.hang_every,
        retry_after=None if args.retry_after == "none" else args.retry_after,
        max_concurrency=args.max_concurrency,
        concurrency_mode=args.concurrency_mode,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        tail_prob=args.tail_prob,
        tail_ms=args.tail_ms,
        error_500_rate=args.error_500_rate,
        error_503_rate=args.error_503_rate,
        reset_before_rate=args.reset_before_rate,
        reset_after_rate=args.reset_after_rate,
        poison=not args.no_poison,
    )


def _schedule(qps: str | None, concurrency: str | None) -> tuple[LimitStep, ...]:
    """Both schedules' steps, merged by time (a step may change both limits)."""
    changes: dict[float, dict[str, Any]] = {}
    for at_s, value in _pairs("--limit-schedule", qps, float):
        changes.setdefault(at_s, {})["qps_limit"] = value
    for at_s, value in _pairs("--concurrency-schedule", concurrency, int):
        changes.setdefault(at_s, {})["max_concurrency"] = value
    return tuple(LimitStep(at_s=at_s, **changes[at_s]) for at_s in sorted(changes))


def _pairs(flag: str, text: str | None, kind: type[float] | type[int]) -> list[tuple[float, Any]]:
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        at, sep, value = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError(item)
            pairs.append((float(at), None if value.lower() == "none" else kind(value)))
        except ValueError:
            raise ValueError(
                f"{flag}: expected SECONDS:VALUE[,SECONDS:VALUE...], got {item!r}"
            ) from None
    return pairs


def _user_model(spec: str) -> tuple[str, Model]:
    name, sep, target = spec.partition("=")
    if not sep:
        name, target = "", spec
    model = Model.from_callable(load_callable(target))
    return name or target.rpartition(":")[2].replace("_", "-"), model


def _read_file_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        loaded = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"--config {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: expected a JSON object")
    return loaded


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    """The emulator config the flags (and ``--config`` file) describe.

    The file may hold ``workspace_id``, ``principals`` (objects with ``client_id``,
    ``client_secret``, ``default_permission``, ``permissions``), and ``endpoints`` (objects with
    ``name``, ``model`` (a built-in name or ``module:callable``), ``route_optimized``,
    ``start_stopped``, ``row_key``, ``faults`` (Faults fields)); flags apply to every endpoint.

    Raises:
        UsageError: a flag or the file is invalid.
    """
    try:
        return _build(args, _read_file_config(args.config))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"emulate: {exc}") from None


def _build(args: argparse.Namespace, file: dict[str, Any]) -> EmulatorConfig:
    faults = _faults(args)
    endpoints = [EndpointConfig(name=name) for name in BUILTIN_MODELS]
    endpoints += [EndpointConfig(name=n, model=m) for n, m in map(_user_model, args.model)]
    endpoints += [_file_endpoint(entry, faults) for entry in file.get("endpoints", [])]
    endpoints = [_with_flags(e, args, faults) for e in endpoints]
    by_name = {e.name: e for e in endpoints}  # later definitions win
    principals = tuple(ServicePrincipal(**p) for p in file.get("principals", [])) or (
        ServicePrincipal(),
    )
    token_faults = TokenFaults(
        seed=args.seed,
        latency_ms=args.token_latency_ms,
        error_rate=args.token_error_rate,
        timeout_rate=args.token_timeout_rate,
    )
    return EmulatorConfig(
        endpoints=tuple(by_name.values()),
        principals=principals,
        token_ttl_s=args.token_ttl,
        token_faults=token_faults,
        port=args.port,
        data_plane_port=args.data_plane_port,
        control_latency_ms=args.control_latency_ms,
        workspace_id=str(file.get("workspace_id", DEFAULT_WORKSPACE_ID)),
        track_rows=not args.no_row_accounting,
        volumes_root=_volumes_root(args.volumes_root),
    )


def _volumes_root(path: str | None) -> str | None:
    if path is not None and not os.path.isdir(path):
        raise UsageError(f"--volumes-root {path} is not a directory: create it, or name one")
    return path


def _file_endpoint(entry: dict[str, Any], faults: Faults) -> EndpointConfig:
    entry = dict(entry)
    model = entry.pop("model", None)
    if isinstance(model, str) and ":" in model:
        model = Model.from_callable(load_callable(model))
    merged = {
        **{k: getattr(faults, k) for k in Faults.__dataclass_fields__},
        **entry.pop("faults", {}),
    }
    return EndpointConfig(model=model, faults=Faults(**merged), **entry)


def _with_flags(
    endpoint: EndpointConfig, args: argparse.Namespace, faults: Faults
) -> EndpointConfig:
    stopped = endpoint.start_stopped or args.start_stopped
    chosen = endpoint.faults if endpoint.faults != Faults() else faults
    return replace(
        endpoint, start_stopped=stopped, start_duration_s=args.start_duration, faults=chosen
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop."""
    config = build_config(args)
    asyncio.run(_serve(config, as_json=args.json))
    return 0


async def _serve(config: EmulatorConfig, *, as_json: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        async with Emulator(config) as emulator:
            _announce(emulator, as_json)
            await stop.wait()
    except OSError as exc:
        raise UsageError(f"emulate: cannot listen: {exc}") from None


def _announce(emulator: Emulator, as_json: bool) -> None:
    info = {
        "host": emulator.host,
        "data_plane_host": emulator.data_plane_host,
        "workspace_id": emulator.workspace_id,
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "token": emulator.personal_access_token,
        "endpoints": emulator.endpoints,
    }
    if as_json:
        sys.stdout.write(orjson.dumps(info).decode() + "\n")
    else:
        sys.stdout.write(_for_a_person(info))
    sys.stdout.flush()


def _for_a_person(info: dict[str, Any]) -> str:
    endpoints = info["endpoints"]
    first = "demo-regressor" if "demo-regressor" in endpoints else endpoints[0]
    return "\n".join(
        [
            f"Databricks serving emulator: workspace {info['host']}, data plane "
            f"{info['data_plane_host']} (workspace id {info['workspace_id']})",
            f"endpoints: {', '.join(endpoints)}",
            "",
            "Point the engine at it:",
            f"  export DATABRICKS_HOST={info['host']}",
            f"  export DATABRICKS_CLIENT_ID={info['client_id']}",
            f"  export DATABRICKS_CLIENT_SECRET={info['client_secret']}",
            f"  engine score data.parquet --endpoint {first} --output predictions.arrow",
            "",
            f"Counters: curl {info['host']}/debug/accounting    Stop: Ctrl-C",
            "",
        ]
    )
