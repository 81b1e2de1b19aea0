"""`hub serve`: the database (embedded or not), migrations, the signing secret, then uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from alembic import command

from hub.cli_database import alembic_config, database_url
from hub.cli_errors import explain
from hub.settings import Settings

log = logging.getLogger("hub")

# How long `hub serve --no-migrate` waits for the database before starting without it.
DATABASE_PROBE_TIMEOUT_S = 5


async def _probe(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, connect_args={"timeout": DATABASE_PROBE_TIMEOUT_S})
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def warn_if_unreachable(url: str, settings: Settings) -> None:
    """Without migrations nothing at start touches the database; say at once if it does not
    answer (the hub starts anyway and serves the live path while it is away)."""
    try:
        asyncio.run(_probe(url))
    except Exception as exc:
        message = explain(exc, settings)
        if message is None:
            message = f"{type(exc).__name__}: {exc}"
        log.warning("starting anyway, without migrations: %s", message)


def serve_one_process(config: Any, after_start: Callable[[], None]) -> None:
    """uvicorn's Server in this process, calling `after_start` once it listens (after its
    "Uvicorn running on …" line)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                after_start()

    # uvicorn ends by raising the signal it caught again; Ctrl-C is a normal way to stop
    # (uvicorn.run() suppresses it the same way).
    with contextlib.suppress(KeyboardInterrupt):
        Server(config).run()


def run_serve(args: argparse.Namespace, settings: Settings, log_config: dict[str, Any]) -> int:
    import uvicorn

    from hub.auth import ensure_secret, show_first_admin
    from hub.edge import GuardedHttpToolsProtocol
    from hub.ws_protocol import QuietWebSocketProtocol

    if args.workers is not None and args.workers > 1 and settings.backplane_kind == "memory":
        # Each worker holds its own live sessions: without a backplane between them, a watcher
        # on one worker would never see the mirror on another.
        log.error(
            "--workers > 1 needs a backplane between the workers: set "
            "HUB_BACKPLANE=postgres (no extra service) or HUB_BACKPLANE=redis://host:6379/0"
        )
        return 2

    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_interrupts())
        if settings.database_url is None:
            from hub.storage.embedded import EmbeddedError, claim_for_serving

            alone = settings.backplane_kind == "memory"
            try:
                stack.enter_context(claim_for_serving(settings.data_dir, args.port, alone=alone))
            except EmbeddedError as exc:  # another hub serves it, or it is unusable
                log.error("%s", exc)
                return 2
        url = stack.enter_context(database_url(settings, watch=True))
        stack.enter_context(metrics_dir(args.workers))
        os.environ["DATABASE_URL"] = url  # the workers build their Settings from it
        if settings.auto_migrate and not args.no_migrate:
            command.upgrade(alembic_config(), "head")
        else:
            warn_if_unreachable(url, settings)
        # The signing secret is made here, in this process, so that the first admin token
        # can be shown after the server's own start lines; and only once the database is
        # known to work, so a first attempt that fails on it does not use up that one showing.
        first_admin = ensure_secret(settings)
        options: dict[str, Any] = dict(
            factory=True,
            host=args.host,
            port=args.port,
            reload=args.reload,
            workers=args.workers,
            loop="uvloop",
            # httptools and websockets-sansio, with the limits they lack (hub/edge.py).
            http=GuardedHttpToolsProtocol,
            ws=QuietWebSocketProtocol,
            ws_per_message_deflate=False,
            ws_max_size=settings.ws_max_message_bytes,
            ws_ping_interval=settings.ws_ping_interval_s,
            ws_ping_timeout=settings.ws_ping_timeout_s,
            lifespan="on",
            # Every process (workers included) installs the hub's logging configuration.
            log_config=log_config,
            log_level=settings.log_level,
            timeout_graceful_shutdown=30,
        )

        def show_token() -> None:
            if first_admin is not None:
                show_first_admin(first_admin, settings, f"http://{args.host}:{args.port}")

        if args.reload or (args.workers or 1) > 1:
            # Supervised processes: uvicorn gives no hook after they start, so the token
            # comes before their start lines.
            show_token()
            uvicorn.run("hub.app:create_app", **options)
        else:
            serve_one_process(uvicorn.Config("hub.app:create_app", **options), show_token)
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (systemd, containers) stops `hub serve` as Ctrl-C does: the embedded database
    is stopped on the way out and the exit status is 0. uvicorn drains on either signal
    (hub.app.drain_on_signal) and then raises the signal again with the handler it found
    before it started, which for SIGTERM would be the default action: death before the
    database is stopped. This handler turns it, and a SIGTERM while starting up, into
    KeyboardInterrupt, as Python does for SIGINT."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def metrics_dir(workers: int | None) -> Iterator[None]:
    """With several workers: a fresh directory where each keeps its metric values, so that
    /metrics on any of them reports the sum (prometheus-client's multiprocess mode). It must
    be set before the workers start, and is removed when they are gone."""
    if workers is None or workers <= 1:
        yield
        return
    path = tempfile.mkdtemp(prefix="hub-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(path, ignore_errors=True)
