"""Request bodies: read within a size limit (413), decode and validate, naming every bad
field (422)."""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from starlette.requests import Request

from hub.endpoints.errors import HTTPError
from hub.schemas import FieldError


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
