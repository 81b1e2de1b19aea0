"""`hub db …`: migrations with alembic, and the database URL every command uses (DATABASE_URL
or the data directory's embedded PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator

from alembic import command
from alembic.config import Config

from hub.settings import Settings


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
