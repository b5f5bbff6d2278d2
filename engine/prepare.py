"""What an endpoint asks of an input, worked out before any row is sent.

One path from an endpoint's name to a cast plan: its OpenAPI document is fetched and parsed
(:meth:`~engine.workspace.Workspace.get_model`), a CSV input's columns are read as the
endpoint's types, and the input's columns are checked and planned against the model's
(:func:`~engine.schema.plan_cast`). ``engine score`` (:func:`engine.pipeline.prepare`),
``engine validate`` and Spark's driver all go this way, so they agree on what fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from engine.errors import UsageError
from engine.schema import CastPlan, ModelSchema, plan_cast
from engine.source import Source
from engine.workspace import EndpointInfo, Workspace

__all__ = ["InputPlan", "check_served_model", "csv_read_types", "plan_input"]


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
