"""Who uses the data directory's server, told by locks on its files: each user holds a shared
lock on the users file; the control lock is held around every start and stop decision; a
`hub serve` claims the data directory for itself (or shares it, with a backplane)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from hub.storage.embedded.errors import DataDirInUse, EmbeddedError
from hub.storage.embedded.files import CONTROL_FILE, SERVE_FILE, USERS_FILE, open_lock_file


@contextlib.contextmanager
def control_lock(data_dir: Path) -> Iterator[None]:
    """Held around every start and every stop decision, so that a user arriving while the
    last one leaves either keeps the server or finds it stopped, never half of each."""
    fd = open_lock_file(data_dir / CONTROL_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def no_users(data_dir: Path) -> bool:
    """True when no process holds a share of the server (call under the control lock)."""
    fd = open_lock_file(data_dir / USERS_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim_for_serving(data_dir: Path, port: int, *, alone: bool = True) -> Iterator[None]:
    """Hold `data_dir` for this `hub serve` (pid, port), or raise DataDirInUse naming the one
    that holds it. A hub without a backplane (`alone`) takes every live session of its
    database for its own, so it must run with no other hub on that database, with or without
    a backplane; hubs with a backplane share it among themselves."""
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = open_lock_file(data_dir / SERVE_FILE)
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
