"""What every HTTP endpoint shares: JSON responses, body decoding, the error shape."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, get_args

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from hub.auth import ANONYMOUS_ADMIN, AuthError, Principal, Role
from hub.context import context
from hub.schemas import ErrorBody, FieldError
from hub.storage import repository

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


def json_response(content: Any, status: int = 200) -> Response:
    # msgspec encodes Structs, UUIDs and datetimes directly; plain dicts go through orjson.
    if isinstance(content, msgspec.Struct) or (
        isinstance(content, list) and content and isinstance(content[0], msgspec.Struct)
    ):
        body = _encoder.encode(content)
    else:
        body = orjson.dumps(content)
    return Response(body, status_code=status, media_type="application/json")


def error_response(exc: HTTPError) -> Response:
    return Response(
        _encoder.encode(exc.body), exc.status, headers=exc.headers, media_type="application/json"
    )


def authenticate(request: Request) -> Principal:
    """The caller's Principal from `Authorization: Bearer …`; 401 without a valid one."""
    tokens = context(request).tokens
    if tokens is None:
        return ANONYMOUS_ADMIN
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send a credential: Authorization: Bearer <token>")
    try:
        return tokens.verify(token.strip())
    except AuthError as exc:
        raise _unauthorized(str(exc)) from None


def _unauthorized(message: str) -> HTTPError:
    return HTTPError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> HTTPError:
    return HTTPError(403, "forbidden", message)


def require_session(request: Request, session_id: uuid.UUID) -> Principal:
    """403 unless the caller may read this session (staff: any; a mirror: its own)."""
    principal: Principal = request.state.principal
    if not principal.may_read(session_id):
        raise forbidden("this credential is for another session")
    return principal


def guard(
    endpoint: Callable[[Request], Awaitable[Response]], roles: tuple[Role, ...]
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an endpoint: authenticate, check the role, and for a `session_id` in the path,
    the session scope. Endpoints reached through a task check its session themselves."""

    async def guarded(request: Request) -> Response:
        principal = authenticate(request)
        if principal.role not in roles:
            raise forbidden(f"role {principal.role!r} may not do this; needs {' or '.join(roles)}")
        request.state.principal = principal
        raw_session = request.path_params.get("session_id")
        if raw_session is not None:
            require_session(request, parse_uuid(raw_session, "session"))
        return await endpoint(request)

    return guarded


def not_found(what: str) -> HTTPError:
    return HTTPError(404, "not_found", f"{what} not found")


def parse_uuid(raw: str, what: str) -> uuid.UUID:
    """Malformed ids answer 404, like unknown ones: the resource does not exist."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(what) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read the body, refusing (413) past `max_bytes` without buffering the excess."""
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isascii()
        and declared.isdecimal()
        and (int(declared) > max_bytes)
    ):
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> HTTPError:
    return HTTPError(413, "payload_too_large", f"request body is larger than {max_bytes} bytes")


def decode_body(body: bytes, type_: Any) -> Any:
    """Decode and validate; on failure raise 422 naming every bad field, not only the first."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        try:
            fields = _field_errors(msgspec.json.decode(body), type_)
        except (msgspec.DecodeError, RecursionError):  # valid JSON, but not as plain values
            fields = []
        fields = fields or [FieldError(field="$", message=str(exc))]
        raise HTTPError(422, "validation_error", "request body failed validation", fields) from None
    except msgspec.DecodeError as exc:  # after ValidationError, its subclass
        if not body.strip():
            raise HTTPError(
                422, "validation_error", "request body is empty; expected JSON"
            ) from None
        raise HTTPError(422, "validation_error", f"malformed JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(422, "validation_error", "JSON is nested too deeply") from None


def _field_errors(data: Any, type_: Any) -> list[FieldError]:
    """Validate each top-level field on its own, to report all of them (error path only)."""
    if not isinstance(data, dict):
        return [FieldError(field="$", message=f"expected a JSON object, got {_json_type(data)}")]
    errors: list[FieldError] = []
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        known = {f.encode_name: f for f in msgspec.structs.fields(type_)}
        for name in data:
            if name not in known:
                errors.append(FieldError(field=name, message="unknown field"))
        for name, info in known.items():
            if name not in data:
                if info.required:
                    errors.append(FieldError(field=name, message="field required"))
                continue
            _check(errors, name, data[name], info.type)
        return errors
    # A mapping body such as the metrics batch: check each entry against the value type.
    key_type, value_type = _mapping_types(type_)
    if not data:
        return [FieldError(field="$", message="at least one entry is required")]
    for name, value in data.items():
        _check(errors, name, name, key_type, prefix="name: ")
        _check(errors, name, value, value_type)
    return errors


def _check(errors: list[FieldError], field: str, value: Any, type_: Any, prefix: str = "") -> None:
    try:
        msgspec.convert(value, type=type_)
    except msgspec.ValidationError as exc:
        errors.append(FieldError(field=field, message=prefix + str(exc)))


def _mapping_types(type_: Any) -> tuple[Any, Any]:
    # Annotated[dict[K, V], Meta] → (K, V)
    key_type, value_type = get_args(get_args(type_)[0])
    return key_type, value_type


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


async def audit(request: Request, action: str, session_id: uuid.UUID | None) -> None:
    """Record that the caller read `session_id` (or a list, for None)."""
    principal: Principal = request.state.principal
    async with context(request).sessionmaker() as db:
        recorded = await repository.record_access(
            db, principal.subject, principal.role, action, session_id
        )
    if not recorded:  # erased while we read it: as if it had never been there
        raise not_found("session")
