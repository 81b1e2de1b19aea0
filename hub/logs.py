"""One logging configuration for the whole process: the hub, uvicorn, Alembic, the embedded server.

`configure(settings)` installs it with `logging.config.dictConfig`; `hub serve` hands the same
dictionary to uvicorn (`log_config`), which installs it again in every worker process. Every
record goes to stderr through one handler, as text (one line, with a timestamp) or, with
HUB_LOG_FORMAT=json, as one JSON object per line for log shippers.

Records may carry `session_id` and `node` (pass them with `extra=`); both formats show them.
The hub's messages name their session as `session=<id>`; the JSON format lifts that into
`session_id` too, so a log shipper can filter by session without parsing messages.
"""

from __future__ import annotations

import datetime
import logging
import logging.config
import re
from typing import Any

import orjson

from hub.settings import Settings

# Record attributes that the formats show as fields of their own when a log call sets them.
CONTEXT_FIELDS = ("session_id", "node")

SESSION_IN_MESSAGE = re.compile(
    r"\bsession=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b"
)

# Third-party loggers that speak at INFO about things an operator does not need every start.
QUIET = {
    "sqlalchemy.engine": "WARNING",
    "asyncio": "WARNING",
    "websockets": "WARNING",
}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`2026-11-30T18:20:01.123Z INFO    hub.live: message session_id=… node=…`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        context = [
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        if context:
            line += " " + " ".join(context)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; a traceback goes into `exception` as a string,
    never as lines of its own (a log shipper would take each for a record)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = str(value)
        if "session_id" not in entry and (named := SESSION_IN_MESSAGE.search(entry["message"])):
            entry["session_id"] = named.group(1)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def logging_config(settings: Settings) -> dict[str, Any]:
    """The dictConfig dictionary for these settings."""
    level = settings.log_level.upper()
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    loggers: dict[str, Any] = {name: {"level": quiet} for name, quiet in QUIET.items()}
    # uvicorn's loggers carry handlers of their own in uvicorn's default configuration; here
    # they have none and propagate to the one handler on the root logger.
    # Alembic says which migrations it applies ("Running upgrade …") at INFO.
    for name in ("hub", "alembic", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        loggers[name] = {"level": level, "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"hub": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "hub",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": loggers,
        # Other libraries: warnings and errors only, unless the hub itself is told to debug.
        "root": {"level": "DEBUG" if level == "DEBUG" else "WARNING", "handlers": ["console"]},
    }


def configure(settings: Settings) -> dict[str, Any]:
    """Install the configuration in this process and return it (for uvicorn's `log_config`)."""
    config = logging_config(settings)
    logging.config.dictConfig(config)
    return config
