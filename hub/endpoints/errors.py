"""The HTTP error shape: raise `HTTPError` in an endpoint; the app renders it as `ErrorBody`."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from hub.schemas import ErrorBody, FieldError

_encoder = msgspec.json.Encoder()


class HTTPError(Exception):
    """Raised by endpoints; rendered as `ErrorBody` JSON by the app's exception handler."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        fields: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, message=message, fields=fields)
        self.headers = headers


def error_response(exc: HTTPError) -> Response:
    return Response(
        _encoder.encode(exc.body), exc.status, headers=exc.headers, media_type="application/json"
    )


def not_found(what: str) -> HTTPError:
    return HTTPError(404, "not_found", f"{what} not found")


def forbidden(message: str) -> HTTPError:
    return HTTPError(403, "forbidden", message)
