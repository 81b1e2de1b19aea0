"""Processes this one starts or stops: the postmasters and keepers it started (reaped when they
exit), and signals that tolerate a process already gone."""

from __future__ import annotations

import contextlib
import subprocess
import time

import psutil

SIGNAL_WAIT_S = 10.0

# Postmasters and keepers started by this process, to be reaped when they exit: an unreaped
# one is a zombie whose pid still looks taken.
_children: list[subprocess.Popen[bytes]] = []


def adopt(proc: subprocess.Popen[bytes]) -> None:
    """Reap `proc` once it has exited (in reap_children)."""
    _children.append(proc)


def alive(proc: psutil.Process) -> bool:
    """True for a running process; a zombie has exited and only waits for its parent to reap it."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def reap_children() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def send_signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):  # already gone
        proc.send_signal(sig)


def wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    # Not psutil.wait_procs: it counts zombies as running and would sit out the whole timeout
    # when nobody reaps the postmaster (e.g. a container without an init process).
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        reap_children()
        time.sleep(0.05)
