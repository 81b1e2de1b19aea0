"""JSON success responses."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from starlette.responses import Response

_encoder = msgspec.json.Encoder()


def json_response(content: Any, status: int = 200) -> Response:
    # msgspec encodes Structs, UUIDs and datetimes directly; plain dicts go through orjson.
    if isinstance(content, msgspec.Struct) or (
        isinstance(content, list) and content and isinstance(content[0], msgspec.Struct)
    ):
        body = _encoder.encode(content)
    else:
        body = orjson.dumps(content)
    return Response(body, status_code=status, media_type="application/json")
