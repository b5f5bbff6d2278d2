"""The emulator's OAuth rules over HTTP: grants, errors, expiry (on a FakeClock), token faults."""

from __future__ import annotations

import aiohttp
import pytest

from engine.emulator import EmulatorConfig, FakeClock, ServicePrincipal, TokenFaults
from tests.conftest import EmuClient

JWT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


async def test_discovery_documents_point_at_the_token_endpoint(emu_client: EmuClient) -> None:
    emu = emu_client.emu
    _, config, _ = await emu_client.get("/.well-known/databricks-config", None)
    _, server, _ = await emu_client.get("/oidc/.well-known/oauth-authorization-server", None)
    assert config == {"oidc_endpoint": f"{emu.host}/oidc", "workspace_id": emu.workspace_id}
    assert server["token_endpoint"] == f"{emu.host}/oidc/v1/token"


async def test_client_credentials_by_basic_auth_or_form_fields(emu_client: EmuClient) -> None:
    emu = emu_client.emu
    form = {"grant_type": "client_credentials", "scope": "all-apis"}
    status, body, content_type = await emu_client.token_request(form, emu_client.basic())
    assert (status, content_type, body["token_type"], body["expires_in"]) == (
        200,
        "application/json",
        "Bearer",
        3600,
    )
    fields = form | {"client_id": emu.client_id, "client_secret": emu.client_secret}
    assert (await emu_client.token_request(fields))[0] == 200
    assert emu.accounting()["tokens_issued"] == {"workspace": 2, "data_plane": 0}


async def test_bad_secret_or_unknown_client_is_401_invalid_client_json(
    emu_client: EmuClient,
) -> None:
    form = {"grant_type": "client_credentials", "scope": "all-apis"}
    for auth in (emu_client.basic(secret="wrong"), emu_client.basic(client_id="nobody")):
        status, body, content_type = await emu_client.token_request(form, auth)
        assert (status, body["error"], content_type) == (401, "invalid_client", "application/json")
    assert emu_client.emu.accounting()["token_requests_by_status"] == {401: 2}


async def test_one_step_and_jwt_exchange_give_endpoint_scoped_tokens(emu_client: EmuClient) -> None:
    workspace = await emu_client.workspace_token()
    form = {
        "grant_type": JWT,
        "assertion": workspace,
        "authorization_details": emu_client.details("demo-text"),
    }
    status, body, _ = await emu_client.token_request(form)
    assert status == 200
    ok, _, response = await emu_client.invoke(
        "demo-text", {"inputs": {"text": ["a"]}}, body["access_token"]
    )
    assert ok == 200 and response.headers["served-model-name"] == "demo_text-1"
    one_step = await emu_client.data_plane_token("demo-text")
    assert (await emu_client.invoke("demo-text", {"inputs": {"text": ["a"]}}, one_step))[0] == 200
    assert emu_client.emu.accounting()["tokens_issued"] == {"workspace": 1, "data_plane": 2}


async def test_jwt_exchange_refuses_unknown_or_data_plane_assertions(emu_client: EmuClient) -> None:
    details = emu_client.details("demo-text")
    data_plane = await emu_client.data_plane_token("demo-text")
    for assertion in ("garbage", data_plane):
        status, body, _ = await emu_client.token_request(
            {"grant_type": JWT, "assertion": assertion, "authorization_details": details}
        )
        assert (status, body["error"]) == (400, "invalid_grant")


