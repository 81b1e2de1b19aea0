"""One server process of a run, started as a real child: pinned to CPUs with taskset, its
output in a temporary log (scanned for warnings afterwards), its CPU time and memory read
with psutil. Also the probes that tell when it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from . import ROOT

LOG_LEVEL = re.compile(r"\b(?:WARNING|ERROR|CRITICAL)\b:?\s.*")  # the hub's and uvicorn's
VARYING = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{12}|\d+(?:\.\d+)?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def file_safe(name: str) -> str:
    """A target's name as part of a file name (`hub@origin/main` has a slash)."""
    return re.sub(r"[^\w.@~+-]", "_", name)


def pinned(cpus: str | None, command: list[str]) -> list[str]:
    if cpus is None:
        return command
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux); use --no-pin")
    return ["taskset", "-c", cpus, *command]


class Process:
    """One child process listening on `port`, pinned to `cpus`, its output in a temporary log."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        cpus: str | None,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.port = port
        self.log_mark: int | None = None
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"bench-{file_safe(name)}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            pinned(cpus, command),
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)  # taskset execs: same pid

    async def wait_ready(self, probe: Callable[[int], bool], within_s: float = 60.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(probe, self.port):
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {within_s:.0f}s:\n{self.tail()}")

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for i, proc in enumerate(self.processes()):
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
                if i == 0:  # children that already exited and were waited for
                    total += t.children_user + t.children_system
        return total

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def peak_rss(self) -> int:
        """The kernel's high-water mark of the main process (VmHWM), when available."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def lines(self) -> list[str]:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace").splitlines()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines()[-lines:])

    def mark_log(self) -> None:
        """Remember how far the log is: what follows comes from the teardown."""
        self.log_mark = len(self.lines())

    def warnings(self) -> tuple[Counter[str], int]:
        """The log's warning and error lines up to the mark, numbers and ids blanked so that
        repeats of a message count together; and how many such lines follow the mark."""
        during: Counter[str] = Counter()
        after = 0
        for index, line in enumerate(self.lines()):
            found = LOG_LEVEL.search(line)
            if found is None:
                continue
            if self.log_mark is not None and index >= self.log_mark:
                after += 1
            else:
                during[VARYING.sub("#", found.group(0))[:160]] += 1
        return during, after


def http_ready(port: int) -> bool:
    return http_status(f"http://127.0.0.1:{port}/health") == 200


def redis_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith(b"+PONG")


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status)
