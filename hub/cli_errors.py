"""Errors a person running the hub can fix: one place that words them."""

from __future__ import annotations

import errno
import logging
import socket

import alembic.util
from sqlalchemy.engine import make_url

from hub.settings import Settings

log = logging.getLogger("hub")


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
