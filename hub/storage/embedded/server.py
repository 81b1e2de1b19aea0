"""The server's process: started unless running, ready when it says so, stopped fast."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import psutil

from hub.storage.embedded.cluster import (
    POSTGRES_BIN_PATH,
    START_TIMEOUT_S,
    initdb,
    let_server_user_in,
    server_user,
)
from hub.storage.embedded.errors import EmbeddedError
from hub.storage.embedded.files import LOG_FILE, log_tail, open_log, read_from
from hub.storage.embedded.processes import (
    SIGNAL_WAIT_S,
    adopt,
    alive,
    reap_children,
    send_signal,
    wait_gone,
)

logger = logging.getLogger("hub.embedded")

# A fast shutdown gets this long before the server's processes are killed.
_STOP_TIMEOUT_S = 30.0
# Unix socket paths are limited to ~107 bytes; deeper data directories get a socket folder
# under the system's temporary folder instead.
_MAX_SOCKET_PATH = 100
# What a new server says while processes of a killed one still hold its shared memory; they
# exit within moments once they notice their postmaster is gone.
_OLD_SERVER_STILL_EXITING = "pre-existing shared memory block"


def ensure_running(data_dir: Path) -> psutil.Process:
    """The server's postmaster, started (after initdb on first use) unless already running.
    Call under the control lock."""
    pgdata = data_dir / "pgdata"
    reap_children()
    running = postmaster_from_pidfile(pgdata)
    if running is not None and _wait_ready(pgdata, running, None):
        return running
    user = server_user()
    log_fd = open_log(data_dir)
    with open(log_fd, "ab") as log:
        if not (pgdata / "PG_VERSION").exists():
            initdb(pgdata, log, user)
        if user is not None:
            let_server_user_in(pgdata, user)
            sockets = socket_dir(pgdata)
            if sockets != pgdata:
                shutil.chown(sockets, user, user)
        # Stale: it names no live server of this data. Postgres would refuse to start if the
        # pid were taken meanwhile (a zombie, pid reuse); leftover processes of the dead
        # server are still found through its shared memory, keyed by the folder's inode.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        # The socket's lock file too: it names the dead server's pid, which stays taken while
        # that server is a zombie of another hub process, and postgres would refuse to start.
        (socket_dir(pgdata) / ".s.PGSQL.5432.lock").unlink(missing_ok=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            log_start = os.fstat(log_fd).st_size
            proc = _spawn_postgres(pgdata, log, user)
            postmaster = psutil.Process(proc.pid)
            if _wait_ready(pgdata, postmaster, proc):
                return postmaster
            said = read_from(data_dir / LOG_FILE, log_start)
            if _OLD_SERVER_STILL_EXITING in said and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise EmbeddedError(
                f"embedded PostgreSQL failed to start in {pgdata}\n"
                f"--- last lines of {data_dir / LOG_FILE} ---\n{log_tail(data_dir / LOG_FILE)}"
            )


def _spawn_postgres(pgdata: Path, log: BinaryIO, user: str | None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            str(POSTGRES_BIN_PATH / "postgres"),
            *("-D", str(pgdata), "-k", str(socket_dir(pgdata))),
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
    adopt(proc)
    return proc


def _wait_ready(
    pgdata: Path, postmaster: psutil.Process, proc: subprocess.Popen[bytes] | None
) -> bool:
    """Wait until the server accepts connections; False if it exited first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    # postmaster.pid is the server's own readiness report: its 8th line turns "ready".
    while time.monotonic() < deadline:
        if (proc is not None and proc.poll() is not None) or not alive(postmaster):
            return False
        lines = _read_pidfile(pgdata)
        if len(lines) >= 8 and lines[0] == str(postmaster.pid) and lines[7] == "ready":
            return True
        time.sleep(0.05)
    raise EmbeddedError(
        f"embedded PostgreSQL in {pgdata} did not get ready within {START_TIMEOUT_S:.0f} s\n"
        f"--- last lines of {pgdata.parent / LOG_FILE} ---\n{log_tail(pgdata.parent / LOG_FILE)}"
    )


def socket_dir(pgdata: Path) -> Path:
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


def postmaster_from_pidfile(pgdata: Path) -> psutil.Process | None:
    """The live postmaster that `postmaster.pid` names, if it really is this data's server
    (not a zombie, not another process that got the pid after the server died)."""
    lines = _read_pidfile(pgdata)
    if not lines or not lines[0].isdigit():
        return None
    try:
        proc = psutil.Process(int(lines[0]))
        if alive(proc) and proc.name() == "postgres" and str(pgdata) in proc.cmdline():
            return proc
    except psutil.Error:
        pass
    return None


def shutdown(pgdata: Path) -> None:
    """Fast shutdown (SIGINT: clients are disconnected, nothing is lost); SIGKILL for whatever
    is left after the timeout."""
    postmaster = postmaster_from_pidfile(pgdata)
    if postmaster is None:
        return
    try:
        procs = [postmaster, *postmaster.children(recursive=True)]
    except psutil.Error:
        procs = [postmaster]
    logger.info("stopping the embedded PostgreSQL (pid %d)", postmaster.pid)
    # SIGTERM would be a smart shutdown, which waits for every client to disconnect.
    send_signal(postmaster, signal.SIGINT)
    wait_gone(procs, _STOP_TIMEOUT_S)
    left = [p for p in procs if alive(p)]
    if left:
        logger.warning(
            "embedded PostgreSQL did not stop in time; killing %s", [p.pid for p in left]
        )
        for proc in left:
            send_signal(proc, signal.SIGKILL)
        wait_gone(left, SIGNAL_WAIT_S)
    reap_children()
