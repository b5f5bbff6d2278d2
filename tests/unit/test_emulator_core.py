"""The emulator's pure core: token rules, fault plan, QPS bucket, lifecycle, models, OpenAPI."""

from __future__ import annotations

import email.utils

import numpy as np
import orjson
import pyarrow as pa
import pytest

from engine.emulator import POISON_TEXT, POISON_VALUE, FakeClock, Faults, Model, Signature
from engine.emulator.apierror import ApiError, OAuthError
from engine.emulator.config import EmulatorConfig, TokenFaults
from engine.emulator.dataplane import retry_after_header
from engine.emulator.lifecycle import Lifecycle
from engine.emulator.models import BUILTIN_MODELS, find_poison
from engine.emulator.openapi import openapi_document
from engine.emulator.plan import TokenBucket, plan_request, plan_token_request
from engine.emulator.tokens import (
    TokenStore,
    TokenVerdict,
    authorization_details,
    parse_authorization_details,
    verdict_error,
)

# ---- tokens -----------------------------------------------------------------------------


def test_token_is_ok_until_thirty_seconds_before_expiry_then_expiring_then_expired() -> None:
    store = TokenStore(ttl_s=100.0)
    token = store.issue("workspace", "sp", now=0.0)
    assert store.check(token.access_token, 69.9)[0] is TokenVerdict.OK
    assert store.check(token.access_token, 70.0)[0] is TokenVerdict.EXPIRING
    assert store.check(token.access_token, 100.0)[0] is TokenVerdict.EXPIRED
    assert store.check("nope", 0.0) == (TokenVerdict.UNKNOWN, None)


def test_token_verdicts_map_to_401_and_403_with_databricks_messages() -> None:
    store = TokenStore(ttl_s=100.0)
    token = store.issue("workspace", "sp", now=0.0)
    unknown = verdict_error(TokenVerdict.UNKNOWN, None, 0.0)
    expiring = verdict_error(TokenVerdict.EXPIRING, token, 80.0)
    expired = verdict_error(TokenVerdict.EXPIRED, token, 150.0)
    assert unknown is not None and unknown.status == 401
    assert expiring is not None and expiring.status == 403
    assert "Token is expiring within 30 seconds" in expiring.message
    assert expired is not None and expired.status == 403 and "expired" in expired.message
    assert verdict_error(TokenVerdict.OK, token, 0.0) is None


def test_token_response_counts_expires_in_from_now() -> None:
    store = TokenStore(ttl_s=3600.0)
    token = store.issue("data_plane", "sp", now=10.0, endpoint_id="e" * 32)
    body = store.response(token, now=10.0)
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert token.endpoint_id == "e" * 32


def test_authorization_details_round_trip_and_bad_entries_are_invalid_request() -> None:
    grants = parse_authorization_details(authorization_details("a" * 32))
    assert [(g.endpoint_id, g.actions) for g in grants] == [
        ("a" * 32, ("query_inference_endpoint",))
    ]
    for bad in ("not json", "[]", '[{"type": "other"}]'):
        with pytest.raises(OAuthError) as info:
            parse_authorization_details(bad)
        assert info.value.error == "invalid_request"


# ---- fault plan and bucket --------------------------------------------------------------


def test_plan_is_a_function_of_seed_and_request_number() -> None:
    faults = Faults(seed=3, error_503_rate=0.3, reset_after_rate=0.2, jitter_ms=50.0)
    first = [plan_request(faults, n) for n in range(200)]
    assert first == [plan_request(faults, n) for n in range(200)]
    assert first != [plan_request(Faults(seed=4, error_503_rate=0.3), n) for n in range(200)]


def test_plan_rates_are_roughly_the_configured_ones() -> None:
    faults = Faults(
        seed=1, error_500_rate=0.1, error_503_rate=0.2, reset_before_rate=0.1, reset_after_rate=0.5
    )
    outcomes = [plan_request(faults, n).outcome for n in range(5000)]
    share = {o: outcomes.count(o) / 5000 for o in set(outcomes)}
    assert share["error_500"] == pytest.approx(0.1, abs=0.02)
    assert share["error_503"] == pytest.approx(0.2, abs=0.02)
    assert share["reset_before"] == pytest.approx(0.1, abs=0.02)
    assert share["reset_after"] == pytest.approx(0.6 * 0.5, abs=0.03)


def test_latency_is_fixed_plus_jitter_plus_tail() -> None:
    faults = Faults(seed=2, latency_ms=100.0, jitter_ms=20.0, tail_prob=0.1, tail_ms=1000.0)
    latencies = [plan_request(faults, n).latency_s for n in range(2000)]
    normal = [s for s in latencies if s < 0.5]
    tail = [s for s in latencies if s >= 0.5]
    assert all(0.1 <= s < 0.12 for s in normal)
    assert all(1.1 <= s < 1.12 for s in tail)
    assert len(tail) / 2000 == pytest.approx(0.1, abs=0.03)


