"""The keeper: one process per running server that stops it once no user is left (the last
user may have been killed before it could)."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from hub.storage.embedded.files import KEEPER_FILE, open_lock_file, open_log
from hub.storage.embedded.processes import adopt
from hub.storage.embedded.server import postmaster_from_pidfile, shutdown
from hub.storage.embedded.users import control_lock, no_users

logger = logging.getLogger("hub.embedded")

# The keeper looks for users this often.
_KEEPER_INTERVAL_S = 1.0


def ensure_keeper(data_dir: Path) -> None:
    """Start a keeper for the server unless one runs (call under the control lock)."""
    fd = open_lock_file(data_dir / KEEPER_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # a keeper holds it
    finally:
        os.close(fd)
    # The folder holding `hub`: the keeper imports it from wherever this process did,
    # installed or not.
    root = str(Path(__file__).resolve().parents[3])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    log_fd = open_log(data_dir)
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
        adopt(keeper)
    finally:
        os.close(log_fd)


def keep(data_dir: Path) -> None:
    """The keeper: stops the server once no process uses it any more, then exits. Users stop
    it themselves when they leave; this covers a last user that was killed (a SIGKILL, the
    OOM killer), whose server would otherwise run on until some later user comes and goes."""
    fd = open_lock_file(data_dir / KEEPER_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return  # another keeper was quicker
    while True:
        time.sleep(_KEEPER_INTERVAL_S)
        if not data_dir.is_dir():
            return  # removed: nothing left to find its server by
        with control_lock(data_dir):
            if no_users(data_dir):
                if postmaster_from_pidfile(data_dir / "pgdata") is not None:
                    logger.warning("no process uses the embedded PostgreSQL any more; stopping it")
                    shutdown(data_dir / "pgdata")
                # Released under the control lock: a user arriving next finds no keeper and
                # starts a new one.
                os.close(fd)
                return
