"""Operating the hub as an operator would, against real processes: first starts cut short,
signals during start and drain, hubs migrating one database at once, keepers and watchdogs of
the embedded server, health checks through a proxy. Each test was written from a defect found
by reviewing the hub as an outsider, and failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import ROOT
from tests.support.live import (
    TEST_SECRET,
    HubProcess,
    create_session,
    embedded_processes,
    free_port,
    staff_headers,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def hub_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(HUB_DATA_DIR=str(data_dir), HUB_AUTH_SECRET=TEST_SECRET, HUB_LOG_LEVEL="info")
    env.update(extra)
    return env


def start_hub(data_dir: Path, *args: str, output: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hub", *args],
        env=hub_env(data_dir),
        cwd=ROOT,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


async def run_hub(
    data_dir: Path, *args: str, timeout: float = 120, **extra_env: str
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        *args,
        env=hub_env(data_dir, **extra_env),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def child_appears(parent: subprocess.Popen[bytes], wanted: str) -> psutil.Process:
    """The first child process of `parent` whose command line holds `wanted`."""
    async with asyncio.timeout(60):
        while True:
            for child in psutil.Process(parent.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if wanted in " ".join(child.cmdline()):
                        return child
            assert parent.poll() is None, f"exited with {parent.returncode}"
            await asyncio.sleep(0.002)  # polling another process: nothing to await


async def no_embedded_processes(data_dir: Path, within_s: float = 20) -> None:
    async with asyncio.timeout(within_s):
        while embedded_processes(data_dir):  # noqa: ASYNC110 - other processes: nothing to await
            await asyncio.sleep(0.05)


@pytest.fixture
def data_dir(pg_data_dir: Path) -> Iterator[Path]:
    """A fresh data directory; whatever of its server a failing test leaves is killed."""
    yield pg_data_dir
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(pg_data_dir) in part for part in proc.info["cmdline"] or []):
                proc.kill()


async def test_hub_killed_during_initdb_does_not_spoil_the_next_start(
    data_dir: Path, tmp_path: Path
) -> None:
    """A hub SIGKILLed during its first start's initdb leaves that initdb running (the signal
    reaches only the hub). The next start's initdb must not share its folder with it: the
    orphan, failing, empties the folder and the new cluster with it. The orphan is held
    stopped until the new initdb runs, as on a machine busy enough for the two to overlap."""
    first = start_hub(data_dir, "serve", "--port", str(free_port()), output=subprocess.DEVNULL)
    try:
        orphan = await child_appears(first, "initdb")
        orphan.suspend()
    finally:
        first.kill()
        first.wait(10)
    hub = HubProcess(None, tmp_path / "hub.log", migrate=True, HUB_DATA_DIR=str(data_dir))
    starting = asyncio.create_task(hub.start(timeout=120))
    try:
        while hub.proc is None:  # noqa: ASYNC110 - set by start() before its first wait
            await asyncio.sleep(0)
        await child_appears(hub.proc, "initdb")
        with contextlib.suppress(psutil.NoSuchProcess):
            orphan.resume()
        await starting
        assert await hub.stop() == 0, hub.logs()
    finally:
        starting.cancel()
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()
    assert "initdb failed" not in hub.logs()


async def test_hubs_migrating_one_fresh_database_at_once_all_succeed(data_dir: Path) -> None:
    """Machines behind a balancer start together, or `hub db upgrade` runs beside `hub
    serve`: each runs the migrations. They must take turns, not fail on each other's
    CREATE TABLE with a traceback."""
    code, out = await run_hub(data_dir, "db", "current")  # the cluster exists: a quick race
    assert code == 0, out
    results = await asyncio.gather(*(run_hub(data_dir, "db", "upgrade") for _ in range(4)))
    for code, out in results:
        assert code == 0 and "Traceback" not in out, out
    code, out = await run_hub(data_dir, "db", "current")
    assert code == 0 and "(head)" in out, out


async def test_sigterm_while_the_embedded_server_starts_leaves_no_server_running(
    data_dir: Path,
) -> None:
    """SIGTERM (or Ctrl-C) just after `hub serve` spawned the embedded server: the hub exits
    with 0, and the server, which then has no user, must not run on for ever."""
    code, out = await run_hub(data_dir, "db", "current")  # the cluster exists
    assert code == 0, out
    await no_embedded_processes(data_dir)  # the keeper of that run is gone too
    hub = start_hub(data_dir, "serve", "--port", str(free_port()))
    try:
        await child_appears(hub, str(data_dir / "pgdata"))
        hub.send_signal(signal.SIGTERM)
        out = (await asyncio.to_thread(hub.communicate, timeout=60))[0].decode(errors="replace")
    finally:
        if hub.poll() is None:
            hub.kill()
    assert hub.returncode == 0, out
    started = time.monotonic()
    await no_embedded_processes(data_dir, within_s=20)
    assert time.monotonic() - started < 20


async def raw_status(port: int, request: bytes) -> bytes:
    """The status line the hub answers `request` with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


