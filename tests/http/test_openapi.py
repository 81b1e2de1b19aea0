"""The OpenAPI document: valid OpenAPI 3.1, complete, and true to what the API answers.

Also the two documentation pages that render it (/docs, /redoc) and the browser assets the
hub serves for them from /static/docs.
"""

from __future__ import annotations

import html
import re
import uuid
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

import hub
from hub.app import create_app
from hub.endpoints.api import OPERATIONS as API_OPERATIONS
from hub.openapi import build_openapi
from hub.settings import Settings
from tests.support.live import token

DOCUMENT = build_openapi(API_OPERATIONS)
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
OPERATIONS = [
    (path, method, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if method in HTTP_METHODS
]
ERROR_REF = "#/components/schemas/ErrorBody"
# Valid values for required query parameters, used when another input is made to fail.
VALID_QUERY = {"metric": "accuracy"}


def op_id(value: Any) -> str:
    return value["operationId"] if isinstance(value, dict) else str(value)


def params_in(operation: dict[str, Any], location: str) -> list[dict[str, Any]]:
    return [p for p in operation.get("parameters", []) if p["in"] == location]


def secured(operation: dict[str, Any]) -> bool:
    """Needs a credential: the operation's own `security`, else the document's."""
    return bool(operation.get("security", DOCUMENT.get("security", [])))


async def anonymous(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """A request without the client's credential."""
    request = client.build_request(method, url, **kwargs)
    del request.headers["authorization"]
    return await client.send(request)


def validate_against(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate `instance` against a schema of the document, resolving its component refs."""
    root = {**schema, "components": document["components"]}
    OAS31Validator(root).validate(instance)


def check_documented(
    document: dict[str, Any], operation: dict[str, Any], response: httpx.Response
) -> None:
    """The response's status is documented for the operation and its body fits the schema."""
    documented = operation["responses"]
    assert str(response.status_code) in documented, (
        f"{operation['operationId']} answered {response.status_code}, documented: "
        f"{sorted(documented)}; body: {response.text}"
    )
    assert response.headers["content-type"] == "application/json"
    media = documented[str(response.status_code)]["content"]["application/json"]
    validate_against(document, media["schema"], response.json())


async def test_openapi_json_is_the_generated_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document == DOCUMENT
    assert document["info"]["version"] == hub.__version__


async def test_document_validates_as_openapi_3_1(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1.")
    # Raises with the first problem found (unresolvable $ref, bad keyword, missing field).
    OpenAPIV31SpecValidator(document).validate()


def test_every_api_route_is_documented_with_its_method(settings: Settings) -> None:
    app = create_app(settings)  # routes only; no lifespan, no database needed
    routes = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.include_in_schema
        for method in route.methods or ()
        if method != "HEAD"  # Starlette adds HEAD to every GET route
    }
    documented = {(path, method) for path, method, _ in OPERATIONS}
    assert routes, "no API routes found"
    assert routes == documented
    # The non-API routes stay out of the document.
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert path not in DOCUMENT["paths"]
    assert not any(path.startswith(("/ws/", "/static/")) for path in DOCUMENT["paths"])


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS, ids=op_id)
def test_operation_has_id_summary_and_success_schema(
    path: str, method: str, operation: dict[str, Any]
) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", operation["operationId"])
    assert operation["summary"].strip()
    assert operation.get("tags"), "every operation is grouped under a tag"
    successes = [code for code in operation["responses"] if code.startswith("2")]
    assert len(successes) == 1, operation["responses"]
    success = operation["responses"][successes[0]]
    assert success["description"]
    # One media type: JSON, or text/csv and application/fhir+json for the exports.
    ((media_type, media),) = success["content"].items()
    assert media_type in ("application/json", "text/csv", "application/fhir+json"), media_type
    schema = media["schema"]
    assert schema.get("$ref") or schema.get("type"), schema
    for param in params_in(operation, "path"):
        assert "{" + param["name"] + "}" in path and param["required"] is True


def test_operation_ids_are_unique() -> None:
    ids = [operation["operationId"] for _, _, operation in OPERATIONS]
    assert len(ids) == len(set(ids))


def expected_errors(operation: dict[str, Any]) -> set[str]:
    """401/403 behind a credential, 404 for ids in the path, 413 and 422 for a body, 422 for
    query parameters."""
    codes: set[str] = {"401", "403"} if secured(operation) else set()
    if params_in(operation, "path"):
        codes.add("404")
    if "requestBody" in operation:
        codes |= {"413", "422"}
    if params_in(operation, "query"):
        codes.add("422")
    return codes


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS, ids=op_id)
def test_operation_documents_its_errors_with_the_error_schema(
    path: str, method: str, operation: dict[str, Any]
) -> None:
    responses = operation["responses"]
    missing = expected_errors(operation) - set(responses)
    assert not missing, f"{operation['operationId']} does not document {sorted(missing)}"
    for code, response in responses.items():
        if code.startswith(("4", "5")) and code != "503":
            assert response["description"]
            assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    error_body = DOCUMENT["components"]["schemas"]["ErrorBody"]
    assert set(error_body["required"]) == {"error", "message"}
    schemes = DOCUMENT["components"].get("securitySchemes", {})
    for requirement in operation.get("security", DOCUMENT.get("security", [])):
        assert set(requirement) <= set(schemes), requirement


def body_example(operation: dict[str, Any]) -> Any:
    return operation["requestBody"]["content"]["application/json"]["example"]


def invalid_query_value(schema: dict[str, Any]) -> str | None:
    """A value that breaks the parameter's schema, or None if every string fits it."""
    if schema.get("type") == "integer":
        return "abc"
    if schema.get("format") == "date-time":
        return "not-a-time"
    if schema.get("minLength", 0) > 0:
        return ""
    return None


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS, ids=op_id)
async def test_documented_errors_are_what_the_api_answers(
    client: httpx.AsyncClient,
    settings: Settings,
    path: str,
    method: str,
    operation: dict[str, Any],
) -> None:
    """Make each applicable error happen and check the answer against the document."""
    document = (await client.get("/openapi.json")).json()
    ids = {p["name"]: str(uuid.uuid4()) for p in params_in(operation, "path")}
    url = path.format(**ids)
    query = {
        p["name"]: VALID_QUERY[p["name"]] for p in params_in(operation, "query") if p["required"]
    }
    json_body = body_example(operation) if "requestBody" in operation else None
    triggered: list[tuple[int, httpx.Response]] = []

    if ids:  # unknown ids
        response = await client.request(method, url, params=query, json=json_body)
        triggered.append((404, response))
        malformed = path.format(**dict.fromkeys(ids, "not-a-uuid"))
        response = await client.request(method, malformed, params=query, json=json_body)
        triggered.append((404, response))
    if "requestBody" in operation:
        response = await client.request(method, url, params=query, json=[])
        triggered.append((422, response))
        response = await client.request(
            method, url, content=b"{", headers={"content-type": "application/json"}
        )
        triggered.append((422, response))
        too_big = b'{"x": "' + b"a" * settings.max_body_bytes + b'"}'
        response = await client.request(
            method, url, content=too_big, headers={"content-type": "application/json"}
        )
        triggered.append((413, response))
    for param in params_in(operation, "query"):
        bad = invalid_query_value(param["schema"])
        if bad is None:
            continue
        response = await client.request(method, url, params={**query, param["name"]: bad})
        triggered.append((422, response))
        assert param["name"] in {f["field"] for f in response.json()["fields"]}, response.text

    if secured(operation):
        # No credential: 401. A mirror's credential for another session, on real rows: 403.
        response = await anonymous(client, method, url, params=query, json=json_body)
        triggered.append((401, response))
        assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
        real = await real_ids(client, ids)
        other_mirror = {"Authorization": f"Bearer {token('mirror', str(uuid.uuid4()))}"}
        response = await client.request(
            method, path.format(**real), params=query, json=json_body, headers=other_mirror
        )
        triggered.append((403, response))

    assert triggered or not expected_errors(operation)
    for expected, response in triggered:
        assert response.status_code == expected, (response.request.url, response.text)
        check_documented(document, operation, response)


