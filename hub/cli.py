"""The `hub` command: serve, token create, db (upgrade/downgrade/current/history/init).

This module parses the arguments and dispatches; each job lives in its own module:
`hub serve` in cli_serve, `hub db …` in cli_database, the wording of errors in cli_errors."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import uuid

from hub import logs
from hub.cli_database import alembic_config, run_db
from hub.cli_errors import explain, fail
from hub.cli_serve import run_serve
from hub.settings import Settings, SettingsError

# Imported from here by the health probe, the test support and the tests.
__all__ = ["alembic_config", "build_parser", "explain", "main"]


def run_token(args: argparse.Namespace, settings: Settings) -> int:
    from hub.auth import parse_ttl, show_first_admin, token_service

    try:
        ttl = parse_ttl(args.ttl)
        session_id = uuid.UUID(args.session) if args.session else None
        service, first_admin = token_service(settings)
        if service is None:
            raise ValueError("authentication is disabled (HUB_AUTH_DISABLED); no token needed")
        lines = [service.issue(args.role, args.name, ttl, session_id=session_id)]
        if args.login:
            from hub.login_codes import LOGIN_CODE_TTL_S, issue_login_code

            code = issue_login_code(service, args.role, args.name, ttl)
            # In the fragment: browsers never send it, so it stays out of every access log.
            link = f"{args.url.rstrip('/')}/console/login#code={code}"
            minutes = LOGIN_CODE_TTL_S // 60
            lines.append(f"Console sign-in link (works once, for {minutes} minutes): {link}")
        print("\n".join(lines))
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
    create.add_argument(
        "--login",
        action="store_true",
        help="also print a one-time console sign-in link (therapist or admin; the console "
        "stays signed in for --ttl)",
    )
    create.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the hub's address, for the --login link"
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
