"""/docs (Swagger UI) and /redoc (ReDoc) really render the OpenAPI document, offline.

A real uvicorn server on 127.0.0.1 serves `hub.endpoints.docs.routes` plus `/openapi.json`;
headless Chromium loads each page and dumps the DOM after the scripts have run, and the
test checks that every operation of the document is on the page. Chromium is told that
every host name but 127.0.0.1 does not exist, so a page that still needed a CDN, a web
font or anything else from outside could not render; its network log is also checked for
any request the page made to another host.

Needs Chromium (Debian: `apt-get install -y chromium`). Without it the tests fail.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hub.endpoints import docs
from hub.endpoints.api import OPERATIONS
from hub.openapi import build_openapi
from tests.support.browser import Node, Rendered, parse, render

pytestmark = pytest.mark.slow

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def openapi_document() -> dict[str, Any]:
    """The hub's own document, built as the app builds it."""
    return build_openapi(OPERATIONS)


@dataclass(frozen=True)
class Op:
    method: str  # upper case
    path: str
    operation_id: str | None
    summary: str | None
    tagged: bool


def operations(document: dict[str, Any]) -> list[Op]:
    ops = [
        Op(
            method.upper(),
            path,
            op.get("operationId"),
            op.get("summary"),
            bool(op.get("tags")),
        )
        for path, item in document.get("paths", {}).items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]
    assert ops, "the OpenAPI document has no operation to look for"
    return ops


# --- the server -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Served:
    base_url: str
    document: dict[str, Any]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    document = openapi_document()

    async def openapi_json(request: Request) -> JSONResponse:
        return JSONResponse(document)

    app = Starlette(routes=[*docs.routes, Route("/openapi.json", openapi_json)])
    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="docs-render-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("uvicorn did not start serving the docs app")
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", document)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- the browser ------------------------------------------------------------------------


def assert_offline(rendered: Rendered, base_url: str) -> None:
    # The openapi.json fetch is made by the page's script, so the log records page requests.
    assert f"{base_url}/openapi.json" in rendered.requested, (
        "the net log shows no page-initiated request for /openapi.json; cannot check "
        f"for outside requests (saw {rendered.requested})"
    )
    outside = [u for u in rendered.requested if urlsplit(u).hostname != "127.0.0.1"]
    assert not outside, f"the page tried to fetch from outside the hub: {outside}"


# --- the tests --------------------------------------------------------------------------


def test_swagger_ui_renders_every_operation_offline(served: Served, tmp_path: Path) -> None:
    rendered = render(f"{served.base_url}/docs", tmp_path / "docs")
    page = parse(rendered.dom)
    ops = operations(served.document)

    blocks = page.find_all(cls="opblock")
    assert blocks, (
        "Swagger UI rendered no operation (assets not loaded?)\n"
        f"{page.text()[:2000]}\n--- chromium log ---\n{rendered.log}"
    )
    errors = page.find_all(cls="errors-wrapper")
    assert not errors, f"Swagger UI shows errors: {[e.text() for e in errors]}"

    shown: dict[tuple[str, str], Node] = {}
    for block in blocks:
        method, path = (
            block.first(cls="opblock-summary-method"),
            block.first(cls="opblock-summary-path"),
        )
        assert method is not None and path is not None, block.text()
        shown[(method.text(), path.attrs.get("data-path", ""))] = block
    expected = {(op.method, op.path) for op in ops}
    assert expected <= shown.keys(), f"missing from /docs: {sorted(expected - shown.keys())}"
    assert shown.keys() <= expected, f"/docs shows more: {sorted(shown.keys() - expected)}"
    for op in ops:
        block = shown[(op.method, op.path)]
        if op.summary:
            description = block.first(cls="opblock-summary-description")
            assert description is not None and description.text() == op.summary, block.text()
        if op.operation_id:
            # Swagger UI's deep-link id: operations-<tag>-<operationId>
            assert block.attrs.get("id", "").endswith(f"-{op.operation_id}"), block.attrs
    assert_offline(rendered, served.base_url)