@pytest.mark.timeout(60)
async def test_host_check_answers_health_checks_without_host_and_fqdn_names(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    """HAProxy's `option httpchk` asks `OPTIONS / HTTP/1.0` (or the configured path) with no
    Host: no browser, so no DNS rebinding, but refusing it takes every hub out of the
    balancer. A name with its final dot (`localhost.`) is the same name."""
    hub = await start_hub(HUB_ALLOWED_HOSTS="hub.example.")
    port = hub.port
    assert (await raw_status(port, b"GET /health/ready HTTP/1.0\r\n\r\n")).startswith(
        b"HTTP/1.1 200"
    )
    for host, status in [
        ("hub.example", b"200"),
        ("hub.example.", b"200"),
        (f"HUB.EXAMPLE.:{port}", b"200"),
        (f"attacker.example.:{port}", b"400"),
        (f"hub.example.attacker.example:{port}", b"400"),
    ]:
        request = f"GET /health/live HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        answer = await raw_status(port, request.encode())
        assert answer.split()[1] == status, (host, answer)
    # HTTP/1.1 without Host stays refused (RFC 9112 requires it).
    no_host = b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n"
    assert (await raw_status(port, no_host)).startswith(b"HTTP/1.1 400")


@pytest.mark.xfail(
    strict=True,
    reason="the HTTP API's engine (hub/storage/engine.py) sets no connect or statement "
    "timeout, so a database that stops answering (a network partition, a stalled disk; here "
    "SIGSTOP) holds every request, erasure included, until it answers again. The fix is a "
    "timeout per statement, which needs a setting and a choice of value that does not cut "
    "short the erasure of a very long session",
)
async def test_erasure_while_the_database_hangs_answers_503_and_changes_nothing(
    data_dir: Path, tmp_path: Path
) -> None:
    hub = HubProcess(None, tmp_path / "hub.log", migrate=True, HUB_DATA_DIR=str(data_dir))
    try:
        await hub.start(timeout=90)
        session_id = await create_session(hub.http)
        postmaster = psutil.Process(
            int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        )
        frozen = [postmaster, *postmaster.children(recursive=True)]
        for proc in frozen:
            proc.suspend()
        try:
            async with httpx.AsyncClient() as http:
                try:
                    answer = await http.delete(
                        f"{hub.http}/sessions/{session_id}", headers=staff_headers(), timeout=20
                    )
                    status = answer.status_code
                except httpx.ReadTimeout:
                    status = None
        finally:
            for proc in frozen:
                with contextlib.suppress(psutil.Error):
                    proc.resume()
        assert status == 503
        async with httpx.AsyncClient() as http:
            kept = await http.get(f"{hub.http}/sessions/{session_id}", headers=staff_headers())
        assert kept.status_code == 200
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()


def keepers(data_dir: Path) -> list[psutil.Process]:
    return [
        p
        for p in embedded_processes(data_dir)
        if (p.cmdline() or [])[-2:] == ["keep", str(data_dir)]
    ]


async def test_a_killed_keeper_is_replaced_while_the_hub_runs(
    data_dir: Path, tmp_path: Path
) -> None:
    """The keeper stops the server of a SIGKILLed last user. If the keeper itself was killed
    (the OOM killer, a careless kill), a running hub starts a new one; otherwise a hub killed
    after it leaves the server running for ever."""
    hub = HubProcess(None, tmp_path / "hub.log", migrate=True, HUB_DATA_DIR=str(data_dir))
    try:
        await hub.start(timeout=90)
        (first,) = keepers(data_dir)
        first.kill()
        async with asyncio.timeout(20):
            while [k.pid for k in keepers(data_dir)] in ([], [first.pid]):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling other processes: nothing to await
        hub.kill()
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()
    await no_embedded_processes(data_dir, within_s=20)


async def test_ctrl_c_twice_still_drains_quietly_and_exits_0(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    """An impatient operator presses Ctrl-C again while the hub waits for a connection to
    finish. uvicorn took that second SIGINT for "force quit": the application's shutdown was
    skipped and the lifespan, cancelled at exit, logged a traceback."""
    hub = await start_hub(HUB_HTTP_BODY_TIMEOUT_S="3")
    assert hub.proc is not None
    # A request whose body is still coming keeps the hub waiting for its connection.
    _reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    auth = staff_headers()["Authorization"]
    writer.write(
        f"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    try:
        hub.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            while "Waiting for connections to close" not in hub.logs():  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # another process's log: nothing to await
        hub.proc.send_signal(signal.SIGINT)
        assert await hub.stop(timeout=60) == 0, hub.logs()
    finally:
        writer.close()
    assert "Traceback" not in hub.logs(), hub.logs()
    assert "Application shutdown complete" in hub.logs(), hub.logs()


def test_token_create_before_the_first_start_shows_the_first_admin_token(tmp_path: Path) -> None:
    """An operator who makes a therapist token before ever starting the hub generates the
    signing secret; `hub serve` then finds it and shows no admin token, and that token was
    shown nowhere. It is shown where the secret was made."""
    from hub.auth import SECRET_FILE, TokenService

    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_AUTH_")}
    env["HUB_DATA_DIR"] = str(data_dir)

    def create() -> subprocess.CompletedProcess[str]:
        args = ["token", "create", "--role", "therapist", "--name", "Dr Who"]
        return subprocess.run(
            [sys.executable, "-m", "hub", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = create()
    assert first.returncode == 0, first.stderr
    secret = TokenService((data_dir / SECRET_FILE).read_bytes())
    assert secret.verify(first.stdout.strip()).role == "therapist"  # stdout: the token alone
    shown = [w.removeprefix("TOKEN=") for w in first.stderr.split() if w.startswith("TOKEN=")]
    assert len(shown) == 1, first.stderr
    assert secret.verify(shown[0]).role == "admin"
    again = create()
    assert again.returncode == 0 and "TOKEN=" not in again.stderr, again.stderr


async def test_hub_with_a_backplane_is_refused_beside_one_without(
    data_dir: Path, tmp_path: Path
) -> None:
    """The troubleshooting advice is to run *both* hubs with HUB_BACKPLANE=postgres. A second
    hub started with it beside a first one still without it was accepted: the first takes
    every live session for its own and hears nothing on the backplane, so watchers on one
    silently miss the other's mirrors."""
    alone = HubProcess(None, tmp_path / "alone.log", migrate=True, HUB_DATA_DIR=str(data_dir))
    try:
        await alone.start(timeout=90)
        code, out = await run_hub(
            data_dir, "serve", "--port", str(free_port()), timeout=30, HUB_BACKPLANE="postgres"
        )
        assert code == 2, out
        assert f"already served by the hub with pid {alone.proc.pid}" in out, out  # type: ignore[union-attr]
        assert await alone.stop() == 0
    finally:
        if alone.proc is not None and alone.proc.poll() is None:
            alone.kill()
    # Hubs that all have a backplane share the data directory.
    first = HubProcess(
        None,
        tmp_path / "b1.log",
        migrate=True,
        HUB_DATA_DIR=str(data_dir),
        HUB_BACKPLANE="postgres",
    )
    second = HubProcess(
        None,
        tmp_path / "b2.log",
        migrate=True,
        HUB_DATA_DIR=str(data_dir),
        HUB_BACKPLANE="postgres",
    )
    try:
        await first.start(timeout=90)
        await second.start(timeout=90)
        code, out = await run_hub(data_dir, "serve", "--port", str(free_port()), timeout=30)
        assert code == 2 and "already served by the hub with pid" in out, out
    finally:
        for hub in (first, second):
            if hub.proc is not None and hub.proc.poll() is None:
                hub.kill()


async def test_watchdog_restarts_a_server_that_another_process_has_not_reaped(
    data_dir: Path, tmp_path: Path
) -> None:
    """The server was started by another process on the data directory (`hub db …`, another
    hub with a backplane) and killed: until that process reaps it, it is a zombie whose pid
    the socket's lock file still names, and postgres refused to start again ("lock file
    .s.PGSQL.5432.lock already exists"); the hub's watchdog failed every 5 s meanwhile."""
    from hub.storage.embedded import start_embedded

    embedded = start_embedded(data_dir)  # this test process starts it, and never reaps it
    hub = HubProcess(None, tmp_path / "hub.log", migrate=True, HUB_DATA_DIR=str(data_dir))
    try:
        await hub.start(timeout=90)
        killed = embedded.pid
        os.kill(killed, signal.SIGKILL)
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(20):
                while True:
                    pidfile = data_dir / "pgdata" / "postmaster.pid"
                    with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                        if int(pidfile.read_text().split()[0]) != killed:
                            if (await http.get(f"{hub.http}/health")).status_code == 200:
                                break
                    await asyncio.sleep(0.1)  # another process's state: nothing to await
        assert "did not start again" not in hub.logs(), hub.logs()
        assert await hub.stop() == 0
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()
        embedded.stop()
