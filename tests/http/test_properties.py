"""Property-based run of the HTTP API against its own OpenAPI document (schemathesis).

For every operation of the document, schemathesis sends its examples, its coverage cases
(boundary and invalid values of every parameter and body field) and a bounded, derandomized
fuzzing run of valid and invalid input to the app in process (ASGI; the app's lifespan runs on
schemathesis' event-loop thread). Every response must:

- not be a 5xx (`not_a_server_error`),
- carry a status code the document lists for the operation (`status_code_conformance`),
- carry the documented content type (`content_type_conformance`),
- have a body that validates against the documented schema (`response_schema_conformance`).

Random ids would only ever reach the 404 branches, so a deterministic 3/4 of the generated
`session_id` / `task_id` values are swapped for the ids of a seeded session and task (the
session has streamed metric frames, so the time-series queries return points too). Values
that random generation rarely produces but real clients send (NUL characters, timestamps at
the ends of the datetime range, non-ASCII digits, extreme cursors) are offered to the
generator as dictionaries bound to the parameters that take them.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.app import create_app
from hub.endpoints.api import OPERATIONS
from hub.openapi import build_openapi
from hub.settings import Settings
from hub.storage.models import Frame, Metric, Task
from hub.storage.models import Session as SessionRow
from tests.support.live import staff_headers

CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SEED = 20_261_126
MAX_EXAMPLES = 50  # fuzzing examples per operation; examples and coverage cases come on top


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# Values random generation rarely reaches but clients do send, offered to the generator as
# dictionaries (schemathesis uses an entry in positive cases when it fits the parameter's
# schema, in negative cases when it does not):
DICTIONARIES: dict[str, list[str]] = {
    # Valid JSON strings PostgreSQL cannot store or compare (NUL).
    "text": ["A\x00B", "\x00", "Ålice 👧", "x" * 100],
    # RFC 3339 timestamps at the edges of the datetime range, with and without offsets.
    "timestamps": [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",
        "2026-01-01T00:00:00+14:00",
        "1970-01-01T00:00:00-12:00",
    ],
    # Unicode digits: str.isdigit() is true for some that int() rejects (superscripts).
    "digits": ["\u00b2", "\u00b9\u2070", "\u0661\u0660", "\U0001d7d3"],  # ², ¹⁰, Arabic 10, bold 5
    # Well-formed cursors (base64 of "<timestamp>|<uuid>") with extreme timestamps.
    "cursors": [
        _cursor(f"0001-01-01T00:00:00+01:00|{uuid.UUID(int=1)}"),
        _cursor(f"9999-12-31T23:59:59-01:00|{uuid.UUID(int=2)}"),
        _cursor(f"2026-01-01T00:00:00+00:00|{uuid.UUID(int=3)}"),
    ],
}
# Parameter → (dictionary, how often the parameter takes a value from it). Timestamps less
# often: an out-of-range one ends the request with a 422 before the rest is looked at.
BINDINGS = {
    "body.child_name": ("text", 0.3),
    "body.task_name": ("text", 0.3),
    "query.metric": ("text", 0.3),
    "query.created_after": ("timestamps", 0.15),
    "query.created_before": ("timestamps", 0.15),
    "query.since": ("timestamps", 0.15),
    "query.until": ("timestamps", 0.15),
    "query.limit": ("digits", 0.3),
    "query.bucket_ms": ("digits", 0.3),
    "query.cursor": ("cursors", 0.3),
}


def schemathesis_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "dictionaries": {name: {"values": values} for name, values in DICTIONARIES.items()},
            "parameters": {
                key: {"dictionary": name, "probability": probability}
                for key, (name, probability) in BINDINGS.items()
            },
            "generation": {
                "mode": "all",  # valid and invalid input alike
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",  # no example database: a run does not depend on earlier ones
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
        }
    )


# Built from the same function the app serves `/openapi.json` with; `hub_app` checks that the
# served document is identical. Loading it from the app at import time would need a database.
schema = schemathesis.openapi.from_dict(build_openapi(OPERATIONS), config=schemathesis_config())


@pytest.fixture
async def seeded(clean_db: AsyncEngine) -> dict[str, uuid.UUID]:
    """A session with a task, task metrics and streamed metric frames, on empty tables."""
    session_id, task_id = uuid.uuid4(), uuid.uuid4()
    start = datetime.now(UTC) - timedelta(minutes=5)
    async with clean_db.begin() as conn:
        await conn.execute(insert(SessionRow).values(id=session_id, child_name="Seeded"))
        await conn.execute(
            insert(Task).values(
                id=task_id, session_id=session_id, task_name="raise_hand", metrics={"a": 1.0}
            )
        )
        await conn.execute(
            insert(Metric).values([{"task_id": task_id, "name": "accuracy", "value": 0.5}])
        )
        await conn.execute(
            insert(Frame).values(
                [
                    {
                        "session_id": session_id,
                        "seq": seq,
                        "kind": "metrics",
                        "device_ts": start.timestamp() + seq,
                        "received_at": start + timedelta(milliseconds=250 * seq),
                        "payload": {
                            "type": "metrics",
                            "seq": seq,
                            "ts": start.timestamp() + seq,
                            "values": {"accuracy": seq / 100, "max_angle": 90.0 + seq},
                        },
                    }
                    for seq in range(1, 41)
                ]
            )
        )
    return {"session_id": session_id, "task_id": task_id}


def like_a_server(app: ASGIApp) -> ASGIApp:
    """Starlette re-raises an unhandled error after sending its 500, for the server to log.

    A server (uvicorn) logs it and the client sees only the 500; do the same here, so that
    schemathesis reports the response (with a reproducible request) instead of a traceback.
    """

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception:
            if scope["type"] != "http" or not started:
                raise

    return server


@pytest.fixture
def hub_app(settings: Settings, seeded: dict[str, uuid.UUID]) -> tuple[Any, dict[str, uuid.UUID]]:
    """The app under test, its lifespan started on schemathesis' event-loop thread.

    Schemathesis keeps the lifespan running across the examples of a test and ends it in its
    teardown hook, while the database is still there.
    """
    app = like_a_server(create_app(settings))
    # Loading the served document starts the lifespan; the cases come from exactly this one.
    served = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert served.raw_schema == schema.raw_schema
    return app, seeded


def use_seeded_ids(case: Any, seeded: dict[str, uuid.UUID]) -> None:
    """Point a deterministic 3/4 of the generated, well-formed ids at the seeded rows."""
    for name, value in (case.path_parameters or {}).items():
        if name not in seeded or not isinstance(value, str):
            continue
        try:
            generated = uuid.UUID(value)
        except ValueError:
            continue  # malformed ids stay: they must answer 404
        if generated.int % 4 != 0:
            case.path_parameters[name] = str(seeded[name])


@schema.parametrize()
@hypothesis.settings(suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
def test_responses_conform_to_openapi(case: Any, hub_app: tuple[Any, dict[str, uuid.UUID]]) -> None:
    app, seeded = hub_app
    use_seeded_ids(case, seeded)
    # As an admin: authentication is tested in test_openapi; here every input must get past it.
    case.call_and_validate(app=app, headers=staff_headers("admin"), checks=CHECKS)
