"""``engine describe`` and ``engine validate``: look before scoring, send no rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.auth import connect
from engine.config import Credentials
from engine.schema import CastPlan, ModelSchema, format_schema, parse_openapi, plan_cast
from engine.source import open_source
from engine.transport import Transport
from engine.workspace import EndpointInfo, Workspace

__all__ = ["Description", "adescribe", "avalidate"]


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
        doc = await workspace.get_openapi(endpoint) if info.is_ready else None
    return Description(info, parse_openapi(doc) if doc else None)


async def avalidate(inputs: Any, endpoint: str, credentials: Credentials) -> CastPlan:
    """Check ``inputs`` against the endpoint's schema; raises SchemaError listing every problem."""
    source = open_source(inputs)
    async with Transport() as transport:
        workspace = await _workspace(transport, credentials)
        await workspace.get_endpoint(endpoint)  # a missing endpoint is its own clear error
        doc = await workspace.get_openapi(endpoint)
    return plan_cast(source.schema, parse_openapi(doc) if doc else None)
