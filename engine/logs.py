"""Log output for people (text) or machines (``--log-format json``: one object per line)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = ["JsonFormatter", "emit", "setup_logging"]

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", "message", ...fields}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def setup_logging(*, quiet: bool, log_format: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    # aiohttp's access log and internals are noise for a person reading a task log.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def emit(event: str, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event on the ``engine`` logger (fields become JSON keys)."""
    logging.getLogger("engine").log(level, message, extra={"event": event, "fields": fields})
