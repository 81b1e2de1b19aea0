"""What stands at the hub's edge, before a request reaches a route: the Host allow-list (an
ASGI middleware) and uvicorn's protocols with the limits they lack.

- `HostGuard`: a page of another site whose name an attacker points at this machine (DNS
  rebinding) reaches the hub with that name in `Host`; only the names in
  HUB_ALLOWED_HOSTS (by default: the address the connection came in on, localhost,
  127.0.0.1, ::1) are answered.
- `GuardedHttpToolsProtocol`: httptools accepts a request head of any size and uvicorn
  waits for it forever once its first byte came. Here a head over HUB_HTTP_MAX_HEADER_BYTES
  answers 431, a head not complete within HUB_HTTP_HEADER_TIMEOUT_S answers 408, and a body
  not received within HUB_HTTP_BODY_TIMEOUT_S closes the connection.

uvicorn's WebSocket protocol, with what the hub adds to it, is in `hub.ws_protocol`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hub.settings import Settings

log = logging.getLogger("hub.edge")

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

Scope = dict[str, Any]
Receive = Any
Send = Any
ASGIApp = Any


def host_name(host_header: str) -> str:
    """The name in a Host header, without the port: "[::1]:8000" → "::1"; a fully qualified
    name's final dot is dropped ("localhost.:8000" → "localhost": the same name)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return (name if name and port.isdigit() else host).removesuffix(".")


def _same_address(name: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(name) == ipaddress.ip_address(address)
    except ValueError:
        return False


class HostGuard:
    """Answer only requests (HTTP and WebSocket) that name an allowed host."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed = frozenset(allowed_hosts) if allowed_hosts else LOCAL_HOSTS

    def allows(self, scope: Scope) -> bool:
        if self.any_host:
            return True
        raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
        if raw is None:
            # HTTP/1.1 requires Host. An HTTP/1.0 request without one is no rebinding attack
            # (browsers always send Host) but a load balancer's health check (HAProxy's
            # `option httpchk` sends none), which must not take the hub out of service.
            return scope.get("http_version") == "1.0"
        name = host_name(raw.decode("latin-1"))
        if name in self.allowed:
            return True
        # The address the client connected to is its own name for us (not a rebinding): a
        # hub bound to 0.0.0.0 answers http://192.0.2.10:8000 without configuration.
        server = scope.get("server")
        return server is not None and _same_address(name, server[0])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            await self.app(scope, receive, send)
            return
        host = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"")
        # Named, so that a proxy's public name missing from the list is easy to spot.
        log.info(
            "refused a request for host %r: not in HUB_ALLOWED_HOSTS", host[:100].decode("latin-1")
        )
        if scope["type"] == "websocket":
            # Before accept, a close is answered as HTTP 403 to the upgrade request.
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        body = orjson.dumps(
            {
                "error": "host_not_allowed",
                "message": "this host name is not served here; see HUB_ALLOWED_HOSTS",
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@functools.cache
def _settings() -> Settings:
    # uvicorn builds its protocols itself, in each worker process: they read the settings
    # once per process, as the app does.
    return Settings.from_env()


def _simple_response(status: int, phrase: str, error: str, message: str) -> bytes:
    body = orjson.dumps({"error": error, "message": message})
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = _settings()
        self.max_head_bytes = settings.http_max_header_bytes
        self.head_timeout_s = settings.http_header_timeout_s
        self.body_timeout_s = settings.http_body_timeout_s
        self.reading_head = True  # until a request's head is complete
        self.head_bytes = 0  # bytes received of the head being read (the parser keeps them)
        self.rejected = False
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline(self.head_timeout_s, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return
        if self.reading_head:
            self.head_bytes += len(data)
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            self._set_deadline(None)
        elif self.reading_head and self.head_bytes > self.max_head_bytes and not self.rejected:
            self._reject(431, "Request Header Fields Too Large", "request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        if self.deadline is None:  # the next request on a kept-alive connection
            self._set_deadline(self.head_timeout_s, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        if not self.rejected:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.rejected:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.rejected:
            return
        # The head came in whole within one read: count it exactly (the check in
        # `data_received` sees only heads still incomplete after a read).
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_head_bytes:
            self._reject(431, "Request Header Fields Too Large", "request head too large")
            return
        self.reading_head = False
        self.head_bytes = 0
        self._set_deadline(self.body_timeout_s, self._body_too_slow)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.rejected:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.rejected:
            return
        self._set_deadline(None)
        self.reading_head = True  # what comes next on this connection is the next head
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if not self.rejected:
            self._set_deadline(None)
            super().handle_websocket_upgrade()

    def _set_deadline(self, seconds: float | None, then: Callable[[], None] | None = None) -> None:
        """Cancel the running deadline; with `seconds`, call `then` after them."""
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = None
        if seconds is not None and then is not None:
            self.deadline = self.loop.call_later(seconds, then)

    def _head_too_slow(self) -> None:
        self.deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # an idle connection: nothing was asked, nothing to answer
            return
        self._reject(408, "Request Timeout", "request head not received in time")

    def _body_too_slow(self) -> None:
        self.deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        log.info(
            "%s: request body not received within %ss; connection closed",
            self._peer(),
            self.body_timeout_s,
        )
        self.transport.close()  # the app reads a disconnect (and answers nobody)

    def _reject(self, status: int, phrase: str, message: str) -> None:
        self.rejected = True
        self._set_deadline(None)
        log.info("%s: %s; answered %d and closed", self._peer(), message, status)
        error = "request_header_too_large" if status == 431 else "request_timeout"
        self.transport.write(_simple_response(status, phrase, error, message))
        self.transport.close()

    def _peer(self) -> str:
        return self.client[0] if self.client else "unknown client"