async def test_principal_without_can_query_gets_invalid_authorization_details(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    viewer = ServicePrincipal(client_id="viewer", client_secret="s", default_permission="CAN_VIEW")
    querier = ServicePrincipal(
        client_id="querier", client_secret="s", default_permission="CAN_QUERY"
    )
    emu = await emulator_factory(EmulatorConfig(principals=(ServicePrincipal(), viewer, querier)))
    client: EmuClient = emu_client_factory(emu)
    query = {
        "grant_type": "client_credentials",
        "authorization_details": client.details("demo-regressor"),
    }
    manage = query | {
        "authorization_details": client.details("demo-regressor", "manage_inference_endpoint")
    }
    refused = {
        "error": "invalid_authorization_details",
        "error_description": "User is not authorized to the requested authorizations",
    }
    assert (await client.token_request(query, client.basic("viewer", "s")))[:2] == (400, refused)
    assert (await client.token_request(query, client.basic("querier", "s")))[0] == 200
    assert (await client.token_request(manage, client.basic("querier", "s")))[:2] == (400, refused)
    assert (await client.token_request(manage, client.basic()))[0] == 200


async def test_unknown_grant_and_scope_are_refused(emu_client: EmuClient) -> None:
    status, body, _ = await emu_client.token_request({"grant_type": "password"}, emu_client.basic())
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body, _ = await emu_client.token_request(
        {"grant_type": "client_credentials", "scope": "sql"}, emu_client.basic()
    )
    assert (status, body["error"]) == (400, "invalid_scope")


async def test_unknown_token_is_401_on_both_planes(emu_client: EmuClient) -> None:
    status, body, _ = await emu_client.get("/api/2.0/serving-endpoints", "nope")
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    status, body, _ = await emu_client.invoke("demo-text", {"inputs": {"text": ["a"]}}, "nope")
    assert status == 401


async def test_tokens_expire_on_the_emulator_clock(emulator_factory, emu_client_factory) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    emu = await emulator_factory(EmulatorConfig(token_ttl_s=100.0), clock=clock)
    client: EmuClient = emu_client_factory(emu)
    workspace = await client.workspace_token()
    data_plane = await client.data_plane_token("demo-text")
    body = {"inputs": {"text": ["a"]}}
    clock.advance(69.0)
    assert (await client.get("/api/2.0/serving-endpoints", workspace))[0] == 200
    assert (await client.invoke("demo-text", body, data_plane))[0] == 200
    clock.advance(2.0)  # 29 s left: "expiring"
    status, error, _ = await client.get("/api/2.0/serving-endpoints", workspace)
    assert status == 403 and "Token is expiring within 30 seconds" in error["message"]
    status, error, _ = await client.invoke("demo-text", body, data_plane)
    assert status == 403 and "Token is expiring within 30 seconds" in error["message"]
    clock.advance(60.0)
    status, error, _ = await client.invoke("demo-text", body, data_plane)
    assert status == 403 and "expired" in error["message"]
    accounting = emu.accounting()
    assert accounting["expiring_token_requests"] == 3
    assert accounting["endpoints"]["demo-text"]["expiring_token_requests"] == 2


async def test_workspace_token_on_data_plane_and_other_endpoint_token_are_403(
    emu_client: EmuClient,
) -> None:
    body = {"inputs": {"text": ["a"]}}
    workspace = await emu_client.workspace_token()
    status, error, _ = await emu_client.invoke("demo-text", body, workspace)
    assert (status, error["error_code"]) == (403, "PERMISSION_DENIED")
    other = await emu_client.data_plane_token("demo-regressor")
    status, error, _ = await emu_client.invoke("demo-text", body, other)
    assert status == 403 and "another endpoint" in error["message"]
    status, _, _ = await emu_client.get("/api/2.0/serving-endpoints", other)
    assert status == 403


async def test_token_endpoint_errors_and_latency_follow_token_faults(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    faults = TokenFaults(seed=1, error_rate=0.5, latency_ms=250.0)
    emu = await emulator_factory(EmulatorConfig(token_faults=faults), clock=clock)
    client: EmuClient = emu_client_factory(emu)
    form = {"grant_type": "client_credentials"}
    statuses = [(await client.token_request(form, client.basic()))[0] for _ in range(40)]
    assert set(statuses) == {200, 503} and 8 <= statuses.count(503) <= 32
    assert clock.slept == [0.25] * 40
    _, body, content_type = next(
        r
        for r in [await client.token_request(form, client.basic()) for _ in range(10)]
        if r[0] == 503
    )
    assert (body["error"], content_type) == ("temporarily_unavailable", "application/json")


async def test_token_timeouts_drop_the_connection_after_hanging(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    emu = await emulator_factory(
        EmulatorConfig(token_faults=TokenFaults(timeout_rate=1.0, timeout_s=45.0)), clock=clock
    )
    client: EmuClient = emu_client_factory(emu)
    with pytest.raises(aiohttp.ClientError):
        await client.token_request({"grant_type": "client_credentials"}, client.basic())
    assert clock.slept == [45.0]
    assert emu.accounting()["token_timeouts"] == 1
    emu.set_token_faults(TokenFaults())
    assert await client.workspace_token()
