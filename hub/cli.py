"""The `hub` command: serve, token create, db (upgrade/downgrade/current/history/init)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import alembic.util
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from hub import logs
from hub.settings import Settings, SettingsError

log = logging.getLogger("hub")

# How long `hub serve --no-migrate` waits for the database before starting without it.
DATABASE_PROBE_TIMEOUT_S = 5


def alembic_config() -> Config:
    """Alembic's Config for the migrations shipped inside the package (hub/migrations), so an
    installed wheel migrates as well as a checkout. No ini file: the hub's own logging stays
    (env.py runs fileConfig only for a Config read from a file)."""
    config = Config()
    config.set_main_option("script_location", "hub:migrations")
    config.set_main_option("path_separator", "os")
    return config


@contextlib.contextmanager
def database_url(settings: Settings, *, watch: bool = False) -> Iterator[str]:
    """The configured DATABASE_URL, or the data directory's embedded PostgreSQL for the
    duration (started unless another process already runs it; stopped when this process was
    its last user). `watch`: start it again if it dies meanwhile."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    from hub.storage.embedded import start_embedded

    embedded = start_embedded(settings.data_dir)
    try:
        if watch:
            embedded.watch()
        yield embedded.url
    finally:
        embedded.stop()


# --- Errors a person running the hub can fix: one place that words them ---------------------


