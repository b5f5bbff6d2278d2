"""Shared fixtures: the local Databricks emulator, started and stopped per test."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from engine.emulator import Emulator, EmulatorConfig
from engine.emulator.clock import Clock, Sleep

EmulatorFactory = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator with the default config (three demo endpoints, one principal)."""
    async with Emulator(EmulatorConfig()) as emu:
        yield emu


@pytest.fixture
async def emulator_factory() -> AsyncIterator[EmulatorFactory]:
    """``await emulator_factory(config, clock=..., sleep=...)`` -> a started emulator.

    Every emulator it started is stopped at teardown.
    """
    started: list[Emulator] = []

    async def make(
        config: EmulatorConfig | None = None,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> Emulator:
        emu = Emulator(config or EmulatorConfig(), clock=clock, sleep=sleep)
        await emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        await emu.stop()


class EmuClient:
    """A raw HTTP client for emulator tests: tokens, control-plane calls, invocations."""

    def __init__(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.session = session

    def basic(self, client_id: str | None = None, secret: str | None = None) -> str:
        pair = f"{client_id or self.emu.client_id}:{secret or self.emu.client_secret}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    async def token_request(
        self, form: dict[str, str], authorization: str | None = None
    ) -> tuple[int, dict[str, Any], str]:
        headers = {"Authorization": authorization} if authorization else {}
        async with self.session.post(
            self.emu.host + "/oidc/v1/token", data=form, headers=headers
        ) as r:
            return r.status, orjson.loads(await r.read()), r.content_type

    async def workspace_token(self, client_id: str | None = None, secret: str | None = None) -> str:
        status, body, _ = await self.token_request(
            {"grant_type": "client_credentials", "scope": "all-apis"}, self.basic(client_id, secret)
        )
        assert status == 200, body
        return str(body["access_token"])

    def details(self, name: str, action: str = "query_inference_endpoint") -> str:
        entry = {
            "type": "workspace_permission",
            "object_type": "serving-endpoints",
            "object_path": f"/serving-endpoints/{self.emu.endpoint_id(name)}",
            "actions": [action],
        }
        return orjson.dumps([entry]).decode()

    async def data_plane_token(
        self, name: str, client_id: str | None = None, secret: str | None = None
    ) -> str:
        form = {
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "authorization_details": self.details(name),
        }
        status, body, _ = await self.token_request(form, self.basic(client_id, secret))
        assert status == 200, body
        return str(body["access_token"])

    async def get(self, path: str, token: str | None) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.emu.host + path, headers=headers) as r:
            return r.status, orjson.loads(await r.read()), r

    async def post(
        self, path: str, token: str | None, body: Any = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.post(self.emu.host + path, headers=headers, json=body) as r:
            return r.status, orjson.loads(await r.read()), r

    async def invoke(
        self, name: str, body: Any, token: str | None = None, *, url: str | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """POST ``body`` (bytes, or JSON-encoded) to the endpoint's data-plane URL."""
        token = token or await self.data_plane_token(name)
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with self.session.post(
            url or self.emu.endpoint_url(name), data=data, headers=headers
        ) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw else None, r


@pytest.fixture
async def emu_client_factory() -> AsyncIterator[Callable[[Emulator], EmuClient]]:
    """``emu_client_factory(emu)`` -> an :class:`EmuClient`; sessions closed at teardown."""
    sessions: list[aiohttp.ClientSession] = []

    def make(emu: Emulator) -> EmuClient:
        session = aiohttp.ClientSession()
        sessions.append(session)
        return EmuClient(emu, session)

    yield make
    for session in sessions:
        await session.close()


@pytest.fixture
async def emu_client(
    emulator: Emulator, emu_client_factory: Callable[[Emulator], EmuClient]
) -> EmuClient:
    """An :class:`EmuClient` on the default ``emulator``."""
    return emu_client_factory(emulator)
