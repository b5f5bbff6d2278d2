"""``engine describe`` and ``engine validate``: look before scoring, send no rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import volumes
from engine.auth import connect
from engine.config import Credentials
from engine.errors import SchemaError
from engine.prepare import plan_input
from engine.schema import CastPlan, ModelSchema, format_schema
from engine.source import READ_ERROR_COLUMN, Source, open_source
from engine.source.delta import TableRead
from engine.transport import Transport
from engine.workspace import EndpointInfo, Workspace

__all__ = ["Description", "Validation", "adescribe", "avalidate"]


@dataclass(frozen=True, slots=True)
class Description:
    endpoint: EndpointInfo
    model: ModelSchema | None

    def lines(self) -> list[str]:
        info = self.endpoint
        out = [
            f"endpoint        {info.name} (id {info.id})",
            f"state           {info.state_text}",
            f"route-optimized {'yes' if info.route_optimized else 'no'}",
            f"data plane URL  {info.endpoint_url or '-'}",
            f"config version  {info.config_version or '-'}",
            f"permission      {info.permission_level or '-'}",
        ]
        for entity in info.served_entities:
            out.append(
                f"served          {entity.name}: {entity.entity_name or '?'} "
                f"v{entity.entity_version or '?'} ({entity.deployment or '?'})"
            )
        for served, percent in info.traffic:
            out.append(f"traffic         {percent}% -> {served}")
        if self.model is None:
            out.append("input schema    none published (no model signature, or not READY)")
            return out
        out.append("input schema")
        rows = format_schema(self.model)
        width = max((len(name) for name, _, _ in rows), default=6)
        out.extend(f"  {name:<{width}}  {type_}  {req}" for name, type_, req in rows)
        out.append(f"prediction      {self.model.prediction_type or 'not declared'}")
        return out


async def _workspace(transport: Transport, credentials: Credentials) -> Workspace:
    """Control-plane calls only: a personal access token is enough here."""
    return Workspace(transport, await connect(transport, credentials))


async def adescribe(endpoint: str, credentials: Credentials) -> Description:
    """The endpoint's state, URLs, served models, traffic and schema."""
    async with Transport() as transport:
        workspace = await _workspace(transport, credentials)
        info = await workspace.get_endpoint(endpoint)
        model = await workspace.get_model(endpoint) if info.is_ready else None
    return Description(info, model)


@dataclass(frozen=True, slots=True)
class Validation:
    """What ``engine validate`` found: the cast plan, and what was and was not checked."""

    plan: CastPlan
    notes: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        return [*self.plan.describe(), *self.notes]


#: Bad CSV values listed by ``engine validate --full`` (the count covers them all).
MAX_LISTED_VALUES = 10


async def avalidate(
    inputs: Any,
    endpoint: str,
    credentials: Credentials,
    *,
    full: bool = False,
    table: TableRead | None = None,
) -> Validation:
    """Check ``inputs`` against the endpoint's schema, sending no rows.

    Parquet's types are in its footers, so the check is complete. CSV columns are read as
    the endpoint's types, so without reading every value only a sample can be checked:
    the first read batch; ``full`` reads every row. ``table`` picks the version, time or
    rows of a Delta table input (``--input-version``, ``--input-timestamp``, ``--where``).

    Raises:
        SchemaError: listing every missing or incompatible column, or (CSV) every value
            found that does not parse as its column's type (the first ten, and the count).
    """
    volumes.use(credentials)  # a Volume outside a cluster is read with these
    source = open_source(inputs, table=table)
    async with Transport() as transport:
        workspace = await _workspace(transport, credentials)
        await workspace.get_endpoint(endpoint)  # a missing endpoint is its own clear error
        planned = await plan_input(workspace, endpoint, source)
    read_types, plan = planned.read_types, planned.cast
    if not read_types:
        return Validation(plan)
    rows, bad = _unparsable(source, plan, read_types, full=full)
    if bad:
        shown = bad[:MAX_LISTED_VALUES]
        more = f" (and {len(bad) - len(shown)} more)" if len(bad) > len(shown) else ""
        raise SchemaError(
            f"{len(bad)} CSV row(s) of the {rows:,} read hold values that do not parse as the "
            f"endpoint's types{more}; `engine score` would reject those rows (exit 3):\n  "
            + "\n  ".join(shown),
            shown,
        )
    if full:
        return Validation(plan, (f"every CSV value parses ({rows:,} rows read)",))
    return Validation(
        plan,
        (
            f"CSV values checked in the first {rows:,} rows only; later values are checked as "
            "they are read, and a row with one that does not parse is rejected (exit 3): "
            "--full reads every row now",
        ),
    )


def _unparsable(
    source: Source, plan: CastPlan, read_types: dict[str, Any], *, full: bool
) -> tuple[int, list[str]]:
    """Rows read and the read errors found, in the first batch or (``full``) all of them."""
    reader = source.reader(list(plan.columns), csv_types=read_types)
    rows, bad = 0, []
    for batch in reader:
        errors = batch.column(batch.schema.get_field_index(READ_ERROR_COLUMN))
        rows += batch.num_rows
        bad += [e for e in errors.to_pylist() if e is not None]
        if not full:
            break
    return rows, bad
