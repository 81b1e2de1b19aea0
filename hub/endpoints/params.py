"""Path and query parameters: a malformed id answers 404, a bad query value 422."""

from __future__ import annotations

import uuid
from datetime import datetime

from starlette.requests import Request

from hub.endpoints.errors import HTTPError, not_found
from hub.schemas import FieldError
from hub.storage import repository


def parse_uuid(raw: str, what: str) -> uuid.UUID:
    """Malformed ids answer 404, like unknown ones: the resource does not exist."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(what) from None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # Not str.isdigit(): it accepts "²" and other digits int() refuses.
    if not raw.isascii() or not raw.isdecimal() or not low <= int(raw) <= high:
        raise bad_query(name, f"must be an integer from {low} to {high}")
    return int(raw)


def query_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise bad_query(name, "must be an ISO 8601 timestamp with a time zone") from None
    if value.tzinfo is None:
        raise bad_query(name, "must include a time zone, e.g. 2026-11-26T10:00:00Z")
    if not repository.EARLIEST <= value <= repository.LATEST:
        raise bad_query(name, "must be between the years 1970 and 9999")
    return value


def bad_query(name: str, message: str) -> HTTPError:
    return HTTPError(
        422, "validation_error", f"query parameter {name} {message}", [FieldError(name, message)]
    )