def explain(exc: BaseException, settings: Settings) -> str | None:
    """One or two lines naming the problem and what to check, for an error the configuration
    or the environment causes; None for anything else (a bug: its traceback is wanted)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the cause chain, outermost first
        seen.add(id(current))
        message = _explain_one(current, settings)
        if message is not None:
            return message
        current = current.__cause__ or current.__context__
    return None


def _database(settings: Settings) -> tuple[str, str, str]:
    """(host:port, user, database) of DATABASE_URL, for messages; never the password."""
    if settings.database_url is None:
        return "the embedded PostgreSQL", "postgres", "postgres"
    url = make_url(settings.database_url)
    return f"{url.host or 'localhost'}:{url.port or 5432}", url.username or "", url.database or ""


def _explain_one(exc: BaseException, settings: Settings) -> str | None:
    import asyncpg

    from hub.storage.embedded import EmbeddedError

    if isinstance(exc, EmbeddedError):  # its message already says what to do
        return str(exc)
    where, user, database = _database(settings)
    if isinstance(exc, socket.gaierror):
        host = where.rsplit(":", 1)[0]
        return (
            f"cannot resolve the database host {host!r} ({exc.strerror}): "
            "check the host name in DATABASE_URL and this machine's DNS"
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"PostgreSQL at {where} refused the connection: is the server running, and are "
            "the host and port in DATABASE_URL right?"
        )
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
    ):
        return (
            f"no answer from PostgreSQL at {where}: check the host and port in DATABASE_URL "
            "and any firewall between this machine and the database"
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (
            f"PostgreSQL at {where} refused the password of user {user!r}: check the user "
            "and password in DATABASE_URL"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"database {database!r} does not exist on PostgreSQL at {where}: create it "
            f"(createdb {database}) or fix the database name in DATABASE_URL"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        # The server's words: 'role "x" does not exist', 'no pg_hba.conf entry for …'.
        return f"PostgreSQL at {where} refused user {user!r}: {exc}; check DATABASE_URL"
    if isinstance(exc, alembic.util.CommandError):  # e.g. an unknown revision
        return f"{exc}; `hub db history` lists the revisions"
    if isinstance(exc, OSError) and exc.filename is not None:
        # Creating the data directory or its files (the signing secret, the embedded server).
        return (
            f"cannot use {exc.filename}: {exc.strerror}; the data directory "
            f"{settings.data_dir} must be writable by this user (or set HUB_DATA_DIR)"
        )
    return None


def fail(exc: BaseException, settings: Settings) -> int:
    """Say what went wrong and give the exit status: a known operating error in a line (its
    traceback only at debug level), anything else with its traceback, through the log so that
    HUB_LOG_FORMAT=json keeps it in one record."""
    message = explain(exc, settings)
    if message is None:
        log.critical("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return 1
    log.debug("details of the error below", exc_info=exc)
    log.error("%s", message)
    return 1


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


# --- Commands ---------------------------------------------------------------------------------


def run_db(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "downgrade" and not confirm_downgrade(args):
        return 2
    with database_url(settings) as url:
        # env.py reads DATABASE_URL through Settings; hand it the one resolved here.
        os.environ["DATABASE_URL"] = url
        config = alembic_config()
        if args.action == "upgrade":
            command.upgrade(config, args.revision or "head")
        elif args.action == "downgrade":
            command.downgrade(config, args.revision or "-1")
        elif args.action == "current":
            command.current(config, verbose=True)
        elif args.action == "history":
            command.history(config, verbose=True)
        elif args.action == "init":
            from hub.storage.engine import init_db, make_engine

            async def create() -> None:
                engine = make_engine(url)
                await init_db(engine)
                await engine.dispose()

            asyncio.run(create())
            print("tables created (no migration history recorded; prefer `hub db upgrade`)")
    return 0


def confirm_downgrade(args: argparse.Namespace) -> bool:
    """A downgrade drops tables and the data in them: ask first, unless --yes."""
    if args.yes:
        return True
    target = args.revision or "-1 (one step back)"
    if not sys.stdin.isatty():
        print(
            f"hub: `hub db downgrade` to {target} drops tables and their data; no terminal to "
            "ask for confirmation, so pass --yes",
            file=sys.stderr,
        )
        return False
    answer = input(f"Downgrade the database to {target}? This drops tables and data. [y/N] ")
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("hub: downgrade cancelled", file=sys.stderr)
    return False


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
    from hub.edge import GuardedHttpToolsProtocol, QuietWebSocketProtocol

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


def run_token(args: argparse.Namespace, settings: Settings) -> int:
    from hub.auth import parse_ttl, show_first_admin, token_service

    try:
        ttl = parse_ttl(args.ttl)
        session_id = uuid.UUID(args.session) if args.session else None
        service, first_admin = token_service(settings)
        if service is None:
            raise ValueError("authentication is disabled (HUB_AUTH_DISABLED); no token needed")
        print(service.issue(args.role, args.name, ttl, session_id=session_id))
    except ValueError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    if first_admin is not None:
        # The signing secret was made just now, so `hub serve` will find it and not show the
        # first admin token: show it here, where the secret was made (if this is not the
        # hub's data directory, the path in the box says so).
        show_first_admin(first_admin, settings)
    return 0


def package_version() -> str:
    try:
        return importlib.metadata.version("mirror-hub")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    # Every option's help ends with its default.
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="hub", description="Mirror Hub", formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run the hub (HTTP API and WebSockets)", formatter_class=formatter
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--reload", action="store_true", help="restart on code changes (development)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes; more than 1 needs HUB_BACKPLANE=postgres or redis://…",
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply pending migrations at start (also HUB_AUTO_MIGRATE=false)",
    )

    token = sub.add_parser("token", help="credentials", formatter_class=formatter)
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="print a new signed token", formatter_class=formatter
    )
    create.add_argument(
        "--role", required=True, choices=["admin", "therapist", "mirror"], help="what it may do"
    )
    create.add_argument("--name", required=True, help="who the token is for (its subject)")
    create.add_argument("--ttl", default="8h", help="lifetime with a unit: 90s, 30m, 8h or 7d")
    create.add_argument(
        "--session", default=None, help="the session a mirror token may write (mirror only)"
    )

    db = sub.add_parser("db", help="database migrations", formatter_class=formatter)
    db.add_argument(
        "action",
        choices=["upgrade", "downgrade", "current", "history", "init"],
        help="what to do",
    )
    db.add_argument(
        "revision",
        nargs="?",
        default=None,
        help="target revision (upgrade: head, downgrade: -1, one step back)",
    )
    db.add_argument(
        "--yes", action="store_true", help="downgrade without asking (it drops tables and data)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"hub: configuration error: {exc}", file=sys.stderr)
        return 2
    log_config = logs.configure(settings)
    try:
        if args.command == "serve":
            return run_serve(args, settings, log_config)
        if args.command == "token":
            return run_token(args, settings)
        return run_db(args, settings)
    except Exception as exc:
        return fail(exc, settings)


if __name__ == "__main__":
    sys.exit(main())
