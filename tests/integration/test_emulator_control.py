"""The emulator's control plane: endpoint documents, OpenAPI, stop/start, logs, permissions,
error shapes, the workspace invocation URL, and the debug routes."""

from __future__ import annotations

import re

import orjson

from engine.emulator import EmulatorConfig, EndpointConfig, FakeClock, ServicePrincipal
from tests.conftest import EmuClient

API = "/api/2.0/serving-endpoints"


async def test_endpoint_document_has_every_field_the_engine_reads(emu_client: EmuClient) -> None:
    emu = emu_client.emu
    status, doc, response = await emu_client.get(
        f"{API}/demo-regressor", await emu_client.workspace_token()
    )
    assert status == 200 and response.content_type == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", doc["id"]) and doc["id"] == emu.endpoint_id(
        "demo-regressor"
    )
    url = f"{emu.data_plane_host}/{emu.workspace_id}/serving-endpoints/demo-regressor/invocations"
    assert doc["name"] == "demo-regressor" and doc["route_optimized"] is True
    assert doc["endpoint_url"] == url == emu.endpoint_url("demo-regressor")
    query_info = doc["data_plane_info"]["query_info"]
    assert query_info["endpoint_url"] == url
    assert orjson.loads(query_info["authorization_details"]) == [
        {
            "type": "workspace_permission",
            "object_type": "serving-endpoints",
            "object_path": f"/serving-endpoints/{doc['id']}",
            "actions": ["query_inference_endpoint"],
        }
    ]
    assert doc["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    entity = doc["config"]["served_entities"][0]
    assert (entity["name"], entity["entity_name"], entity["entity_version"]) == (
        "demo_regressor-1",
        "demo_regressor",
        "1",
    )
    assert entity["state"]["deployment"] == "DEPLOYMENT_READY"
    assert doc["config"]["traffic_config"]["routes"][0]["served_model_name"] == "demo_regressor-1"
    assert doc["config"]["config_version"] == 1
    assert doc["permission_level"] == "CAN_MANAGE"
    assert doc["creator"] and doc["creation_timestamp"] > 1_758_499_200_000  # after 2025-09-22


async def test_list_shows_the_endpoints_a_principal_may_see(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    limited = ServicePrincipal(
        client_id="l",
        client_secret="s",
        default_permission=None,
        permissions={"demo-text": "CAN_QUERY"},
    )
    emu = await emulator_factory(EmulatorConfig(principals=(ServicePrincipal(), limited)))
    client: EmuClient = emu_client_factory(emu)
    _, everything, _ = await client.get(API, await client.workspace_token())
    _, some, _ = await client.get(API, await client.workspace_token("l", "s"))
    assert [e["name"] for e in everything["endpoints"]] == [
        "demo-regressor",
        "demo-classifier",
        "demo-text",
    ]
    assert [e["name"] for e in some["endpoints"]] == ["demo-text"]
    status, error, _ = await client.get(
        f"{API}/demo-regressor", await client.workspace_token("l", "s")
    )
    assert (status, error["error_code"]) == (403, "PERMISSION_DENIED")


async def test_errors_use_the_databricks_shape_with_content_type(emu_client: EmuClient) -> None:
    token = await emu_client.workspace_token()
    status, error, response = await emu_client.get(f"{API}/nope", token)
    assert (status, error["error_code"], response.content_type) == (
        404,
        "RESOURCE_DOES_NOT_EXIST",
        "application/json",
    )
    assert "nope" in error["message"]
    status, error, _ = await emu_client.get("/api/2.0/not-a-thing", token)
    assert status == 404 and set(error) == {"error_code", "message"}
    status, error, _ = await emu_client.get(f"{API}/demo-text", None)
    assert (status, error["error_code"]) == (401, "UNAUTHENTICATED")


async def test_openapi_follows_the_signature_and_needs_ready(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    endpoint = EndpointConfig(name="demo-regressor", start_stopped=True, start_duration_s=10.0)
    emu = await emulator_factory(EmulatorConfig(endpoints=(endpoint,)), clock=clock)
    client: EmuClient = emu_client_factory(emu)
    token = await client.workspace_token()
    status, error, _ = await client.get(f"{API}/demo-regressor/openapi", token)
    assert (status, error["error_code"]) == (400, "INVALID_STATE")
    emu.start_endpoint("demo-regressor")
    assert (await client.get(f"{API}/demo-regressor/openapi", token))[0] == 400
    clock.advance(10.0)
    status, doc, _ = await client.get(f"{API}/demo-regressor/openapi", token)
    assert status == 200 and doc["info"] == {"title": "demo-regressor", "version": "2"}
    split = doc["paths"]["/served-models/demo_regressor-1/invocations"]["post"]["requestBody"][
        "content"
    ]["application/json"]["schema"]["oneOf"][0]["properties"]["dataframe_split"]["properties"]
    assert split["columns"]["items"]["enum"] == [*(f"x{i}" for i in range(8)), "count", "segment"]
    assert split["columns"]["description"] == "required fields: " + ", ".join(
        [*(f"x{i}" for i in range(8)), "count"]
    )


async def test_stop_and_start_over_rest_move_through_the_states(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    emu = await emulator_factory(
        EmulatorConfig(endpoints=(EndpointConfig(name="demo-text", start_duration_s=120.0),)),
        clock=clock,
    )
    client: EmuClient = emu_client_factory(emu)
    token = await client.workspace_token()
    body = {"inputs": {"text": ["a"]}}

    status, doc, _ = await client.post(f"{API}/demo-text/config:stop", token)
    assert status == 200 and doc["state"] == {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}
    status, error, _ = await client.invoke("demo-text", body)
    assert (status, error["error_code"]) == (400, "INVALID_STATE")
    assert "not ready" in error["message"] and "stopped" in error["message"]

    status, doc, _ = await client.post(f"{API}/demo-text/config:start", token)
    assert doc["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert doc["config"]["served_entities"][0]["state"]["deployment"] == "DEPLOYMENT_CREATING"
    status, error, _ = await client.invoke("demo-text", body)
    assert status == 400 and "IN_PROGRESS" in error["message"]
    status, error, _ = await client.post(f"{API}/demo-text/config:start", token)
    assert (status, error["error_code"]) == (400, "INVALID_STATE")

    clock.advance(120.0)
    _, doc, _ = await client.get(f"{API}/demo-text", token)
    assert doc["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert doc["config"]["config_version"] == 2
    assert (await client.invoke("demo-text", body))[0] == 200


async def test_stop_needs_can_manage(emulator_factory, emu_client_factory) -> None:  # type: ignore[no-untyped-def]
    querier = ServicePrincipal(client_id="q", client_secret="s", default_permission="CAN_QUERY")
    emu = await emulator_factory(EmulatorConfig(principals=(querier,)))
    client: EmuClient = emu_client_factory(emu)
    status, error, _ = await client.post(
        f"{API}/demo-text/config:stop", await client.workspace_token()
    )
    assert (status, error["error_code"]) == (403, "PERMISSION_DENIED")


async def test_logs_build_logs_and_permissions(emu_client: EmuClient) -> None:
    emu = emu_client.emu
    token = await emu_client.workspace_token()
    for kind in ("logs", "build-logs"):
        status, body, _ = await emu_client.get(
            f"{API}/demo-text/served-models/demo_text-1/{kind}", token
        )
        assert status == 200 and "demo_text" in body["logs"]
    status, _, _ = await emu_client.get(f"{API}/demo-text/served-models/other-1/logs", token)
    assert status == 404
    status, acl, _ = await emu_client.get(
        f"/api/2.0/permissions/serving-endpoints/{emu.endpoint_id('demo-text')}", token
    )
    assert (
        status == 200 and acl["access_control_list"][0]["service_principal_name"] == emu.client_id
    )
    assert acl["access_control_list"][0]["all_permissions"][0]["permission_level"] == "CAN_MANAGE"


async def test_workspace_url_is_refused_for_route_optimized_and_works_otherwise(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    config = EmulatorConfig(
        endpoints=(
            EndpointConfig(name="demo-text"),
            EndpointConfig(name="classic", model="demo-text", route_optimized=False),
        )
    )
    emu = await emulator_factory(config)
    client: EmuClient = emu_client_factory(emu)
    token = await client.workspace_token()
    body = {"inputs": {"text": ["abc"]}}
    status, error, _ = await client.post("/serving-endpoints/demo-text/invocations", token, body)
    assert (status, error["error_code"]) == (
        403,
        "PERMISSION_DENIED",
    ) and "route-optimized" in error["message"]
    status, result, response = await client.post(
        "/serving-endpoints/classic/invocations", token, body
    )
    assert status == 200 and result == {"predictions": [3.0]}
    assert response.headers["served-model-name"] == "demo_text-1"
    _, doc, _ = await client.get(f"{API}/classic", token)
    assert (
        doc["route_optimized"] is False
        and "endpoint_url" not in doc
        and "data_plane_info" not in doc
    )


async def test_debug_routes_show_and_reset_accounting_and_set_faults(emu_client: EmuClient) -> None:
    await emu_client.invoke("demo-text", {"inputs": {"text": ["a", "b"]}})
    status, snapshot, _ = await emu_client.get("/debug/accounting", None)
    text = snapshot["endpoints"]["demo-text"]
    assert (
        status == 200
        and text["requests_by_status"] == {"200": 1}
        and len(text["rows_delivered"]) == 2
    )
    status, one, _ = await emu_client.get("/debug/accounting?endpoint=demo-text", None)
    assert one["requests_total"] == 1
    await emu_client.post("/debug/reset", None)
    assert emu_client.emu.accounting("demo-text")["requests_total"] == 0
    status, _, _ = await emu_client.post("/debug/faults/demo-text", None, {"error_503_rate": 1.0})
    assert status == 200 and emu_client.emu.faults("demo-text").error_503_rate == 1.0
    assert (await emu_client.invoke("demo-text", {"inputs": {"text": ["a"]}}))[0] == 503
    status, error, _ = await emu_client.post("/debug/faults/demo-text", None, {"error_503_rate": 7})
    assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