def test_token_plan_errors_and_timeouts() -> None:
    faults = TokenFaults(seed=5, error_rate=0.5, timeout_rate=0.25, timeout_s=9.0, latency_ms=10.0)
    plans = [plan_token_request(faults, n) for n in range(2000)]
    outcomes = [p.outcome for p in plans]
    assert outcomes.count("timeout") / 2000 == pytest.approx(0.25, abs=0.04)
    assert outcomes.count("error") / 2000 == pytest.approx(0.5, abs=0.04)
    assert {p.latency_s for p in plans if p.outcome == "timeout"} == {9.0}
    assert {p.latency_s for p in plans if p.outcome != "timeout"} == {0.01}


def test_token_bucket_grants_burst_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0


def test_retry_after_header_forms() -> None:
    assert retry_after_header(Faults(retry_after="seconds"), 0.2, 0.0) == {"Retry-After": "1"}
    assert retry_after_header(Faults(retry_after="seconds"), 2.1, 0.0) == {"Retry-After": "3"}
    assert retry_after_header(Faults(retry_after=None), 2.1, 0.0) == {}
    date = retry_after_header(Faults(retry_after="date"), 1.5, 1_700_000_000.0)["Retry-After"]
    assert email.utils.parsedate_to_datetime(date).timestamp() == 1_700_000_002.0


@pytest.mark.parametrize(
    "bad",
    [
        {"error_500_rate": 1.5},
        {"latency_ms": -1.0},
        {"qps_limit": 0.0},
        {"max_concurrency": 0},
        {"error_500_rate": 0.6, "error_503_rate": 0.6},
    ],
)
def test_faults_refuse_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Faults(**bad)  # type: ignore[arg-type]


# ---- lifecycle --------------------------------------------------------------------------


def test_stop_then_start_goes_in_progress_then_ready_with_a_new_config_version() -> None:
    clock = FakeClock()
    life = Lifecycle(stopped=False, start_duration_s=30.0)
    assert life.state(clock()).ready == "READY"
    stopped = life.stop(clock(), "e")
    assert (stopped.ready, stopped.config_update) == ("NOT_READY", "NOT_UPDATING")
    starting = life.start(clock(), "e")
    assert (starting.ready, starting.config_update, starting.config_version) == (
        "NOT_READY",
        "IN_PROGRESS",
        2,
    )
    clock.advance(29.9)
    assert life.state(clock()).config_update == "IN_PROGRESS"
    clock.advance(0.1)
    ready = life.state(clock())
    assert (ready.ready, ready.config_update, ready.deployment) == (
        "READY",
        "NOT_UPDATING",
        "DEPLOYMENT_READY",
    )


def test_starting_a_running_endpoint_or_stopping_a_stopped_one_is_invalid_state() -> None:
    life = Lifecycle(stopped=True, start_duration_s=1.0)
    with pytest.raises(ApiError) as stop_info:
        life.stop(0.0, "e")
    life.start(0.0, "e")
    with pytest.raises(ApiError) as start_info:
        life.start(0.5, "e")
    assert stop_info.value.error_code == start_info.value.error_code == "INVALID_STATE"


# ---- models ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_predictions_do_not_depend_on_batching(name: str) -> None:
    model = BUILTIN_MODELS[name]
    table = model.sample(1000, seed=11)
    whole = pa.array(model.predict(table)).to_pylist()
    pieces = [pa.array(model.predict(table.slice(s, 137))).to_pylist() for s in range(0, 1000, 137)]
    assert whole == [p for piece in pieces for p in piece]


def test_regressor_is_the_documented_linear_formula() -> None:
    model = BUILTIN_MODELS["demo-regressor"]
    row = {f"x{i}": [1.0] for i in range(8)} | {"count": [100], "segment": ["gamma"]}
    table = pa.table(row, schema=model.signature.arrow_schema())
    expected = 3.0 + (0.5 - 1.25 + 2.0 + 0.75 - 0.5 + 1.5 - 2.25 + 0.125) + 1.0 + 2.5
    assert model.predict(table)[0] == pytest.approx(expected)


def test_classifier_returns_label_and_probabilities_summing_to_one() -> None:
    model = BUILTIN_MODELS["demo-classifier"]
    for prediction in model.predict(model.sample(50, seed=1)):
        assert prediction["label"] in ("low", "mid", "high")
        assert sum(prediction["probabilities"]) == pytest.approx(1.0)
        best = int(np.argmax(prediction["probabilities"]))
        assert ("low", "mid", "high")[best] == prediction["label"]


def test_text_model_uses_its_scale_param() -> None:
    model = BUILTIN_MODELS["demo-text"]
    table = pa.table(
        {"text": ["eee", "ab"], "boost": [1, None]}, schema=model.signature.arrow_schema()
    )
    assert list(model.predict(table)) == [10.0, 2.0]
    assert list(model.predict(table, {"scale": 2.0})) == [19.0, 4.0]


def test_samples_repeat_for_a_seed_and_hold_no_poison() -> None:
    model = BUILTIN_MODELS["demo-regressor"]
    assert model.sample(100, seed=5).equals(model.sample(100, seed=5))
    assert not model.sample(100, seed=5).equals(model.sample(100, seed=6))
    assert find_poison(model.sample(1000, seed=5)) is None