async def real_ids(client: httpx.AsyncClient, names: dict[str, str]) -> dict[str, str]:
    """Ids of a session, a task and a child that exist, for the path parameters in `names`."""
    session = await client.post("/sessions", json={"child_name": "Ids", "child_ref": "child-ids"})
    assert session.status_code == 201, session.text
    session_id = session.json()["id"]
    task = await client.post(f"/sessions/{session_id}/tasks", json={"task_name": "x"})
    assert task.status_code == 201, task.text
    real = {"session_id": session_id, "task_id": task.json()["id"], "child_ref": "child-ids"}
    return {name: real[name] for name in names}


DOCS_PAGES = ["/docs", "/redoc"]
ASSET_TYPES = {
    ".css": "text/css",
    ".js": "javascript",  # text/javascript or application/javascript
    ".png": "image/png",
}


def asset_urls(page: str) -> set[str]:
    return {html.unescape(url) for url in re.findall(r"/static/docs/[^\"'\s<>)]+", page)}


@pytest.mark.parametrize("page", DOCS_PAGES)
async def test_docs_page_is_html_rendering_the_document(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await anonymous(client, "GET", page)  # as a browser: no credential
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "/openapi.json" in text
    assert asset_urls(text), f"{page} links no asset from /static/docs"
    # Served by the hub itself: no CDN.
    assert not re.search(r"(src|href)=\"https?://", text)


@pytest.mark.parametrize("page", DOCS_PAGES)
async def test_docs_assets_are_served(client: httpx.AsyncClient, page: str) -> None:
    urls = asset_urls((await anonymous(client, "GET", page)).text)
    assert urls
    for url in sorted(urls):
        response = await anonymous(client, "GET", url)
        assert response.status_code == 200, url
        assert response.content, url
        suffix = "." + url.split("?", 1)[0].rsplit(".", 1)[-1]
        assert ASSET_TYPES[suffix] in response.headers["content-type"], (url, response.headers)


async def test_unknown_docs_asset_is_404(client: httpx.AsyncClient) -> None:
    response = await anonymous(client, "GET", "/static/docs/swagger-ui/no-such-file.js")
    assert response.status_code == 404
