"""The metrics catalogue: display names, units and good ranges of the metrics (hub.catalogue)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from hub.context import context
from hub.endpoints.responses import json_response
from hub.openapi import Operation
from hub.schemas import Catalogue


async def get_catalogue(request: Request) -> Response:
    # Not audited: it names no session and no child.
    return json_response(context(request).catalogue)


OPERATIONS = [
    Operation(
        "GET",
        "/catalogue",
        "get_catalogue",
        "How to show each metric: display name, unit, decimals, good range",
        "catalogue",
        get_catalogue,
        Catalogue,
        description=(
            "The hub's defaults for the metrics its simulator and demo mirror send, with the "
            "entries of the clinic's `HUB_METRICS_CATALOGUE` file over them. A shown value is "
            "the stored value times `scale`, in `unit` (UCUM code `ucum`); `good_range` is in the "
            "shown unit. Metrics missing here are shown under their raw name."
        ),
    ),
]
