"""Run the emulator: :class:`Emulator` (async context manager) and :class:`EmulatorThread`
(the same, on its own event loop in a background thread, for synchronous code).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

import pyarrow as pa
from aiohttp import web
from aiohttp.typedefs import Middleware

from engine.emulator import control, dataplane, files, mlflow, oauth
from engine.emulator.clock import Clock, Sleep
from engine.emulator.config import EmulatorConfig, Faults, TokenFaults
from engine.emulator.mlflow import MlflowStore
from engine.emulator.models import Model
from engine.emulator.runtime import EmulatorState, EndpointRuntime
from engine.emulator.web import STATE_KEY, control_latency_middleware, error_middleware

__all__ = ["Emulator", "EmulatorThread"]

T = TypeVar("T")
#: Slack over the payload limit so aiohttp lets the handler answer 413 itself for bodies
#: between the limit and this (aiohttp's own 413 is mapped to the same JSON shape).
_READ_SLACK_BYTES = 0


def _application(
    state: EmulatorState, add_routes: Callable[[web.Application], None], *extra: Middleware
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, *extra],
        client_max_size=state.config.max_payload_bytes + _READ_SLACK_BYTES,
    )
    app[STATE_KEY] = state
    add_routes(app)
    return app


def _control_routes(app: web.Application) -> None:
    oauth.add_routes(app)
    control.add_routes(app)
    mlflow.add_routes(app)  # before files: its artifact paths are more specific
    files.add_routes(app)


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1])


def _warm_up() -> None:
    """pyarrow's first conversion of Python values, made before either plane listens.

    It imports pandas when pandas is installed (0.24-0.35 s here). Left to the first request
    that converts values (the OpenAPI document's example rows, or an invocation), it was
    counted in the start-up of whichever client a benchmark timed against a fresh emulator.
    """
    pa.array([0.0])


class Emulator:
    """The local Databricks serving stand-in: control plane and data plane on two ports.

    Example:
        >>> async with Emulator(EmulatorConfig()) as emu:  # doctest: +SKIP
        ...     url = emu.endpoint_url("demo-regressor")

    Args:
        config: what to serve (default :class:`EmulatorConfig`).
        clock: monotonic seconds for token expiry, start/stop, the QPS bucket.
        sleep: how injected latency waits; defaults to ``clock.sleep`` when the clock has one
            (:class:`~engine.emulator.clock.FakeClock`), else ``asyncio.sleep``.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        chosen_clock: Clock = clock or time.monotonic
        chosen_sleep: Sleep = sleep or getattr(chosen_clock, "sleep", None) or asyncio.sleep
        self._state = EmulatorState(self.config, chosen_clock, chosen_sleep)
        self._runners: list[web.AppRunner] = []
        self.host = ""
        self.data_plane_host = ""

    async def start(self) -> Emulator:
        """Bind both planes (ports from the config; 0 picks free ones)."""
        _warm_up()
        bind = self.config.bind_host
        self._state.stopping.clear()
        control_runner, control_port = await _start(
            _application(self._state, _control_routes, control_latency_middleware),
            bind,
            self.config.port,
        )
        self._runners.append(control_runner)
        data_runner, data_port = await _start(
            _application(self._state, dataplane.add_routes), bind, self.config.data_plane_port
        )
        self._runners.append(data_runner)
        self.host = self._state.host = f"http://{bind}:{control_port}"
        self.data_plane_host = self._state.data_plane_host = f"http://{bind}:{data_port}"
        return self

    async def stop(self) -> None:
        """Drop hanging requests, then close both planes."""
        self._state.stopping.set()
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def workspace_id(self) -> str:
        """The workspace id (digits)."""
        return self.config.workspace_id

    @property
    def client_id(self) -> str:
        """The default (first) service principal's client id."""
        return self.config.principals[0].client_id

    @property
    def client_secret(self) -> str:
        """The default (first) service principal's secret."""
        return self.config.principals[0].client_secret

    @property
    def personal_access_token(self) -> str | None:
        """The default principal's personal access token (control plane only)."""
        return self.config.principals[0].personal_access_token

    @property
    def endpoints(self) -> list[str]:
        """The endpoint names."""
        return list(self._state.endpoints)

    def endpoint_url(self, name: str) -> str:
        """The route-optimized invocation URL of ``name``."""
        self._runtime(name)
        return self._state.endpoint_url(name)

    def endpoint_id(self, name: str) -> str:
        """The 32-hex id of ``name``."""
        return self._runtime(name).endpoint_id

    def model(self, name: str) -> Model:
        """The model served on endpoint ``name``."""
        return self._runtime(name).model

    def faults(self, name: str) -> Faults:
        """The faults now applied to ``name``."""
        return self._runtime(name).faults

    def set_faults(self, name: str, faults: Faults) -> None:
        """Change ``name``'s faults from now on."""
        self._runtime(name).set_faults(faults, self._state.clock())

    @property
    def mlflow(self) -> MlflowStore:
        """The MLflow tracking data the workspace holds, and how it lets artifacts be written
        (see :mod:`engine.emulator.mlflow`)."""
        return self._state.mlflow

    def set_token_faults(self, faults: TokenFaults) -> None:
        """Change the token endpoint's faults from now on."""
        self._state.token_faults = faults

    def stop_endpoint(self, name: str) -> None:
        """Stop ``name`` (as ``config:stop``)."""
        self._runtime(name).lifecycle.stop(self._state.clock(), name)

    def start_endpoint(self, name: str) -> None:
        """Start ``name`` (as ``config:start``): IN_PROGRESS, then READY after a while."""
        self._runtime(name).lifecycle.start(self._state.clock(), name)

    def endpoint_state(self, name: str) -> dict[str, Any]:
        """``{"ready", "config_update", "config_version"}`` of ``name`` now."""
        state = self._state.state_of(self._runtime(name))
        return {
            "ready": state.ready,
            "config_update": state.config_update,
            "config_version": state.config_version,
        }

    def accounting(self, name: str | None = None) -> dict[str, Any]:
        """Counters as plain dicts: one endpoint's, or all (see ``engine.emulator.accounting``)."""
        if name is not None:
            self._runtime(name)
        return self._state.snapshot(name)

    def reset_accounting(self) -> None:
        """Zero every counter."""
        self._state.accounting.reset()

    def _runtime(self, name: str) -> EndpointRuntime:
        try:
            return self._state.endpoints[name]
        except KeyError:
            raise KeyError(f"no endpoint {name!r}; the emulator serves {self.endpoints}") from None


class EmulatorThread:
    """An :class:`Emulator` on its own event loop in a daemon thread, for synchronous code.

    Use as a context manager; it has the same attributes and methods, each run on the
    emulator's loop.

    Example:
        >>> with EmulatorThread(EmulatorConfig()) as emu:  # doctest: +SKIP
        ...     requests.get(emu.host + "/.well-known/databricks-config")
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="engine-emulator", daemon=True
        )
        self._emulator = Emulator(config, clock, sleep)

    def start(self) -> EmulatorThread:
        """Start the thread and both planes."""
        self._thread.start()
        self._submit(self._emulator.start())
        return self

    def stop(self) -> None:
        """Close both planes and end the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._submit(self._emulator.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _submit(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the calling thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._emulator, name)
        if callable(attribute):
            return lambda *args: self._call(attribute, *args)
        return attribute
