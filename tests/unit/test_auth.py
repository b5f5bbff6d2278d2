"""Token timing rules and the single-flight refresher, with an injected clock: no sockets."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine.auth import OAuthClient
from engine.tokens import Token, TokenRefresher
from engine.config import Credentials
from engine.errors import AuthError, EngineError, UsageError
from engine.transport import Response


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_token(issued: float, ttl: float, text: str = "tok") -> Token:
    return Token(access_token=text, issued_at=issued, expires_at=issued + ttl)


def test_hour_token_is_unusable_in_its_last_40_seconds() -> None:
    token = make_token(0.0, 3600.0)
    assert token.usable(3559.9)
    assert not token.usable(3560.0)


def test_hour_token_refreshes_20_minutes_before_expiry() -> None:
    assert make_token(0.0, 3600.0).refresh_at == pytest.approx(2400.0)


def test_short_token_refreshes_before_it_becomes_unusable() -> None:
    token = make_token(0.0, 75.0)
    assert token.usable_until == pytest.approx(35.0)
    assert token.refresh_at <= token.usable_until - 10.0
    assert token.refresh_at > 0.0


def test_very_short_token_is_used_for_half_its_usable_life_before_the_refresh() -> None:
    token = make_token(0.0, 45.0)  # usable for 11.25 s (a quarter of its life)
    assert token.usable_until == pytest.approx(11.25)
    assert token.refresh_at == pytest.approx(11.25 / 2)  # not 1.25 s, as with 10 s headroom


def test_token_text_never_shows_in_repr() -> None:
    token = make_token(0.0, 60.0, text="s3cr3t-token")
    assert "s3cr3t-token" not in repr(token)
    assert token.header == {"Authorization": "Bearer s3cr3t-token"}


def test_credentials_repr_masks_the_secret_and_normalises_host() -> None:
    creds = Credentials(host="my-ws.cloud.databricks.com/", client_id="abc", client_secret="xyz-secret")
    assert creds.host == "https://my-ws.cloud.databricks.com"
    assert "xyz-secret" not in repr(creds)
    assert "xyz-secret" not in str(creds)


def test_missing_credentials_name_every_missing_setting() -> None:
    with pytest.raises(UsageError) as info:
        Credentials.from_env(env={"DATABRICKS_HOST": "h"})
    message = str(info.value)
    assert "DATABRICKS_CLIENT_ID" in message and "DATABRICKS_CLIENT_SECRET" in message
    assert "DATABRICKS_HOST" not in message


async def test_fifty_waiters_cause_one_fetch() -> None:
    clock = Clock()
    release = asyncio.Event()
    calls = 0

    async def fetch() -> Token:
        nonlocal calls
        calls += 1
        await release.wait()
        return make_token(clock.now, 3600.0, text=f"t{calls}")

    refresher = TokenRefresher(fetch, clock=clock)
    waiters = [asyncio.create_task(refresher.get()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    tokens = await asyncio.gather(*waiters)
    assert calls == 1
    assert {t.access_token for t in tokens} == {"t1"}


async def test_expired_token_is_replaced_on_next_get() -> None:
    clock = Clock()
    calls = 0

    async def fetch() -> Token:
        nonlocal calls
        calls += 1
        return make_token(clock.now, 100.0, text=f"t{calls}")

    refresher = TokenRefresher(fetch, clock=clock)
    assert (await refresher.get()).access_token == "t1"
    clock.now += 59.0  # usable until 100 - 40 = 60 s after issue
    assert (await refresher.get()).access_token == "t1"
    clock.now += 2.0
    assert (await refresher.get()).access_token == "t2"


async def test_invalidate_drops_only_the_current_token() -> None:
    clock = Clock()
    calls = 0

    async def fetch() -> Token:
        nonlocal calls
        calls += 1
        return make_token(clock.now, 3600.0, text=f"t{calls}")

    refresher = TokenRefresher(fetch, clock=clock)
    old = await refresher.get()
    refresher.invalidate(old)
    new = await refresher.get()
    assert new.access_token == "t2"
    refresher.invalidate(old)  # a late rejection of the old token must not drop the new one
    assert (await refresher.get()) is new
    assert calls == 2


async def test_background_refresh_replaces_token_before_it_is_unusable() -> None:
    clock = Clock()
    slept: list[float] = []
    calls = 0

    async def fetch() -> Token:
        nonlocal calls
        calls += 1
        return make_token(clock.now, 75.0, text=f"t{calls}")

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) >= 3:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    refresher = TokenRefresher(fetch, clock=clock, sleep=sleep)
    first = await refresher.get()
    with pytest.raises(asyncio.CancelledError):
        await refresher.run_background()
    assert calls >= 3
    # each background refresh happened while the previous token was still usable
    assert slept[0] == pytest.approx(first.refresh_at - first.issued_at)
    assert first.issued_at + slept[0] < first.usable_until


class ScriptedTokenEndpoint:
    """Answers token requests from a script; records how many came."""

    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.requests = 0

    async def request(self, method: str, url: str, **_: object) -> Response:
        self.requests += 1
        return self.answers.pop(0)


def token_answer(expires_in: float) -> Response:
    return Response(200, json.dumps({"access_token": "t", "expires_in": expires_in}).encode(), {})


def oauth_client(transport: ScriptedTokenEndpoint, clock: FakeSleepClock) -> OAuthClient:
    creds = Credentials(host="http://127.0.0.1:1", client_id="abc", client_secret="xyz-secret")
    return OAuthClient(transport, creds, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


class FakeSleepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_a_token_endpoint_answering_html_is_retried() -> None:
    clock = FakeSleepClock()
    endpoint = ScriptedTokenEndpoint(Response(200, b"<html>proxy</html>", {}), token_answer(3600))
    token = await oauth_client(endpoint, clock).workspace_token()
    assert token.lifetime_s == 3600 and endpoint.requests == 2


async def test_the_token_endpoint_is_retried_for_about_a_minute() -> None:
    clock = FakeSleepClock()
    endpoint = ScriptedTokenEndpoint(*[Response(503, b"{}", {})] * 100)
    with pytest.raises(EngineError, match="kept failing"):
        await oauth_client(endpoint, clock).workspace_token()
    assert 20.0 <= clock.now <= 60.0
    assert endpoint.requests >= 6


async def test_a_token_lifetime_under_the_refusal_margin_is_said_as_such() -> None:
    clock = FakeSleepClock()
    endpoint = ScriptedTokenEndpoint(token_answer(20))
    with pytest.raises(AuthError, match="valid for 20 s"):
        await oauth_client(endpoint, clock).workspace_token()


async def test_cancel_quietly_keeps_the_callers_own_cancellation() -> None:
    from engine.aio import cancel_quietly

    child = asyncio.ensure_future(asyncio.Event().wait())

    async def cleaner() -> str:
        try:
            await asyncio.Event().wait()
        finally:
            await cancel_quietly(child)
        return "finished"

    task = asyncio.ensure_future(cleaner())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert child.cancelled()