def _redoc_menu(page: Node) -> tuple[set[tuple[str, str]], list[str]]:
    """ReDoc's side menu: ({(operation label, METHOD)}, [links of the menu's groups])."""
    entries = set()
    for item in page.find_all(cls="menu-item-type-operation"):
        named = [n for n in item.iter() if "data-text" in n.attrs]
        method = item.first(data_component_name="Tags/HttpTag")
        assert named and method is not None, f"unexpected ReDoc menu item: {item.text()!r}"
        entries.add((named[0].attrs["data-text"], method.text().upper()))
    groups = []
    for item in page.find_all(cls="menu-item-type-group"):
        link = item.first(tag="a")  # the group's own link comes first
        if link is not None and link.attrs.get("href", "").startswith("#"):
            groups.append(link.attrs["href"])
    return entries, groups


def _method_path(link: Node) -> tuple[str, str]:
    """Link text 'post /sessions' -> ("POST", "/sessions")."""
    method, _, path = link.text().partition(" ")
    return method.upper(), path


def test_redoc_renders_every_operation_offline(served: Served, tmp_path: Path) -> None:
    """ReDoc 3 routes each tag to a page of its own and keeps the side menu's tag groups
    folded on the overview: the overview lists every tagged operation's method and path,
    and opening each tag's page unfolds its operations, by summary, in the menu."""
    url = f"{served.base_url}/redoc"
    overview = render(url, tmp_path / "overview")
    page = parse(overview.dom)
    ops = operations(served.document)
    text = page.text()

    assert "Failed to load API description" not in text, text[:2000]
    title = served.document["info"]["title"]
    assert title in text, (
        f"API title {title!r} not on the ReDoc page (bundle not loaded?)\n"
        f"{text[:2000]}\n--- chromium log ---\n{overview.log}"
    )
    listed = {
        _method_path(link)
        for nav in page.find_all(data_testid="items-navigation-list")
        for link in nav.find_all(tag="a")
    }
    tagged = {(op.method, op.path) for op in ops if op.tagged}
    assert tagged <= listed, f"missing from the ReDoc overview: {sorted(tagged - listed)}"

    menu, groups = _redoc_menu(page)
    for i, group in enumerate(groups):  # open each tag's page: its menu group unfolds
        opened = render(url + group, tmp_path / f"group{i}")
        menu |= _redoc_menu(parse(opened.dom))[0]
        assert_offline(opened, served.base_url)
    for op in ops:
        label = op.summary or op.operation_id or op.path
        assert (label, op.method) in menu, (
            f"{op.method} {op.path} ({label!r}) not in ReDoc's menu: {sorted(menu)}"
        )
    assert_offline(overview, served.base_url)


async def test_pages_name_only_the_hub_and_cache_sensibly() -> None:
    """No outside URL in the pages; assets are cached for good only under their hash."""
    transport = httpx.ASGITransport(app=Starlette(routes=docs.routes))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        pages = {path: await client.get(path) for path in ("/docs", "/redoc")}
        for path, response in pages.items():
            assert response.status_code == 200, path
            assert "://" not in response.text, f"{path} names an outside URL"
            assert response.headers["cache-control"] == "no-cache"
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "connect-src 'self'" in csp
        assert "persistAuthorization: true" in pages["/docs"].text
        assert '<script type="module"' in pages["/redoc"].text

        assets = [u for u in pages["/docs"].text.split('"') if u.startswith("/static/docs/")]
        assert len(assets) == 4, assets  # stylesheet, 2 favicons, bundle
        for url in assets:
            response = await client.get(url)
            assert response.status_code == 200, url
            assert "immutable" in response.headers["cache-control"], url
            etag = response.headers["etag"]
            again = await client.get(url, headers={"if-none-match": etag})
            assert again.status_code == 304, url

        plain = await client.get("/static/docs/redoc/redoc.standalone.js")
        assert plain.status_code == 200
        assert plain.headers["content-type"].startswith("text/javascript")
        assert plain.headers["cache-control"] == "public, max-age=3600"
        stale = await client.get("/static/docs/redoc/redoc.standalone.js?v=0000")
        assert stale.headers["cache-control"] == "public, max-age=3600"
        missing = await client.get("/static/docs/nothing-here.js")
        assert missing.status_code == 404
