"""Headless Chromium: render a page offline (only 127.0.0.1 reachable) and parse its DOM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")


def chromium() -> str:
    configured = os.environ.get("CHROMIUM")
    if configured:
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = (
        "Chromium is needed to render pages in a real browser but was not found on PATH "
        f"(looked for {', '.join(CHROMIUM_NAMES)}; or set CHROMIUM=/path/to/binary). "
        "On Debian: apt-get update && apt-get install -y chromium"
    )
    # CI installs Chromium, so there a missing browser is a failure, never a silent skip; on a
    # developer's machine without one, the rest of the suite still runs.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Rendered:
    dom: str
    requested: list[str]  # URLs the page itself asked for (not the browser's own traffic)
    log: str


def render(url: str, workdir: Path) -> Rendered:
    """The DOM of `url` after its scripts ran, in headless Chromium that can reach only
    127.0.0.1."""
    workdir.mkdir(parents=True, exist_ok=True)
    net_log = workdir / "netlog.json"
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={workdir / 'profile'}",
        # Every host but 127.0.0.1 fails to resolve: rendering proves the page is offline.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={net_log}",
        "--enable-logging=stderr",  # the page's console messages, for failure reports
        "--window-size=1280,1000",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90, check=False)
    # Headless Chromium in a container complains at length about D-Bus; keep the rest.
    log = "\n".join(line for line in proc.stderr.splitlines() if "dbus" not in line)[-4000:]
    assert proc.returncode == 0, f"chromium exited with {proc.returncode} on {url}:\n{log}"
    assert proc.stdout.strip(), f"chromium dumped no DOM for {url}:\n{log}"
    return Rendered(proc.stdout, _page_requests(net_log, url), log)


def _page_requests(net_log: Path, page_url: str) -> list[str]:
    """URLs that the page (anything initiated by its origin) requested, from the net log."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(page_url))
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and params.get("initiator") == origin:
            urls.append(params["url"])
    return urls


_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        if self.tag in {"script", "style", "noscript", "template"}:
            return ""
        parts = (c if isinstance(c, str) else c.text() for c in self.children)
        return " ".join(" ".join(parts).split())

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(
        self, *, tag: str | None = None, cls: str | None = None, **attrs: str
    ) -> list[Node]:
        """Descendants (and self), in document order, with that tag name, class and
        attribute values (`data_testid="x"` stands for the attribute data-testid)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and all(n.attrs.get(k) == v for k, v in wanted.items())
        ]

    def first(self, *, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node | None:
        found = self.find_all(tag=tag, cls=cls, **attrs)
        return found[0] if found else None


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(dom: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(dom)
    builder.close()
    return builder.root
