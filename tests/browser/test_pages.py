"""The landing page `/` and the protocol page `/docs/protocol`: rendered by a real hub, loaded in
headless Chromium that can reach nothing but 127.0.0.1, with no Content Security Policy
violation; every link on them leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

import hub
from hub.endpoints.docs import PROTOCOL_MD
from tests.support import ROOT
from tests.support.browser import Node, parse, render
from tests.support.live import HubProcess

pytestmark = pytest.mark.slow


def test_packaged_protocol_is_docs_protocol() -> None:
    """The hub serves the copy inside its package (so an installed wheel has it); it must be
    docs/protocol.md as it is now. After editing docs/protocol.md, copy it over."""
    assert PROTOCOL_MD.read_text() == (ROOT / "docs" / "protocol.md").read_text(), (
        "hub/static/docs/protocol.md differs from docs/protocol.md: "
        "cp docs/protocol.md hub/static/docs/protocol.md"
    )


def links(page: Node) -> list[str]:
    return [a.attrs["href"] for a in page.find_all(tag="a") if "href" in a.attrs]


def assert_clean(log: str, requested: list[str]) -> None:
    assert "Content Security Policy" not in log, log
    outside = [u for u in requested if not u.startswith("http://127.0.0.1:")]
    assert not outside, outside


async def test_landing_page(hub_server: HubProcess, tmp_path: Path) -> None:
    rendered = render(f"{hub_server.http}/", tmp_path)
    assert_clean(rendered.log, rendered.requested)
    page = parse(rendered.dom)
    text = page.text()
    assert f"Mirror Hub {hub.__version__}" in text
    hrefs = links(page)
    for wanted in ("/docs", "/redoc", "/openapi.json", "/docs/protocol", "/health/ready"):
        assert wanted in hrefs, hrefs
    async with httpx.AsyncClient(base_url=hub_server.http) as http:
        for href in hrefs:
            assert (await http.get(href)).status_code == 200, href
        response = await http.get("/")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script at all


async def test_protocol_page(hub_server: HubProcess, tmp_path: Path) -> None:
    rendered = render(f"{hub_server.http}/docs/protocol", tmp_path)
    assert_clean(rendered.log, rendered.requested)
    page = parse(rendered.dom)
    source = PROTOCOL_MD.read_text()
    headings = re.findall(r"^#{1,3} (.+)$", source, flags=re.MULTILINE)
    rendered_headings = [
        node.text().strip() for tag in ("h1", "h2", "h3") for node in page.find_all(tag=tag)
    ]
    assert sorted(rendered_headings) == sorted(h.replace("`", "") for h in headings)
    assert len(page.find_all(tag="table")) == source.count("\n|---")
    # Every link within the page reaches a heading of it.
    ids = {node.attrs["id"] for node in page.iter() if "id" in node.attrs}
    anchors = [href[1:] for href in links(page) if href.startswith("#")]
    assert anchors and set(anchors) <= ids, set(anchors) - ids


async def test_openapi_links_the_protocol(hub_server: HubProcess) -> None:
    async with httpx.AsyncClient(base_url=hub_server.http) as http:
        document = (await http.get("/openapi.json")).json()
    assert "(/docs/protocol)" in document["info"]["description"]
