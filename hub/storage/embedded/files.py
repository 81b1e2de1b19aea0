"""The files the embedded server keeps next to its data, and how they are opened."""

from __future__ import annotations

import os
from pathlib import Path

LOG_FILE = "postgresql.log"
USERS_FILE = "postgresql.users"
CONTROL_FILE = "postgresql.lock"
SERVE_FILE = "serve.lock"
KEEPER_FILE = "postgresql.keeper"

_LOG_TAIL_LINES = 30


def open_log(data_dir: Path) -> int:
    # Private like the data: the server logs statements that fail, with their values.
    return os.open(data_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def open_lock_file(path: Path) -> int:
    # Not inherited by child processes (Python's default): a postgres holding a user's lock
    # would keep the server counted as in use for ever.
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])
