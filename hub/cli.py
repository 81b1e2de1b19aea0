"""The `hub` command: serve, db (upgrade/downgrade/current/history/init)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config

from hub.settings import Settings, SettingsError

log = logging.getLogger("hub")


def alembic_config() -> Config:
    """Alembic's Config for the repository's alembic.ini, without Alembic's own flags."""
    root = Path(__file__).resolve().parent.parent
    ini = root / "alembic.ini"
    if not ini.is_file():
        raise SystemExit(
            "alembic.ini not found next to the hub package; install the hub from its "
            "repository with `pip install -e .` to use migrations"
        )
    return Config(str(ini))


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured DATABASE_URL, or a running embedded PostgreSQL for the duration."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    from hub.storage.embedded import start_embedded

    log.info("no DATABASE_URL set: using the embedded PostgreSQL")
    embedded = start_embedded(settings.data_dir)
    try:
        yield embedded.url
    finally:
        embedded.stop()


def run_db(args: argparse.Namespace, settings: Settings) -> int:
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


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from hub.edge import GuardedHttpToolsProtocol, QuietWebSocketProtocol

    if args.workers is not None and args.workers > 1 and settings.backplane_kind == "memory":
        # Each worker holds its own live sessions: without a backplane between them, a watcher
        # on one worker would never see the mirror on another.
        print(
            "hub: --workers > 1 needs a backplane between the workers: set "
            "HUB_BACKPLANE=postgres (no extra service) or HUB_BACKPLANE=redis://host:6379/0",
            file=sys.stderr,
        )
        return 2

    with database_url(settings) as url:
        os.environ["DATABASE_URL"] = url  # the workers build their Settings from it
        if settings.auto_migrate and not args.no_migrate:
            command.upgrade(alembic_config(), "head")
        uvicorn.run(
            "hub.app:create_app",
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
            log_level=settings.log_level,
            timeout_graceful_shutdown=30,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="Mirror Hub")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub (HTTP API and WebSockets)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes")
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start"
    )

    token = sub.add_parser("token", help="credentials")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a new signed token")
    create.add_argument("--role", required=True, choices=["admin", "therapist", "mirror"])
    create.add_argument("--name", required=True, help="who the token is for (its subject)")
    create.add_argument("--ttl", default="8h", help="lifetime: 8h, 30m, 7d … (default 8h)")
    create.add_argument("--session", help="the session a mirror token may write")

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current", "history", "init"])
    db.add_argument("revision", nargs="?", help="target revision (upgrade: head, downgrade: -1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"hub: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command == "serve":
        return run_serve(args, settings)
    if args.command == "token":
        return run_token(args, settings)
    return run_db(args, settings)


def run_token(args: argparse.Namespace, settings: Settings) -> int:
    from hub.auth import parse_ttl, token_service

    try:
        ttl = parse_ttl(args.ttl)
        session_id = uuid.UUID(args.session) if args.session else None
        service, _ = token_service(settings)
        if service is None:
            raise ValueError("authentication is disabled (HUB_AUTH_DISABLED); no token needed")
        print(service.issue(args.role, args.name, ttl, session_id=session_id))
    except ValueError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
