"""Everything before the first row is sent: the endpoint found (started, waited for), its
schema planned against the input, the first token fetched; :func:`prepare` returns the
:class:`~engine.pipeline.Scorer` that :func:`engine.pipeline.run` drives.

What an endpoint asks of an input is worked out in one place, :func:`plan_input`: its OpenAPI
document is fetched and parsed (:meth:`~engine.workspace.Workspace.get_model`), a CSV input's
columns are read as the endpoint's types, and the input's columns are checked and planned
against the model's (:func:`~engine.schema.plan_cast`). ``engine score`` (:func:`prepare`),
``engine validate`` and Spark's driver all go this way, so they agree on what fits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from engine.aio import cancel_and_drop
from engine.auth import connect
from engine.clock import Clock, Sleep
from engine.config import Credentials, ScoreConfig
from engine.errors import EndpointError, EndpointNotReady, UsageError
from engine.pipeline import Scorer
from engine.schema import CastPlan, ModelSchema, plan_cast
from engine.source import Source
from engine.tokens import TokenRefresher
from engine.transport import Transport
from engine.workspace import EndpointInfo, Workspace

__all__ = ["InputPlan", "check_served_model", "csv_read_types", "plan_input", "prepare"]

log = logging.getLogger("engine.pipeline")  # the name these messages always had

#: How long --start-if-stopped waits for READY unless --wait-ready says otherwise.
DEFAULT_START_WAIT_S = 1800.0


async def prepare(
    source: Source,
    credentials: Credentials,
    config: ScoreConfig,
    transport: Transport,
    *,
    start_if_stopped: bool = False,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> Scorer:
    """Discover the endpoint, check the schema, fetch the first token: no row is sent yet.

    ``clock`` and ``sleep`` drive every timing decision (token expiry, backoff, pacing); tests
    inject a faster clock to live through token lifetimes in seconds.
    """
    auth = await connect(
        transport, credentials, timeout_s=config.token_timeout_s, clock=clock, sleep=sleep
    )
    workspace = Workspace(transport, auth, clock=clock, sleep=sleep)
    endpoint = await _ready_endpoint(workspace, config, start_if_stopped)
    check_served_model(endpoint, config.served_model)
    if endpoint.endpoint_url:
        credentials.require_oauth()  # a PAT cannot query a route-optimized endpoint
        authorization = endpoint.data_plane_authorization_details()
        tokens = TokenRefresher(
            lambda: auth.data_plane_token(authorization, config.endpoint),
            clock=clock,
            sleep=sleep,
            name="data-plane token",
        )
    else:
        log.warning(
            "endpoint '%s' is not route-optimized: scoring through the workspace URL, which "
            "Databricks documents at about 200 queries/s per workspace; a route-optimized "
            "endpoint is faster",
            config.endpoint,
        )
        tokens = workspace.tokens  # the workspace token (OAuth or a PAT) queries it
    # Both need only the endpoint: the schema and the first token come in one round trip,
    # not two. The token refuses bad credentials or a missing CAN_QUERY before any row is
    # read; a schema error is still the one shown when both fail.
    plan = await _with_first_token(plan_input(workspace, config.endpoint, source), tokens)
    if plan.model is None:
        log.warning(
            "endpoint '%s' publishes no input schema (no model signature?): "
            "sending the input columns as they are",
            config.endpoint,
        )
    kept = _kept_columns(plan.input_schema, config.keep)
    wanted = set(plan.cast.columns) | set(kept)
    read_columns = tuple(name for name in plan.input_schema.names if name in wanted)
    return Scorer(
        config,
        endpoint,
        plan.model,
        plan.cast,
        kept,
        read_columns,
        tokens,
        workspace,
        clock=clock,
        sleep=sleep,
        read_types=plan.read_types,
        input_schema=plan.input_schema,
    )


async def _with_first_token(planning: Awaitable[InputPlan], tokens: TokenRefresher) -> InputPlan:
    """``planning``'s plan, once ``tokens`` also holds its first token (fetched meanwhile).

    Raises ``planning``'s error if it fails, or if the caller is cancelled meanwhile (the
    token request is then stopped, whatever its own outcome), else the token fetch's.
    """
    fetch = asyncio.ensure_future(tokens.get())
    try:
        plan = await planning
    except BaseException:  # the schema's error (or the caller's cancellation) is the one
        await cancel_and_drop(fetch)  # this wait for the token only: ``get`` shields...
        await tokens.cancel_fetch()  # ...the request itself, stopped here
        raise
    await fetch
    return plan


@dataclass(frozen=True, slots=True)
class InputPlan:
    """How an input meets an endpoint.

    Attributes:
        model: the endpoint's parsed schema; ``None`` when it publishes none.
        read_types: for a CSV input, the type each model column is read as (else empty).
        input_schema: the input's schema as read (CSV columns typed as ``read_types``).
        cast: the checked plan from ``input_schema`` to the model's columns.
    """

    model: ModelSchema | None
    read_types: dict[str, pa.DataType]
    input_schema: pa.Schema
    cast: CastPlan


async def plan_input(workspace: Workspace, endpoint: str, inputs: Source | pa.Schema) -> InputPlan:
    """Fetch and parse ``endpoint``'s schema and plan ``inputs`` (a source, or a schema of
    rows that arrive later, as on Spark) against it.

    Raises:
        SchemaError: listing every missing or incompatible column.
    """
    model = await workspace.get_model(endpoint)
    if isinstance(inputs, Source):
        read_types = csv_read_types(inputs, model)
        input_schema = inputs.typed_as(read_types)
    else:
        read_types, input_schema = {}, inputs
    return InputPlan(model, read_types, input_schema, plan_cast(input_schema, model))


def csv_read_types(source: Source, model: ModelSchema | None) -> dict[str, pa.DataType]:
    """For a CSV input, the endpoint's type of each model column it has: read straight as
    that type instead of the type guessed from the first MiB (empty for other inputs)."""
    if model is None or not source.is_csv:
        return {}
    return {
        column.name: column.type
        for column in model.columns
        if column.type is not None and column.name in source.schema.names
    }


def check_served_model(endpoint: EndpointInfo, served_model: str | None) -> None:
    """Refuse a ``served_model`` the endpoint does not serve.

    Raises:
        UsageError: naming the models it does serve.
    """
    names = endpoint.served_names()
    if served_model is not None and served_model not in names:
        raise UsageError(
            f"endpoint '{endpoint.name}' serves no model named '{served_model}'; it serves: "
            f"{', '.join(names) or 'nothing'} (see `engine describe {endpoint.name}`)"
        )


async def _ready_endpoint(
    workspace: Workspace, config: ScoreConfig, start_if_stopped: bool
) -> EndpointInfo:
    info = await workspace.get_endpoint(config.endpoint)
    if info.is_ready:
        return info
    if not (config.wait_ready_s > 0 or start_if_stopped):
        raise EndpointError(
            f"endpoint '{config.endpoint}' is not ready ({info.state_text}); start it "
            "(or pass `start_if_stopped=True`), or wait for it with `wait_ready_s=SECONDS`"
        )
    if start_if_stopped and info.config_update != "IN_PROGRESS":
        log.info("endpoint '%s' is stopped; starting it", config.endpoint)
        await workspace.start_endpoint(config.endpoint)
    # Starting a serving endpoint takes minutes (GPU ones, or scale-from-zero, 20 or more).
    timeout_s = config.wait_ready_s or DEFAULT_START_WAIT_S
    log.info(
        "waiting up to %s for endpoint '%s' to be READY (%s)%s",
        _duration(timeout_s),
        config.endpoint,
        info.state_text,
        "" if config.wait_ready_s else "; --wait-ready SECONDS to change",
    )
    try:
        return await workspace.wait_ready(config.endpoint, timeout_s=timeout_s)
    except EndpointNotReady as exc:
        raise EndpointNotReady(_not_ready_message(config, start_if_stopped, timeout_s)) from exc


def _not_ready_message(config: ScoreConfig, start_if_stopped: bool, timeout_s: float) -> str:
    """Why the wait ended and what to do, never asking for a flag that was given."""
    what = "started it, but it" if start_if_stopped else "waited, but it"
    fixes = [f"raise `wait_ready_s` (waited {_duration(timeout_s)})"]
    if not start_if_stopped:
        fixes.insert(0, "start it in the Serving UI or pass `start_if_stopped=True`")
    return (
        f"endpoint '{config.endpoint}' is still not READY: the engine {what} did not become "
        f"ready within {_duration(timeout_s)}; check its events in the Serving UI, and "
        + ", or ".join(fixes)
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _kept_columns(schema: pa.Schema, keep: Sequence[str] | None) -> tuple[str, ...]:
    if keep is None:
        return tuple(schema.names)
    missing = [name for name in keep if name not in schema.names]
    if missing:
        raise UsageError(
            f"`keep` names column(s) not in the input: {', '.join(missing)}; "
            f"available: {', '.join(schema.names)}"
        )
    reserved = [name for name in keep if name in ("prediction", "error")]
    if reserved:
        raise UsageError(f"`keep` cannot include {reserved}: the output adds those columns")
    return tuple(keep)
