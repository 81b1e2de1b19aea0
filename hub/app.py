"""create_app(settings): the routes, plus a lifespan that builds and tears down everything."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType

import sqlalchemy.exc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from hub import catalogue, metrics
from hub.auth import announce, token_service
from hub.context import HubContext
from hub.edge import HostGuard
from hub.endpoints import api, client_assets, console, console_auth, docs, landing, watch_page
from hub.endpoints.errors import HTTPError, error_response
from hub.endpoints.guard import guard
from hub.endpoints.mirror_ws import mirror_endpoint
from hub.endpoints.responses import json_response
from hub.endpoints.watch_many import watch_many_endpoint
from hub.endpoints.watch_ws import watch_endpoint
from hub.live.node import LiveHub
from hub.openapi import build_openapi
from hub.settings import Settings
from hub.storage.audit_log import AuditLog, AuditUnavailable
from hub.storage.engine import make_engine, make_sessionmaker

log = logging.getLogger("hub")

# The garbage collector's thresholds for this process (CPython's default is 700, 10, 10).
# Nearly every object the live path makes (a frame, its coroutine, handle and future) is freed
# by its reference count within a loop turn or two; a young-generation pass every 700 net
# allocations catches thousands of them alive, promotes them, and so triggers full passes over
# every session's state. With 20,000 most are gone before a pass: measured with
# benchmarks/live_bench.py max at 200 sessions, GC time fell from 11 % of the hub's CPU to about
# 1 %, CPU per delivery by 10 % and p99 from 350-390 ms to 110-115 ms. A young pass then takes
# up to about 12 ms (the full passes it replaces took up to 280 ms).
GC_THRESHOLDS = (20_000, 10, 10)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    openapi_document = build_openapi(api.OPERATIONS)
    # Read here, not in the lifespan: a file made unreadable since the settings checked it
    # fails the app's creation, with CatalogueError's message.
    metric_catalogue = catalogue.load(settings.metrics_catalogue)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        embedded = None
        url = settings.database_url
        if url is None:
            from hub.storage.embedded import start_embedded

            # `hub serve` starts the embedded server itself; this path is for running the
            # factory directly (uvicorn hub.app:create_app --factory).
            embedded = start_embedded(settings.data_dir)
            embedded.watch()
            url = embedded.url
        tokens, first_admin = token_service(settings)
        announce(tokens, first_admin, settings)
        metrics.forget_dead_workers(settings.prometheus_multiproc_dir)
        engine = make_engine(url, timeout_s=settings.db_statement_timeout_s)
        autocommit = make_engine(url, timeout_s=settings.db_statement_timeout_s, autocommit=True)
        live = LiveHub(settings, url)
        await live.start()
        audit = AuditLog(
            autocommit,
            flush_ms=settings.audit_flush_ms,
            batch_rows=settings.audit_batch_rows,
            queue_rows=settings.audit_queue_rows,
        )
        audit.start()
        app.state.hub = HubContext(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine),
            autocommit=autocommit,
            live=live,
            audit=audit,
            tokens=tokens,
            catalogue=metric_catalogue,
        )
        restore_signals = drain_on_signal(live)
        # Everything built so far lives as long as the process: keep it out of the garbage
        # collector's full scans, which otherwise grow with the write buffer and stall the loop.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        folding = asyncio.create_task(metrics.fold_periodically())
        try:
            yield
        finally:
            restore_signals()
            await live.shutdown()
            folding.cancel()  # folds once more: the shutdown's acks count
            await asyncio.gather(folding, return_exceptions=True)
            # After uvicorn has finished every request: each read's row is queued by now.
            await audit.close()
            await engine.dispose()
            await autocommit.dispose()
            metrics.worker_exiting(settings.prometheus_multiproc_dir)
            if embedded is not None:
                embedded.stop()

    routes: list[BaseRoute] = [*api.routes()]
    routes.append(Route("/openapi.json", openapi, include_in_schema=False))
    routes.extend(docs.routes)
    routes.extend(landing.routes)
    if not settings.public_docs:  # the documents then need any staff credential
        routes = [
            Route(r.path, guard(r.endpoint, ("admin", "therapist")), methods=r.methods)
            if isinstance(r, Route) and r.path in docs.GUARDED_PATHS
            else r
            for r in routes
        ]
    # Admin only by default: the figures tell how busy the clinic is.
    scrape: Callable[[Request], Awaitable[Response]] = metrics.metrics_endpoint
    if not settings.public_metrics:
        scrape = guard(scrape, ("admin",))
    routes.append(Route("/metrics", scrape, methods=["GET"], include_in_schema=False))
    routes.append(WebSocketRoute("/ws/sessions/{session_id}/mirror", mirror_endpoint))
    routes.append(WebSocketRoute("/ws/sessions/{session_id}/watch", watch_endpoint))
    routes.append(WebSocketRoute("/ws/watch", watch_many_endpoint))
    routes.extend(watch_page.routes)
    routes.extend(client_assets.routes)
    routes.extend(console_auth.routes)
    routes.extend(console.routes)
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        # The Host check first: a refused request is not counted as a route's.
        middleware=[
            Middleware(HostGuard, allowed_hosts=settings.allowed_hosts),
            Middleware(metrics.HTTPMetrics),
        ],
        exception_handlers={
            HTTPError: _hub_error,
            HTTPException: _starlette_error,
            ClientDisconnect: _client_left,
            # The database went away mid-request: a retryable 503, not a 500.
            OSError: _database_unavailable,
            sqlalchemy.exc.OperationalError: _database_unavailable,
            sqlalchemy.exc.InterfaceError: _database_unavailable,
            AuditUnavailable: _database_unavailable,
            Exception: _unexpected_error,
        },
    )


async def _hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error_response(exc)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    # Unknown paths (404) and wrong methods (405) answer in the same JSON shape as the API.
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(HTTPError(exc.status_code, code, str(exc.detail)))


async def _client_left(request: Request, exc: Exception) -> Response:
    # The client went away while sending its body: nobody to answer, nothing went wrong here.
    log.info("client left during %s %s", request.method, request.url.path)
    return Response(status_code=400)  # never sent: the connection is gone


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__
    )
    return error_response(HTTPError(503, "database_unavailable", "database unavailable; retry"))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(HTTPError(500, "internal_error", "internal error; see the hub's log"))


def drain_on_signal(live: LiveHub) -> Callable[[], None]:
    """Under uvicorn, run `live.shutdown()` on SIGTERM/SIGINT *before* uvicorn's own shutdown.

    uvicorn closes every WebSocket with 1012 first and runs the lifespan shutdown last, too
    late to ack what the flusher stores. So we wrap its handlers: store and ack everything,
    close with 1012 ourselves, then hand the signal to uvicorn. Elsewhere (tests with an
    in-process client) the handlers are left alone. Returns a function that restores them.
    """
    import uvicorn

    loop = asyncio.get_running_loop()
    previous: dict[int, object] = {}

    draining: list[asyncio.Task[None]] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if draining:
            # A second Ctrl-C would be uvicorn's "force quit": it skips the application's
            # shutdown, and the lifespan cancelled at exit logs a traceback. The drain is
            # bounded (the flush, then the closes, time out): let it finish.
            log.info("already stopping; storing what is buffered first")
            return
        uvicorn_handler = previous[signum]

        def then_uvicorn(_: object) -> None:
            assert callable(uvicorn_handler)
            uvicorn_handler(signum, frame)

        task = loop.create_task(live.shutdown())
        task.add_done_callback(then_uvicorn)
        draining.append(task)

    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if isinstance(getattr(current, "__self__", None), uvicorn.Server):
            previous[sig] = current
            signal.signal(sig, handler)

    def restore() -> None:
        for sig, original in previous.items():
            signal.signal(sig, original)  # type: ignore[arg-type]

    return restore