def test_find_poison_names_the_column_and_row() -> None:
    table = pa.table({"a": [1.0, float(POISON_VALUE)], "s": ["x", "y"]})
    assert find_poison(table) == "column 'a' holds the poison value -999999 at row 1"
    assert "at row 0" in str(find_poison(pa.table({"s": [POISON_TEXT]})))


def test_user_callable_with_declared_signature_and_polars_input() -> None:
    def doubled(frame):  # type: ignore[no-untyped-def]
        return (frame["v"] * 2).to_list()

    doubled.signature = {"v": "double"}  # type: ignore[attr-defined]
    doubled.input_format = "polars"  # type: ignore[attr-defined]
    model = Model.from_callable(doubled)
    assert model.name == "doubled" and model.signature.names == ("v",)
    assert model.predict(pa.table({"v": [1.0, 2.5]})) == [2.0, 5.0]


def test_user_callable_signature_inferred_from_a_sample_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"n": pa.array([1], pa.int64()), "x": [0.5], "t": ["a"]}), tmp_path / "s.parquet"
    )
    model = Model.from_callable(lambda t: t.column("x"), name="m", sample=tmp_path / "s.parquet")
    assert [(c.name, c.type) for c in model.signature.columns] == [
        ("n", "long"),
        ("x", "double"),
        ("t", "string"),
    ]
    with pytest.raises(ValueError, match="no signature"):
        Model.from_callable(lambda t: t)


def test_model_returning_wrong_length_is_an_error() -> None:
    model = Model("m", Signature.of({"v": "double"}), lambda t: [1.0])
    with pytest.raises(ValueError, match="1 predictions for 2 rows"):
        model.predict(pa.table({"v": [1.0, 2.0]}))


# ---- OpenAPI ----------------------------------------------------------------------------


def test_openapi_matches_the_documented_shape() -> None:
    model = BUILTIN_MODELS["demo-text"]
    doc = openapi_document(
        endpoint="demo-text",
        workspace_host="http://h",
        served_name="demo_text-1",
        config_version=3,
        model=model,
    )
    assert doc["openapi"] == "3.1.0" and doc["info"] == {"title": "demo-text", "version": "3"}
    assert doc["servers"] == [{"url": "http://h/serving-endpoints/demo-text"}]
    post = doc["paths"]["/served-models/demo_text-1/invocations"]["post"]
    split, records = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    columns = split["properties"]["dataframe_split"]["properties"]["columns"]
    assert columns == {
        "description": "required fields: text",
        "type": "array",
        "items": {"type": "string", "enum": ["text", "boost"]},
    }
    prefix = split["properties"]["dataframe_split"]["properties"]["data"]["items"]["prefixItems"]
    assert prefix == [{"type": "string"}, {"type": "integer", "format": "int64"}]
    assert split["properties"]["params"] == {
        "type": "object",
        "properties": {"scale": {"type": "number", "format": "double", "default": "1.0"}},
    }
    assert (
        split["examples"][0]["columns"] == ["text", "boost"]
        and len(split["examples"][0]["data"]) == 2
    )
    items = records["properties"]["dataframe_records"]["items"]
    assert items["required"] == ["text"]
    assert items["properties"]["boost"] == {"type": "integer", "format": "int64"}
    predictions = post["responses"]["200"]["content"]["application/json"]["schema"]["properties"][
        "predictions"
    ]
    assert predictions == {"type": "array", "items": {"type": "number", "format": "double"}}
    orjson.dumps(doc)  # JSON-serialisable as is


@pytest.mark.parametrize(
    ("mlflow", "schema"),
    [
        ("integer", {"type": "integer", "format": "int32"}),
        ("long", {"type": "integer", "format": "int64"}),
        ("float", {"type": "number", "format": "float"}),
        ("double", {"type": "number", "format": "double"}),
        ("string", {"type": "string"}),
        ("boolean", {"type": "boolean"}),
        ("binary", {"type": "string", "format": "binary"}),
        ("datetime", {"type": "string", "format": "date-time"}),
        ("array<long>", {"type": "array", "items": {"type": "integer", "format": "int64"}}),
    ],
)
def test_openapi_prefix_items_per_column_type(mlflow: str, schema: dict[str, object]) -> None:
    model = Model("m", Signature.of({"c": mlflow}), lambda t: [0.0] * t.num_rows)
    doc = openapi_document(
        endpoint="e", workspace_host="h", served_name="m-1", config_version=1, model=model
    )
    split = doc["paths"]["/served-models/m-1/invocations"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["oneOf"][0]
    assert split["properties"]["dataframe_split"]["properties"]["data"]["items"]["prefixItems"] == [
        schema
    ]
    assert "params" not in split["properties"]


def test_default_config_serves_the_three_demo_endpoints() -> None:
    config = EmulatorConfig()
    assert [e.name for e in config.endpoints] == ["demo-regressor", "demo-classifier", "demo-text"]
    assert all(e.route_optimized and len(e.endpoint_id()) == 32 for e in config.endpoints)
    with pytest.raises(ValueError):
        EmulatorConfig(endpoints=(config.endpoints[0], config.endpoints[0]))
