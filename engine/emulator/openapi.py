"""A model's signature -> the OpenAPI 3.1 document of ``GET .../serving-endpoints/{name}/openapi``.

The shape is the one in Databricks' documentation (seed 002): a ``oneOf`` of a
``dataframe_split`` schema (column ``enum``, ``"required fields: a, b"`` description, one
``prefixItems`` entry per column, two example rows) and a ``dataframe_records`` schema
(``items.required``, ``items.properties``), each with ``params`` when the model has any, and
``predictions.items`` in the 200 response.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from engine.emulator.models import Model
from engine.emulator.signature import ParamSpec, Signature, openapi_type

__all__ = ["openapi_document"]

_EXAMPLE_ROWS = 2
_EXAMPLE_SEED = 0


def openapi_document(
    *, endpoint: str, workspace_host: str, served_name: str, config_version: int, model: Model
) -> dict[str, Any]:
    """The endpoint's OpenAPI document.

    Args:
        endpoint: the endpoint's name (``info.title``).
        workspace_host: the workspace URL (``servers[0].url`` is under it).
        served_name: the served entity's name (in the invocation path).
        config_version: the endpoint's config version (``info.version``).
        model: the served model; its signature makes the request and response schemas.
    """
    signature = model.signature
    request = {"oneOf": [_split_schema(signature, model), _records_schema(signature)]}
    return {
        "openapi": "3.1.0",
        "info": {"title": endpoint, "version": str(config_version)},
        "servers": [{"url": f"{workspace_host}/serving-endpoints/{endpoint}"}],
        "paths": {
            f"/served-models/{served_name}/invocations": {
                "post": {
                    "requestBody": {"content": {"application/json": {"schema": request}}},
                    "responses": {"200": _response(signature)},
                }
            }
        },
    }


def _split_schema(signature: Signature, model: Model) -> dict[str, Any]:
    split = {
        "type": "object",
        "properties": {
            "columns": {
                "description": "required fields: " + ", ".join(signature.required),
                "type": "array",
                "items": {"type": "string", "enum": list(signature.names)},
            },
            "data": {
                "type": "array",
                "items": {
                    "type": "array",
                    "prefixItems": [openapi_type(c.type) for c in signature.columns],
                },
            },
        },
    }
    return {
        "type": "object",
        "properties": {"dataframe_split": split, **_params(signature)},
        "examples": [{"columns": list(signature.names), "data": _example_rows(model)}],
    }


def _records_schema(signature: Signature) -> dict[str, Any]:
    items = {
        "required": list(signature.required),
        "type": "object",
        "properties": {c.name: openapi_type(c.type) for c in signature.columns},
    }
    records = {"type": "array", "items": items}
    return {"type": "object", "properties": {"dataframe_records": records, **_params(signature)}}


def _params(signature: Signature) -> dict[str, Any]:
    if not signature.params:
        return {}
    return {
        "params": {"type": "object", "properties": {p.name: _param(p) for p in signature.params}}
    }


def _param(param: ParamSpec) -> dict[str, Any]:
    # Databricks writes defaults as strings ("default": "0.5").
    return {**openapi_type(param.type), "default": str(param.default)}


def _response(signature: Signature) -> dict[str, Any]:
    items = dict(signature.output or {"type": "number", "format": "double"})
    predictions = {"type": "array", "items": items}
    schema = {"type": "object", "properties": {"predictions": predictions}}
    return {
        "description": "Successful operation",
        "content": {"application/json": {"schema": schema}},
    }


def _example_rows(model: Model) -> list[list[Any]]:
    table = model.sample(_EXAMPLE_ROWS, seed=_EXAMPLE_SEED)
    columns = [
        [_jsonable(v) for v in table.column(i).to_pylist()] for i in range(table.num_columns)
    ]
    return [list(row) for row in zip(*columns, strict=True)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value
