"""Round trips before the first request (issue 12: a fast start is interpreter start plus the
network round trips, so no more of them than the calls' dependencies need).

Before any row is sent the engine needs the workspace token, the endpoint's description, its
OpenAPI schema and a data-plane token. The schema and the data-plane token both need only
the endpoint: they go together, one round trip instead of two. The emulator answers every
workspace REST call ``control_latency_ms`` late, as a real control plane answers in tens to
hundreds of milliseconds; at 0 ms a client making these calls one by one looks as fast as
one that overlaps them.

Emulator and engine share one virtual clock that moves only when the loop is idle
(tests/virtual_time.py): 200 ms of latency is exactly that, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.emulator import Emulator, EmulatorConfig, Faults, TokenFaults
from engine.errors import AuthError, SchemaError
from engine.prepare import _with_first_token
from engine.tokens import TokenRefresher
from engine.transport import Transport
from tests.virtual_time import CallLog, VirtualClock, score_on_virtual_clock, virtual_loop

LATENCY_S = 0.2
ROOT = Path(__file__).resolve().parents[2]


def test_the_schema_and_the_data_plane_token_are_fetched_in_one_round_trip(tmp_path) -> None:
    logs: list[CallLog] = []

    def transport(clock: VirtualClock) -> Transport:
        logs.append(CallLog(clock))
        return logs[0]

    done = score_on_virtual_clock(
        tmp_path,
        Faults(),
        rows=200,
        seed=3,
        transport=transport,
        emulator={
            "control_latency_ms": LATENCY_S * 1000,
            "token_faults": TokenFaults(latency_ms=LATENCY_S * 1000),
        },
    )
    assert done.predictions == done.expected
    calls = logs[0].calls
    start = min(sent for sent, *_ in calls)
    tokens = sorted((c for c in calls if c[3] == "/oidc/v1/token"), key=lambda c: c[0])
    (endpoint,) = [c for c in calls if c[3] == "/api/2.0/serving-endpoints/demo-regressor"]
    (schema,) = [c for c in calls if c[3].endswith("/openapi")]
    data_plane_token = tokens[1]  # after the workspace token (later ones: refreshes)
    assert endpoint[0] - start == pytest.approx(LATENCY_S, abs=0.01)
    # Both sent once the endpoint was described, together: the token does not wait for the
    # schema's answer (one round trip later, before).
    assert schema[0] == pytest.approx(endpoint[1], abs=0.01)
    assert data_plane_token[0] == pytest.approx(endpoint[1], abs=0.01)
    assert data_plane_token[0] < schema[1] - LATENCY_S / 2
    # The first row waits for both answers, no longer (the clock jumps while the input is
    # read on a thread, so the time of the first invocation itself says nothing here).
    first_invocation = min(sent for sent, *_ in logs[0].invocations)
    assert first_invocation >= max(schema[1], data_plane_token[1])


def test_the_emulator_answers_workspace_calls_late_and_nothing_else() -> None:
    clock = VirtualClock()

    async def timed() -> tuple[float, list[float]]:
        config = EmulatorConfig(control_latency_ms=LATENCY_S * 1000)
        emulator = Emulator(config, clock=clock, sleep=clock.sleep)
        async with emulator, Transport() as transport:
            started = clock()
            listed = await transport.request("GET", emulator.host + "/api/2.0/serving-endpoints")
            control_s = clock() - started
            assert listed.status == 401  # no token: still answered late
            others = []
            invocations = "/serving-endpoints/demo-regressor/invocations"
            for method, url in [
                ("GET", emulator.host + "/debug/accounting"),  # the control plane, not /api/
                ("POST", emulator.data_plane_host + invocations),  # the data plane
            ]:
                started = clock()
                await transport.request(method, url, data=b"{}")
                others.append(clock() - started)
            return control_s, others

    with asyncio.Runner(loop_factory=lambda: virtual_loop(clock)) as runner:
        control_s, others = runner.run(timed())
    assert control_s == pytest.approx(LATENCY_S, abs=0.01)
    assert max(others) < 0.01


@pytest.mark.parametrize("flag", ["--control-latency-ms", "--token-latency-ms"])
@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_latency_is_refused_in_one_line(flag: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "emulate", flag, value, "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 2
    assert "must not be negative" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # never started


def _token_request(
    events: list[str], *, outcome: BaseException | None, sent: asyncio.Event | None = None
) -> Any:
    """A token endpoint that fails at once with ``outcome``, or never answers (None)."""

    async def fetch() -> Any:
        events.append("sent")
        if sent is not None:
            sent.set()
        if outcome is not None:
            raise outcome
        try:
            await asyncio.Event().wait()  # never answered: it ends only if cancelled
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    return fetch


def _run_watching_unobserved(main: Any) -> list[dict[str, Any]]:
    """Run ``main()``; the errors asyncio would log as never retrieved."""
    unobserved: list[dict[str, Any]] = []

    async def watched() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unobserved.append(ctx))
        await main()
        gc.collect()  # a future never retrieved is logged when it is collected
        await asyncio.sleep(0)

    asyncio.run(watched())
    return unobserved


def test_a_schema_error_stops_the_token_request_and_is_the_one_shown() -> None:
    events: list[str] = []

    async def main() -> None:
        sent = asyncio.Event()

        async def bad_schema() -> Any:
            await sent.wait()  # the token request is under way
            raise SchemaError("column 'x' is missing")

        tokens = TokenRefresher(_token_request(events, outcome=None, sent=sent))
        with pytest.raises(SchemaError, match="column 'x'"):
            await _with_first_token(bad_schema(), tokens)
        # Ended by then: the shared fetch is shielded from its waiter, so cancelling the
        # waiter alone left the request running past the transport's close.
        assert events == ["sent", "cancelled"]

    assert _run_watching_unobserved(main) == []


def test_a_refused_token_under_a_schema_error_is_not_left_unobserved() -> None:
    events: list[str] = []

    async def main() -> None:
        sent = asyncio.Event()

        async def bad_schema() -> Any:
            await sent.wait()
            for _ in range(10):  # the refusal reaches the token's waiter first (3 loop turns)
                await asyncio.sleep(0)
            raise SchemaError("column 'x' is missing")

        tokens = TokenRefresher(_token_request(events, outcome=AuthError("refused"), sent=sent))
        with pytest.raises(SchemaError):
            await _with_first_token(bad_schema(), tokens)

    assert _run_watching_unobserved(main) == []
    assert events == ["sent"]


def test_a_cancelled_caller_stops_the_token_request() -> None:
    events: list[str] = []

    async def main() -> None:
        sent = asyncio.Event()
        tokens = TokenRefresher(_token_request(events, outcome=None, sent=sent))
        waiting = asyncio.ensure_future(_with_first_token(asyncio.Event().wait(), tokens))
        await sent.wait()
        waiting.cancel()  # a caller's timeout
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert events == ["sent", "cancelled"]

    assert _run_watching_unobserved(main) == []


def test_a_token_error_is_raised_once_the_schema_is_fine() -> None:
    async def fine() -> str:
        return "plan"

    tokens = TokenRefresher(_token_request([], outcome=AuthError("refused")))
    with pytest.raises(AuthError, match="refused"):
        asyncio.run(_with_first_token(fine(), tokens))  # type: ignore[arg-type]
